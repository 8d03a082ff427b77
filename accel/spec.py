"""The capture model: one immutable, validated CaptureSpec per pod.

Every istio-iptables option that changes what gets captured lives here, with the
semantics istio-iptables gives it (see ../shared/research/istio-capture.md). The
three ways in (istio-iptables argv/env, Istio's config JSON, pod annotations) are
in accel.inputs and all end in this class; the renderers read only this class.

Values are typed (ports are ints, CIDRs are ipaddress interfaces) but keep the
order and the exact text the user gave where Istio's output depends on it: a
non-canonical CIDR such as 10.96.0.1/24 is rendered as written, as Istio does.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Literal, Union

from . import constants as c

WILDCARD = "*"
Wildcard = Literal["*"]
Cidr = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]

REDIRECT = "REDIRECT"
TPROXY = "TPROXY"

# istio-iptables limits the include list because it becomes one rule with N matches.
MAX_OWNER_GROUPS_INCLUDE = 64
MAX_ID = 2**32 - 2  # (uid_t)-1 is "no id"
IFNAMSIZ = 16


class SpecError(ValueError):
    """Bad input. Names the field as the user wrote it (flag, Go field or annotation)."""

    def __init__(self, field: str, value: object, reason: str):
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {reason} (got {value!r})")


# ---------------------------------------------------------------------------
# Value parsers. Each takes the label of the field it parses, for the error.


def split_list(text: str) -> list[str]:
    """Istio's config.Split: comma separated, empty items dropped ("80,81," is fine)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_port(text: str | int, field: str) -> int:
    value = str(text).strip()
    if not value.isdigit():
        raise SpecError(field, text, "not a port number")
    port = int(value)
    if not 1 <= port <= 65535:
        raise SpecError(field, text, "port out of range 1-65535")
    return port


def _list(text: str, field: str, parse_item, wildcard: bool, what: str):
    """A comma list of items, or '*' where the option allows it."""
    if text.strip() == WILDCARD:
        if not wildcard:
            raise SpecError(field, text, f"'*' is not allowed here; give a list of {what}")
        return WILDCARD
    return tuple(parse_item(item, field) for item in split_list(text))


def parse_ports(text: str, field: str, *, wildcard: bool = False) -> tuple[int, ...] | Wildcard:
    return _list(text, field, parse_port, wildcard, "ports")


def parse_id(text: str | int, field: str, what: str) -> int:
    value = str(text).strip()
    if not value.isdigit():
        raise SpecError(field, text, f"not a numeric {what}")
    number = int(value)
    if number > MAX_ID:
        raise SpecError(field, text, f"{what} out of range 0-{MAX_ID}")
    return number


def parse_ids(text: str, field: str, what: str) -> tuple[int, ...]:
    ids = tuple(parse_id(item, field, what) for item in split_list(text))
    if not ids:
        raise SpecError(field, text, f"at least one {what} is required")
    return ids


def parse_cidr(text: str, field: str) -> Cidr:
    value = text.strip()
    address_text, slash, bits = value.partition("/")
    # Go's netip.ParsePrefix, which Istio uses, wants addr/bits with decimal bits and no zone.
    if not slash or not bits.isdigit() or "%" in address_text:
        raise SpecError(field, text, "not a CIDR (expected address/prefix-length, e.g. 10.0.0.0/8)")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise SpecError(field, text, "not a CIDR: the address part is not an IP address") from None
    if int(bits) > address.max_prefixlen:
        raise SpecError(field, text, f"prefix length {int(bits)} is longer than {address.max_prefixlen}")
    return ipaddress.ip_interface(f"{address}/{int(bits)}")


def parse_cidrs(text: str, field: str, *, wildcard: bool = False) -> tuple[Cidr, ...] | Wildcard:
    return _list(text, field, parse_cidr, wildcard, "CIDRs")


