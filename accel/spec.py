"""The capture model: one immutable, validated CaptureSpec per pod.

Every istio-iptables option that changes what gets captured lives here, with the
semantics istio-iptables gives it (see ../shared/research/istio-capture.md). The
three ways in (istio-iptables argv/env, Istio's config JSON, pod annotations) are
in accel.inputs and all end in this class; the renderers read only this class.

The inputs' parsers (accel.inputs.parsers) only turn text into values (a port number, a CIDR, an
address); every rule on the values (ranges, names, families, how options combine) is checked
once, by CaptureSpec, whichever way the spec came in. An input names CaptureSpec's errors as its
user wrote the field (SpecError.relabel).

Values are typed (ports are ints, CIDRs are ipaddress interfaces) but keep the
order and the exact text the user gave where Istio's output depends on it: a
non-canonical CIDR such as 10.96.0.1/24 is rendered as written, as Istio does.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from . import constants as c

WILDCARD: Final = "*"
Wildcard = Literal["*"]
Cidr = ipaddress.IPv4Interface | ipaddress.IPv6Interface

REDIRECT = "REDIRECT"
TPROXY = "TPROXY"

# istio-iptables limits the include list because it becomes one rule with N matches.
MAX_OWNER_GROUPS_INCLUDE = 64
MAX_ID = 2**32 - 2  # (uid_t)-1 is "no id"
MAX_U32 = 2**32 - 1
IFNAMSIZ = 16
# The options where '*' means all; istio-iptables refuses -x '*', and the others would put '*' in a rule.
_TAKE_WILDCARD = ("inbound_ports_include", "outbound_ip_ranges_include", "owner_groups_include")


class SpecError(ValueError):
    """Bad input. Names the field as the user wrote it (flag, Go field or annotation)."""

    def __init__(self, field: str, value: object, reason: str, related: tuple[str, ...] = ()):
        self.field = field
        self.value = value
        self.reason = reason
        self.related = related  # the other fields the reason names, by the same kind of name as field
        super().__init__(f"{field}: {reason} (got {value!r})")

    def relabel(self, labels: Mapping[str, str]) -> SpecError:
        """The same error with its fields named by labels (CaptureSpec raises attribute names)."""
        reason = self.reason
        for name in self.related:
            reason = reason.replace(name, labels.get(name, name))
        return SpecError(
            labels.get(self.field, self.field),
            self.value,
            reason,
            tuple(labels.get(name, name) for name in self.related),
        )


# ---------------------------------------------------------------------------
# Formatting shared by the renderers and the JSON form.


def address_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as Go's netip.Addr.String() prints it: RFC 5952, IPv4-mapped IPv6 dotted."""
    if address.version == 6 and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def cidr_text(cidr: Cidr) -> str:
    """addr/bits as Go's netip.Prefix.String() prints it (host bits kept, as Istio emits)."""
    return f"{address_text(cidr.ip)}/{cidr.network.prefixlen}"


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
    dns_servers_v4: tuple[str, ...] = ()  # nameservers as istio-iptables writes them in its rules
    dns_servers_v6: tuple[str, ...] = ()
    drop_invalid: bool = False  # --drop-invalid
    enable_ipv6: bool = False  # detected by istio-iptables from the pod's addresses
    host_ipv4_loopback_cidr: ipaddress.IPv4Interface = ipaddress.IPv4Interface(c.HOST_IPV4_LOOPBACK_CIDR)

    def __post_init__(self):
        self._validate()

    # -- validation: the one place every rule on the values is checked, whatever the input.
    def _validate(self):
        for name in ("proxy_port", "inbound_capture_port", "inbound_tunnel_port"):
            check_port(name, getattr(self, name))
        for name in (
            "inbound_ports_include",
            "inbound_ports_exclude",
            "outbound_ports_include",
            "outbound_ports_exclude",
        ):
            ports = getattr(self, name)
            if not (ports == WILDCARD and name in _TAKE_WILDCARD):
                _check_tuple(name, ports, int)
                for port in ports:
                    check_port(name, port)
        for name, what in (("proxy_uids", "uid"), ("proxy_gids", "gid")):
            ids = getattr(self, name)
            _check_tuple(name, ids, int)
            if not ids:
                raise SpecError(name, "", f"at least one {what} is required")
            for number in ids:
                _check_int(name, number, 0, MAX_ID, what)
        if self.inbound_interception_mode not in (REDIRECT, TPROXY):
            raise SpecError(
                "inbound_interception_mode",
                self.inbound_interception_mode,
                "unknown interception mode (expected REDIRECT or TPROXY)",
            )
        _check_int("inbound_tproxy_mark", self.inbound_tproxy_mark, 1, MAX_U32, "packet mark")
        _check_int("inbound_tproxy_route_table", self.inbound_tproxy_route_table, 1, MAX_U32, "route table")
        for name in ("outbound_ip_ranges_include", "outbound_ip_ranges_exclude"):
            cidrs = getattr(self, name)
            if not (cidrs == WILDCARD and name in _TAKE_WILDCARD):
                _check_tuple(name, cidrs, (ipaddress.IPv4Interface, ipaddress.IPv6Interface))
        for name in ("owner_groups_include", "owner_groups_exclude"):
            groups = getattr(self, name)
            if not (groups == WILDCARD and name in _TAKE_WILDCARD):
                _check_tuple(name, groups, str)
                for group in groups:
                    _check_group(name, group)
        if self.owner_groups_include != WILDCARD and len(self.owner_groups_include) > MAX_OWNER_GROUPS_INCLUDE:
            raise SpecError(
                "owner_groups_include",
                join(self.owner_groups_include),
                f"at most {MAX_OWNER_GROUPS_INCLUDE} groups may be included (one rule matches them all)",
            )
        for name in ("kube_virt_interfaces", "exclude_interfaces"):
            _check_tuple(name, getattr(self, name), str)
            for interface in getattr(self, name):
                _check_interface(name, interface)
        for version in (4, 6):
            name = f"dns_servers_v{version}"
            _check_tuple(name, getattr(self, name), str)
            for server in getattr(self, name):
                _check_dns_server(name, server, version)
        for name in ("redirect_dns", "capture_all_dns", "drop_invalid", "enable_ipv6"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(name, getattr(self, name), "expected true or false")
        loopback = self.host_ipv4_loopback_cidr
        if (
            not isinstance(loopback, ipaddress.IPv4Interface)
            or not loopback.ip.is_loopback
            or not 8 <= loopback.network.prefixlen <= 32
        ):
            raise SpecError(
                "host_ipv4_loopback_cidr",
                str(loopback),
                "must be an IPv4 loopback CIDR (within 127.0.0.0/8) with a prefix length of 8 to 32",
            )
        self._validate_ports_together()

    def _validate_ports_together(self):
        # The proxy's own connections to the pod are sent to -z (the hairpin rule); were that the
        # outbound listener, every inbound connection it forwards would come back to it.
        if self.proxy_port == self.inbound_capture_port:
            raise SpecError(
                "inbound_capture_port",
                str(self.inbound_capture_port),
                "the same port as proxy_port: inbound connections would reach the outbound listener, "
                "whose forwarding to the pod is captured to this port again (a loop)",
                ("proxy_port",),
            )
        # A port has one listener: under DNS capture istio-agent's DNS proxy holds 15053 (TCP too).
        if self.dns_capture:
            for name in ("proxy_port", "inbound_capture_port"):
                if getattr(self, name) == c.DNS_PROXY_PORT:
                    raise SpecError(
                        name,
                        str(c.DNS_PROXY_PORT),
                        "the DNS proxy's port (redirect_dns sends DNS there): the connections "
                        "captured to it would reach the DNS proxy",
                        ("redirect_dns",),
                    )

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
        return self.redirect_dns and (self.capture_all_dns or bool(self.dns_servers_v4) or bool(self.dns_servers_v6))

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
            c.ip.is_loopback for c in self.outbound_ip_ranges_include
        )

    def warnings(self) -> list[str]:
        """Options istio-iptables silently accepts though they do nothing, or stop all capture."""
        notes = []
        if self.redirect_dns and not self.dns_capture:
            notes.append(
                "--redirect-dns without --capture-all-dns and without a DNS server: "
                "DNS capture is off (as in istio-iptables)"
            )
        if self.dns_capture and not self.capture_all_dns and self.dns_servers_v6 and not self.enable_ipv6:
            notes.append("IPv6 nameservers are not captured: the pod has no IPv6 (as in istio-iptables)")
        if self.capture_all_dns and not self.redirect_dns:
            notes.append("--capture-all-dns has no effect without --redirect-dns")
        if self.inbound_ports_exclude and self.inbound_ports_include != WILDCARD:
            notes.append("-d/--istio-local-exclude-ports is only used with -b '*'; ignored")
        if self.owner_groups_include == ():
            notes.append(
                "ISTIO_OUTBOUND_OWNER_GROUPS names no group: no outbound traffic is captured (as in istio-iptables)"
            )
        if self.owner_groups_exclude and self.owner_groups_include != WILDCARD:
            notes.append(
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE is only used when ISTIO_OUTBOUND_OWNER_GROUPS is '*'; ignored"
            )
        return notes

    def replace(self, **changes) -> CaptureSpec:
        return dataclasses.replace(self, **changes)


