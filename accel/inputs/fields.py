"""The field table, FIELDS: every istio-iptables option, and the one way an option's text becomes part
of a CaptureSpec (given_from_texts, build_spec), with the warnings about its list items."""

from __future__ import annotations

import ipaddress
import pwd
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from .. import constants as c
from .. import spec as s
from ..spec import CaptureSpec, SpecError
from .parsers import (
    parse_address,
    parse_bool,
    parse_cidr,
    parse_cidrs,
    parse_groups,
    parse_ids,
    parse_interfaces,
    parse_mode,
    parse_port,
    parse_ports,
    parse_uint32,
)


@dataclass(frozen=True)
class Field:
    go: str  # Go field of Istio's config.Config: the key in --istio-config files
    attr: str | None  # CaptureSpec attribute; None = accepted but changes nothing captured
    flags: tuple[str, ...]  # istio-iptables flags, long form first
    env: tuple[str, ...]  # environment variables; a later one wins over an earlier one
    default: str  # istio-iptables' command-line default, as text
    parse: Callable[[str, str], object]
    help: str
    boolean: bool = False


# The parsers of the option texts, each called as parse(text, field label).
_ports = parse_ports
_ports_or_all = partial(parse_ports, wildcard=True)
_uids = partial(parse_ids, what="uid")
_gids = partial(parse_ids, what="gid")
_cidrs = parse_cidrs
_cidrs_or_all = partial(parse_cidrs, wildcard=True)
_mark = partial(parse_uint32, what="packet mark")
_table = partial(parse_uint32, what="route table")
_groups = parse_groups
_groups_or_all = partial(parse_groups, wildcard=True)


def _ignored(text, label):
    return None


def _ignored_bool(text, label):
    parse_bool(text, label)  # still checked: istio-iptables would refuse a bad boolean too
    return None