def parse_address(text: str, field: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise SpecError(field, text, "not an IP address") from None


def parse_dns_server(text: str, field: str) -> str:
    """A nameserver address, kept as written: Istio puts resolv.conf's text into its rules."""
    parse_address(text, field)
    return text.strip()


_BAD_IFNAME = re.compile(r"[/:\s]")


def parse_interface(text: str, field: str) -> str:
    # The kernel's dev_valid_name(): 1-15 bytes, not "." or "..", no '/', ':' or whitespace.
    name = text.strip()
    if not name or len(name.encode()) >= IFNAMSIZ or name in (".", "..") or _BAD_IFNAME.search(name):
        raise SpecError(field, text, "not a valid interface name (1-15 characters, no '/', ':' or spaces)")
    return name


def parse_interfaces(text: str, field: str) -> tuple[str, ...]:
    return tuple(parse_interface(item, field) for item in split_list(text))


_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")


def parse_group(text: str, field: str) -> str:
    """A group name or numeric GID; iptables and nft resolve names when the rules load."""
    group = text.strip()
    if group.isdigit():
        parse_id(group, field, "gid")
        return str(int(group))
    if not _GROUP_NAME.match(group):
        raise SpecError(field, text, "not a group name or numeric gid")
    return group


def parse_groups(text: str, field: str, *, wildcard: bool = False) -> tuple[str, ...] | Wildcard:
    return _list(text, field, parse_group, wildcard, "groups")


def parse_mode(text: str, field: str) -> str:
    # istio-iptables silently treats anything but exactly TPROXY as REDIRECT; a typo such as
    # "tproxy" would then capture differently from what was asked, so accel refuses it.
    value = text.strip()
    if value in ("", REDIRECT):
        return REDIRECT
    if value == TPROXY:
        return TPROXY
    raise SpecError(field, text, "unknown interception mode (expected REDIRECT or TPROXY)")


def parse_uint32(text: str | int, field: str, what: str, minimum: int = 0) -> int:
    value = str(text).strip()
    if not value.isdigit() or not minimum <= int(value) <= 2**32 - 1:
        raise SpecError(field, text, f"not a {what} ({minimum}-{2**32 - 1})")
    return int(value)


_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def parse_bool(text: str | bool, field: str) -> bool:
    """Go's strconv.ParseBool, which Istio's flags and env variables use."""
    if isinstance(text, bool):
        return text
    value = str(text).strip()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SpecError(field, text, "not a boolean (true/false/1/0)")


def parse_loopback_cidr(text: str, field: str) -> ipaddress.IPv4Interface:
    cidr = parse_cidr(text, field)
    if cidr.version != 4 or not cidr.ip.is_loopback:
        raise SpecError(field, text, "must be an IPv4 loopback CIDR (127.0.0.0/8)")
    if not 8 <= cidr.network.prefixlen <= 32:
        raise SpecError(field, text, "prefix length must be between 8 and 32")
    return cidr


# ---------------------------------------------------------------------------
# Formatting shared by the renderers and the JSON form.


def cidr_text(cidr: Cidr) -> str:
    """addr/bits as Go's netip.Prefix.String() prints it (host bits kept, as Istio emits)."""
    address = cidr.ip
    if address.version == 6 and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}/{cidr.network.prefixlen}"
    return f"{address}/{cidr.network.prefixlen}"


def join(values) -> str:
    return ",".join(str(value) for value in values)


# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureSpec:
    """Everything that decides what istio-iptables captures, for one pod.

    Defaults are istio-iptables' command-line defaults: no inbound capture, no
    outbound CIDR capture (only the owner and loopback rules), proxy uid/gid 1337.
    """

    proxy_port: int = c.PROXY_PORT  # -p: outbound TCP is redirected here
    inbound_capture_port: int = c.INBOUND_CAPTURE_PORT  # -z: inbound TCP (and the proxy's own hairpin) goes here
    inbound_tunnel_port: int = c.INBOUND_TUNNEL_PORT  # -e: HBONE tunnel port, never captured inbound
    proxy_uids: tuple[int, ...] = (c.PROXY_UID,)  # -u: traffic of these uids is never captured outbound
    proxy_gids: tuple[int, ...] = (c.PROXY_GID,)  # -g: same for these gids
    inbound_interception_mode: str = REDIRECT  # -m: REDIRECT (nat) or TPROXY (mangle)
    inbound_tproxy_mark: int = c.TPROXY_MARK  # -t
    inbound_tproxy_route_table: int = c.TPROXY_ROUTE_TABLE  # -r
    inbound_ports_include: tuple[int, ...] | Wildcard = ()  # -b: () = no inbound capture
    inbound_ports_exclude: tuple[int, ...] = ()  # -d: only used with -b '*'
    outbound_ports_include: tuple[int, ...] = ()  # -q: captured whatever the destination
    outbound_ports_exclude: tuple[int, ...] = ()  # -o: never captured (TCP and UDP)
    outbound_ip_ranges_include: tuple[Cidr, ...] | Wildcard = ()  # -i: () = none, '*' = all
    outbound_ip_ranges_exclude: tuple[Cidr, ...] = ()  # -x
    owner_groups_include: tuple[str, ...] | Wildcard = WILDCARD  # ISTIO_OUTBOUND_OWNER_GROUPS
    owner_groups_exclude: tuple[str, ...] = ()  # ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE
    kube_virt_interfaces: tuple[str, ...] = ()  # -k
    exclude_interfaces: tuple[str, ...] = ()  # -c
    redirect_dns: bool = False  # --redirect-dns
    capture_all_dns: bool = False  # --capture-all-dns
    dns_servers_v4: tuple[str, ...] = ()  # resolv.conf nameservers, as written there
    dns_servers_v6: tuple[str, ...] = ()
    drop_invalid: bool = False  # --drop-invalid
    enable_ipv6: bool = False  # detected by istio-iptables from the pod's addresses
    host_ipv4_loopback_cidr: ipaddress.IPv4Interface = ipaddress.IPv4Interface(c.HOST_IPV4_LOOPBACK_CIDR)

    def __post_init__(self):
        self._validate()

    # -- validation: the parsers already checked user text; this guards direct construction.
    def _validate(self):
        for name in ("proxy_port", "inbound_capture_port", "inbound_tunnel_port"):
            _check_port(name, getattr(self, name))
        for name in ("inbound_ports_exclude", "outbound_ports_include", "outbound_ports_exclude"):
            _check_ports(name, getattr(self, name))
        if self.inbound_ports_include != WILDCARD:
            _check_ports("inbound_ports_include", self.inbound_ports_include)
        for name in ("proxy_uids", "proxy_gids"):
            ids = getattr(self, name)
            if not isinstance(ids, tuple) or not ids:
                raise SpecError(name, ids, "needs at least one id")
            for number in ids:
                if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= MAX_ID:
                    raise SpecError(name, ids, f"ids must be integers 0-{MAX_ID}")
        if self.inbound_interception_mode not in (REDIRECT, TPROXY):
            raise SpecError("inbound_interception_mode", self.inbound_interception_mode,
                            "expected REDIRECT or TPROXY")
        for name in ("inbound_tproxy_mark", "inbound_tproxy_route_table"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 2**32 - 1:
                raise SpecError(name, value, "expected an integer 1-4294967295")
        if self.outbound_ip_ranges_include != WILDCARD:
            _check_cidrs("outbound_ip_ranges_include", self.outbound_ip_ranges_include)
        _check_cidrs("outbound_ip_ranges_exclude", self.outbound_ip_ranges_exclude)
        if self.owner_groups_include != WILDCARD:
            _check_tuple("owner_groups_include", self.owner_groups_include, str)
            if len(self.owner_groups_include) > MAX_OWNER_GROUPS_INCLUDE:
                raise SpecError("owner_groups_include", join(self.owner_groups_include),
                                f"at most {MAX_OWNER_GROUPS_INCLUDE} groups")
        _check_tuple("owner_groups_exclude", self.owner_groups_exclude, str)
        _check_tuple("kube_virt_interfaces", self.kube_virt_interfaces, str)
        _check_tuple("exclude_interfaces", self.exclude_interfaces, str)
        for version in (4, 6):
            name = f"dns_servers_v{version}"
            servers = getattr(self, name)
            _check_tuple(name, servers, str)
            for server in servers:
                if parse_address(server, name).version != version:
                    raise SpecError(name, server, f"not an IPv{version} address")
        for name in ("redirect_dns", "capture_all_dns", "drop_invalid", "enable_ipv6"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(name, getattr(self, name), "expected true or false")
        loopback = self.host_ipv4_loopback_cidr
        if not isinstance(loopback, ipaddress.IPv4Interface) or not loopback.ip.is_loopback \
                or not 8 <= loopback.network.prefixlen <= 32:
            raise SpecError("host_ipv4_loopback_cidr", loopback, "must be an IPv4 loopback CIDR, /8 to /32")

    # -- derived facts the renderers share -------------------------------------------------

    @property
    def tproxy(self) -> bool:
        return self.inbound_interception_mode == TPROXY

    @property
    def captures_inbound(self) -> bool:
        return self.inbound_ports_include != ()

    @property
    def dns_capture(self) -> bool:
        """DNS capture as istio-iptables applies it: --redirect-dns with capture-all or a server.

        With --redirect-dns, no --capture-all-dns and no nameserver, istio-iptables turns DNS
        capture off (with a warning) rather than capturing nothing.
        """
        return self.redirect_dns and (
            self.capture_all_dns or bool(self.dns_servers_v4) or bool(self.dns_servers_v6))

    def outbound_include(self, version: int) -> tuple[Cidr, ...] | Wildcard:
        """The -i CIDRs of one IP version ('*' applies to both)."""
        if self.outbound_ip_ranges_include == WILDCARD:
            return WILDCARD
        return tuple(c for c in self.outbound_ip_ranges_include if c.version == version)

    def outbound_exclude(self, version: int) -> tuple[Cidr, ...]:
        return tuple(c for c in self.outbound_ip_ranges_exclude if c.version == version)

    @property
    def include_has_loopback(self) -> bool:
        """A loopback CIDR in -i turns off the 'app to itself over lo is not captured' rules."""
        return self.outbound_ip_ranges_include != WILDCARD and any(
            c.ip.is_loopback for c in self.outbound_ip_ranges_include)

    def warnings(self) -> list[str]:
        """Options that are accepted but have no effect, as istio-iptables would silently do."""
        notes = []
        if self.redirect_dns and not self.dns_capture:
            notes.append("--redirect-dns without --capture-all-dns and without a DNS server: "
                         "DNS capture is off (as in istio-iptables)")
        if self.dns_capture and not self.capture_all_dns and self.dns_servers_v6 and not self.enable_ipv6:
            notes.append("IPv6 nameservers are not captured: the pod has no IPv6 (as in istio-iptables)")
        if self.capture_all_dns and not self.redirect_dns:
            notes.append("--capture-all-dns has no effect without --redirect-dns")
        if self.inbound_ports_exclude and self.inbound_ports_include != WILDCARD:
            notes.append("-d/--istio-local-exclude-ports is only used with -b '*'; ignored")
        if self.owner_groups_exclude and self.owner_groups_include != WILDCARD:
            notes.append("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE is only used when "
                         "ISTIO_OUTBOUND_OWNER_GROUPS is '*'; ignored")
        return notes

    def replace(self, **changes) -> CaptureSpec:
        return dataclasses.replace(self, **changes)


def _check_port(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise SpecError(name, value, "port out of range 1-65535")


def _check_ports(name, values):
    if not isinstance(values, tuple):
        raise SpecError(name, values, "expected a tuple of ports")
    for value in values:
        _check_port(name, value)


def _check_cidrs(name, values):
    _check_tuple(name, values, (ipaddress.IPv4Interface, ipaddress.IPv6Interface))


def _check_tuple(name, values, kind):
    if not isinstance(values, tuple) or not all(isinstance(v, kind) for v in values):
        raise SpecError(name, values, "has the wrong type")
