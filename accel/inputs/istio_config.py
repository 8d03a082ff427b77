"""Istio's config as JSON, with Go field names (e.g. the effective_config objects of cases.json): absent
fields take istio-iptables' command-line defaults. to_istio_config writes a spec back in this form."""

from __future__ import annotations

from collections.abc import Mapping

from .. import spec as s
from ..spec import CaptureSpec, SpecError
from .fields import BY_GO, FIELDS, Given, Parsed, build_spec, default_proxy_uid, given_from_texts
from .parsers import parse_bool

# Fields with no flag: detected by istio-iptables on the node. Settable in --istio-config files.
DETECTED = ("EnableIPv6", "DNSServersV4", "DNSServersV6")
# Other Go fields of config.Config that may appear in a dumped config; none affects capture.
OTHER_GO_FIELDS = ("TraceLogging", "EnableInboundIPv6")

LABELS = {
    **{f.attr: f.go for f in FIELDS if f.attr is not None},
    "enable_ipv6": "EnableIPv6",
    "dns_servers_v4": "DNSServersV4",
    "dns_servers_v6": "DNSServersV6",
}


def read_istio_config(config: Mapping[str, object]) -> Parsed:
    """The spec of an Istio config object, and warnings about it."""
    texts: dict[str, tuple[str, str]] = {}
    for key, value in config.items():
        if key in DETECTED or key in OTHER_GO_FIELDS:
            continue
        if key not in BY_GO:
            raise SpecError(key, value, "unknown Istio config field")
        texts[key] = (_as_text(key, value), key)
    given = given_from_texts(texts, LABELS, default_proxy_uid())
    given["enable_ipv6"] = Given(parse_bool(config.get("EnableIPv6", False), "EnableIPv6"), "EnableIPv6")
    for key, attr in (("DNSServersV4", "dns_servers_v4"), ("DNSServersV6", "dns_servers_v6")):
        servers = config.get(key) or []
        if not isinstance(servers, list):
            raise SpecError(key, servers, "expected a list of addresses")
        # As written: istio-iptables puts Config's strings into its rules unchanged.
        given[attr] = Given(tuple(str(server) for server in servers), key)
    return build_spec(given, LABELS)


def from_istio_config(config: Mapping[str, object]) -> CaptureSpec:
    """The spec of an Istio config object (read_istio_config)."""
    return read_istio_config(config).spec


def _as_text(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    if value is None:
        return ""
    raise SpecError(key, value, "expected a string, number or boolean")


def to_istio_config(spec: CaptureSpec) -> dict[str, object]:
    """The spec as Istio's config JSON: from_istio_config(to_istio_config(x)) == x."""

    def listed(values):
        return values if values == s.WILDCARD else s.join(values)

    def cidrs(values):
        return values if values == s.WILDCARD else ",".join(s.cidr_text(c) for c in values)

    return {
        "ProxyPort": str(spec.proxy_port),
        "InboundCapturePort": str(spec.inbound_capture_port),
        "InboundTunnelPort": str(spec.inbound_tunnel_port),
        "ProxyUID": s.join(spec.proxy_uids),
        "ProxyGID": s.join(spec.proxy_gids),
        "InboundInterceptionMode": spec.inbound_interception_mode,
        "InboundTProxyMark": str(spec.inbound_tproxy_mark),
        "InboundTProxyRouteTable": str(spec.inbound_tproxy_route_table),
        "InboundPortsInclude": listed(spec.inbound_ports_include),
        "InboundPortsExclude": listed(spec.inbound_ports_exclude),
        "OwnerGroupsInclude": listed(spec.owner_groups_include),
        "OwnerGroupsExclude": s.join(spec.owner_groups_exclude),
        "OutboundPortsInclude": listed(spec.outbound_ports_include),
        "OutboundPortsExclude": listed(spec.outbound_ports_exclude),
        "OutboundIPRangesInclude": cidrs(spec.outbound_ip_ranges_include),
        "OutboundIPRangesExclude": cidrs(spec.outbound_ip_ranges_exclude),
        "RerouteVirtualInterfaces": s.join(spec.kube_virt_interfaces),
        "ExcludeInterfaces": s.join(spec.exclude_interfaces),
        "RedirectDNS": spec.redirect_dns,
        "CaptureAllDNS": spec.capture_all_dns,
        "DropInvalid": spec.drop_invalid,
        "EnableIPv6": spec.enable_ipv6,
        "DNSServersV4": list(spec.dns_servers_v4),
        "DNSServersV6": list(spec.dns_servers_v6),
        "HostIPv4LoopbackCidr": s.cidr_text(spec.host_ipv4_loopback_cidr),
    }