FIELDS: tuple[Field, ...] = (
    Field(
        "ProxyPort",
        "proxy_port",
        ("--envoy-port", "-p"),
        (),
        str(c.PROXY_PORT),
        parse_port,
        "port outbound TCP is redirected to",
    ),
    Field(
        "InboundCapturePort",
        "inbound_capture_port",
        ("--inbound-capture-port", "-z"),
        ("INBOUND_CAPTURE_PORT",),
        str(c.INBOUND_CAPTURE_PORT),
        parse_port,
        "port inbound TCP (and the proxy's own hairpin) is redirected to; not -p's",
    ),
    Field(
        "InboundTunnelPort",
        "inbound_tunnel_port",
        ("--inbound-tunnel-port", "-e"),
        ("INBOUND_TUNNEL_PORT",),
        str(c.INBOUND_TUNNEL_PORT),
        parse_port,
        "HBONE tunnel port: never captured inbound",
    ),
    Field(
        "ProxyUID",
        "proxy_uids",
        ("--proxy-uid", "-u"),
        ("PROXY_UID",),
        f"'': uid of $ENVOY_USER ({c.PROXY_USER}), else {c.PROXY_UID}",
        _uids,
        "comma list of uids whose traffic is never captured outbound",
    ),
    Field(
        "ProxyGID",
        "proxy_gids",
        ("--proxy-gid", "-g"),
        ("PROXY_GID",),
        "'': the uid list",
        _gids,
        "comma list of gids whose traffic is never captured outbound",
    ),
    Field(
        "InboundInterceptionMode",
        "inbound_interception_mode",
        ("--istio-inbound-interception-mode", "-m"),
        ("ISTIO_INBOUND_INTERCEPTION_MODE",),
        "'' (REDIRECT)",
        parse_mode,
        "REDIRECT (nat) or TPROXY (mangle, source kept)",
    ),
    Field(
        "InboundTProxyMark",
        "inbound_tproxy_mark",
        ("--istio-inbound-tproxy-mark", "-t"),
        ("ISTIO_INBOUND_TPROXY_MARK",),
        str(c.TPROXY_MARK),
        _mark,
        "packet mark used by TPROXY mode",
    ),
    Field(
        "InboundTProxyRouteTable",
        "inbound_tproxy_route_table",
        ("--istio-inbound-tproxy-route-table", "-r"),
        ("ISTIO_INBOUND_TPROXY_ROUTE_TABLE",),
        str(c.TPROXY_ROUTE_TABLE),
        _table,
        "policy-routing table used by TPROXY mode",
    ),
    Field(
        "InboundPortsInclude",
        "inbound_ports_include",
        ("--istio-inbound-ports", "-b"),
        ("ISTIO_INBOUND_PORTS",),
        "'' (none)",
        _ports_or_all,
        "inbound ports to capture: comma list, '*' for all, '' for none",
    ),
    Field(
        "InboundPortsExclude",
        "inbound_ports_exclude",
        ("--istio-local-exclude-ports", "-d"),
        ("ISTIO_LOCAL_EXCLUDE_PORTS",),
        "''",
        _ports,
        "inbound ports never captured (only with -b '*')",
    ),
    Field(
        "ExcludeInterfaces",
        "exclude_interfaces",
        ("--istio-exclude-interfaces", "-c"),
        ("ISTIO_EXCLUDE_INTERFACES",),
        "''",
        parse_interfaces,
        "interfaces whose traffic is never captured",
    ),
    Field(
        "OutboundIPRangesInclude",
        "outbound_ip_ranges_include",
        ("--istio-service-cidr", "-i"),
        ("ISTIO_SERVICE_CIDR",),
        "'' (none)",
        _cidrs_or_all,
        "outbound destinations to capture: CIDR list, '*' for all, '' for none",
    ),
    Field(
        "OutboundIPRangesExclude",
        "outbound_ip_ranges_exclude",
        ("--istio-service-exclude-cidr", "-x"),
        ("ISTIO_SERVICE_EXCLUDE_CIDR",),
        "''",
        _cidrs,
        "outbound destinations never captured (beats -i and -q)",
    ),
    Field(
        "OutboundPortsInclude",
        "outbound_ports_include",
        ("--istio-outbound-ports", "-q"),
        ("ISTIO_OUTBOUND_PORTS",),
        "''",
        _ports,
        "outbound TCP ports captured whatever the destination",
    ),
    Field(
        "OutboundPortsExclude",
        "outbound_ports_exclude",
        ("--istio-local-outbound-ports-exclude", "-o"),
        ("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",),
        "''",
        _ports,
        "outbound TCP/UDP ports never captured",
    ),
    Field(
        "RerouteVirtualInterfaces",
        "kube_virt_interfaces",
        ("--kube-virt-interfaces", "-k"),
        ("KUBE_VIRT_INTERFACES",),
        "''",
        parse_interfaces,
        "interfaces (e.g. KubeVirt VMs) whose inbound traffic is treated as outbound",
    ),
    Field(
        "RedirectDNS",
        "redirect_dns",
        ("--redirect-dns",),
        ("REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"),
        "false",
        parse_bool,
        "capture DNS to the resolv.conf servers to 15053",
        boolean=True,
    ),
    Field(
        "CaptureAllDNS",
        "capture_all_dns",
        ("--capture-all-dns",),
        ("CAPTURE_ALL_DNS",),
        "false",
        parse_bool,
        "with --redirect-dns: capture all port-53 traffic",
        boolean=True,
    ),
    Field(
        "DropInvalid",
        "drop_invalid",
        ("--drop-invalid",),
        ("DROP_INVALID", "INVALID_DROP"),
        "false",
        parse_bool,
        "drop conntrack-INVALID packets instead of resetting",
        boolean=True,
    ),
    Field(
        "OwnerGroupsInclude",
        "owner_groups_include",
        (),
        ("ISTIO_OUTBOUND_OWNER_GROUPS",),
        "*",
        _groups_or_all,
        "groups (names or gids) whose outbound traffic is captured (env only)",
    ),
    Field(
        "OwnerGroupsExclude",
        "owner_groups_exclude",
        (),
        ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",),
        "''",
        _groups,
        "groups never captured, when the include list is '*' (env only)",
    ),
    Field(
        "HostIPv4LoopbackCidr",
        "host_ipv4_loopback_cidr",
        (),
        ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",),
        "127.0.0.1/32",
        parse_cidr,
        "IPv4 loopback destinations never captured (env only)",
    ),
    # Options that change how istio-iptables runs, not what it captures: accepted and ignored.
    Field("DryRun", None, ("--dry-run", "-n"), ("DRY_RUN",), "false", _ignored_bool, "", boolean=True),
    Field(
        "DualStack",
        None,
        ("--dual-stack",),
        ("DUAL_STACK", "ISTIO_DUAL_STACK"),
        "false",
        _ignored_bool,
        "",
        boolean=True,
    ),
    Field("IptablesProbePort", None, ("--iptables-probe-port",), ("IPTABLES_PROBE_PORT",), "15002", _ignored, ""),
    Field("ProbeTimeout", None, ("--probe-timeout",), ("PROBE_TIMEOUT",), "5s", _ignored, ""),
    Field(
        "SkipRuleApply", None, ("--skip-rule-apply",), ("SKIP_RULE_APPLY",), "false", _ignored_bool, "", boolean=True
    ),
    Field("RunValidation", None, ("--run-validation",), ("RUN_VALIDATION",), "false", _ignored_bool, "", boolean=True),
    Field("NetworkNamespace", None, ("--network-namespace",), ("NETWORK_NAMESPACE",), "''", _ignored, ""),
    Field("HostFilesystemPodNetwork", None, ("--cni-mode",), ("CNI_MODE",), "false", _ignored_bool, "", boolean=True),
    Field("Reconcile", None, ("--reconcile",), ("RECONCILE",), "false", _ignored_bool, "", boolean=True),
    Field("CleanupOnly", None, ("--cleanup-only",), ("CLEANUP_ONLY",), "false", _ignored_bool, "", boolean=True),
    Field("ForceApply", None, ("--force-apply",), ("FORCE_APPLY",), "false", _ignored_bool, "", boolean=True),
    Field(
        "NativeNftables", None, ("--native-nftables",), ("NATIVE_NFTABLES",), "false", _ignored_bool, "", boolean=True
    ),
    Field("ForceIptablesBinary", None, ("--force-iptables-binary",), ("FORCE_IPTABLES_BINARY",), "''", _ignored, ""),
)