def is_decimal(text: str) -> bool:
    """ASCII digits only, as Go's strconv wants (str.isdigit() also takes '¹' and '٣')."""
    return text.isascii() and text.isdigit()


def check_port(name: str, port: object):
    """The port check, for CaptureSpec's ports and an input's other ones."""
    _check_int(name, port, 1, 65535, "port")


def _check_int(name, value, low, high, what):
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SpecError(name, str(value), f"{what} out of range {low}-{high}")


def _check_tuple(name, values, kind):
    if not isinstance(values, tuple) or not all(isinstance(v, kind) for v in values):
        raise SpecError(name, values, "has the wrong type")


_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")


def _check_group(name, group):
    if is_decimal(group):
        _check_int(name, int(group), 0, MAX_ID, "gid")
    elif not _GROUP_NAME.match(group):
        raise SpecError(name, group, "not a group name or numeric gid")


_BAD_IFNAME = re.compile(r"[/:\s]")


def _check_interface(name, interface):
    # The kernel's dev_valid_name(): 1-15 bytes, not "." or "..", no '/', ':' or whitespace.
    if (
        not interface
        or len(interface.encode()) >= IFNAMSIZ
        or interface in (".", "..")
        or _BAD_IFNAME.search(interface)
    ):
        raise SpecError(name, interface, "not a valid interface name (1-15 characters, no '/', ':' or spaces)")
    if "*" in interface:
        # iptables reads '*' literally, nftables as a wildcard: no rendering could mean one thing
        raise SpecError(
            name,
            interface,
            "'*' in an interface name: iptables reads it as itself, nftables as a "
            "wildcard; for every name with a prefix, end the prefix with '+'",
        )


def _check_dns_server(name, server, version):
    try:
        address = ipaddress.ip_address(server)
    except ValueError:
        raise SpecError(name, server, "not an IP address") from None
    if address.version != version:
        raise SpecError(name, server, f"not an IPv{version} address")
    if version == 6 and address.scope_id:
        # istio-iptables writes it into its rules as it is, and ip6tables-restore refuses them.
        raise SpecError(
            name,
            server,
            "a nameserver with a zone (%...) cannot be matched by iptables, nftables "
            "or eBPF rules; give it without the zone (--dns-servers)",
        )