BY_GO = {f.go: f for f in FIELDS}
BY_FLAG = {flag: f for f in FIELDS for flag in f.flags}


def flag_label(field: Field) -> str:
    """How errors name a field: its flags, or its env variable when it has no flag."""
    if field.flags:
        return "/".join(field.flags)
    return field.env[0]


def default_proxy_uid(user: str = c.PROXY_USER) -> str:
    """istio-iptables' default -u: the uid of user $ENVOY_USER (istio-proxy), else 1337."""
    try:
        return str(pwd.getpwnam(user).pw_uid)
    except KeyError:
        return str(c.PROXY_UID)


# ---------------------------------------------------------------------------
# From what an input gave to a CaptureSpec


@dataclass(frozen=True)
class Given:
    """One CaptureSpec value as an input gave it: the value, the field's name there, its text."""

    value: object
    label: str
    text: str | None = None


@dataclass(frozen=True)
class Parsed:
    """What an input yields: the spec, and warnings about what was given."""

    spec: CaptureSpec
    warnings: tuple[str, ...]


def given_from_texts(
    texts: Mapping[str, tuple[str, str]], labels: Mapping[str, str], default_uid: str
) -> dict[str, Given]:
    """{attribute: Given} from {Go field: (text, label)}; labels name the attributes given no text.

    As in istio-iptables, an empty -u is default_uid ($ENVOY_USER's) and an empty -g the -u list.
    """
    texts = dict(texts)
    if not texts.get("ProxyUID", ("", ""))[0].strip():
        texts["ProxyUID"] = (default_uid, labels["proxy_uids"])
    if not texts.get("ProxyGID", ("", ""))[0].strip():
        texts["ProxyGID"] = (texts["ProxyUID"][0], labels["proxy_gids"])
    given = {}
    for field in FIELDS:
        if field.go not in texts:
            continue
        text, label = texts[field.go]
        value = field.parse(text, label)
        if field.go == "InboundPortsInclude" and value == () and text.strip():
            # istio-iptables tests the text, not the list: it would add its inbound jump, capturing nothing.
            raise SpecError(
                label,
                text,
                "no port in the list (istio-iptables would still jump to its inbound "
                "chain, capturing nothing); give '' for no inbound capture",
            )
        if field.attr is not None:
            given[field.attr] = Given(value, label, text)
    return given


def split_dns_servers(servers: list[str], label: str = "DNS server") -> dict[str, tuple[str, ...]]:
    """CaptureSpec keyword arguments for nameservers as istio-iptables takes them from resolv.conf:
    parsed, split by family, written as Go's netip prints them."""
    by_version: dict[int, list[str]] = {4: [], 6: []}
    for text in servers:
        address = parse_address(text, label)
        by_version[address.version].append(s.address_text(address))
    return {"dns_servers_v4": tuple(by_version[4]), "dns_servers_v6": tuple(by_version[6])}


def dns_given(servers: list[str], label: str) -> dict[str, Given]:
    return {attr: Given(value, label) for attr, value in split_dns_servers(servers, label).items()}


def build_spec(given: Mapping[str, Given], labels: Mapping[str, str], base: CaptureSpec | None = None) -> Parsed:
    """The spec of the given values (over base's, if any), with CaptureSpec's errors named as the
    input names its fields (labels, then each Given's), and the warnings about the list items."""
    names = {**labels, **{attr: g.label for attr, g in given.items()}}
    values: dict[str, Any] = {attr: g.value for attr, g in given.items()}  # typed by each field's parser
    try:
        spec = base.replace(**values) if base is not None else CaptureSpec(**values)
    except SpecError as error:
        raise error.relabel(names) from None
    return Parsed(spec, tuple(note for g in given.values() for note in item_notes(g)))


def empty_item_notes(label: str, text: str) -> list[str]:
    if text.strip() in ("", s.WILDCARD) or all(item.strip() for item in text.split(",")):
        return []
    return [f"{label}: empty item in {text!r} skipped, as istio-iptables skips it"]


def item_notes(given: Given) -> list[str]:
    """Warnings about list items istio-iptables takes without a word, and so does accel: empty ones
    (skipped), repeated ones (kept: their rules repeat) and CIDRs with host bits (written as given)."""
    notes = [] if given.text is None else empty_item_notes(given.label, given.text)
    items = given.value if isinstance(given.value, tuple) else (given.value,)
    for item, count in Counter(items).items():
        if count > 1:
            notes.append(
                f"{given.label}: {_item_text(item)} is listed {count} times; kept, as istio-iptables "
                "keeps it (its rules repeat)"
            )
    for item in items:
        if (
            isinstance(item, (ipaddress.IPv4Interface, ipaddress.IPv6Interface))
            and item.ip != item.network.network_address
        ):
            notes.append(
                f"{given.label}: {s.cidr_text(item)} has host bits set; written as given, as "
                f"istio-iptables writes it (it matches {item.network})"
            )
    return notes


def _item_text(item) -> str:
    if isinstance(item, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return s.cidr_text(item)
    return str(item)
