"""Pod annotations, as the istio-cni plugin reads them in sidecar mode (cni/pkg/plugin/sidecar_redirect.go):
the annotations, and the istio-proxy container's env and securityContext."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import constants as c
from .. import spec as s
from ..spec import CaptureSpec, SpecError
from .fields import Given, Parsed, build_spec
from .parsers import parse_address, parse_bool, parse_cidrs, parse_id, parse_interfaces, parse_ports


@dataclass(frozen=True)
class Annotation:
    key: str
    default: str
    parse: Callable[[str, str], object]


def _cni_mode(text, label):
    # istio-cni's own check of this annotation: unlike -m, an empty value is refused (NONE pods never
    # reach the plugin's redirect).
    if text not in (s.REDIRECT, s.TPROXY):
        raise SpecError(label, text, "unknown annotation value (expected REDIRECT or TPROXY)")
    return text


def _no_empty_items(parse, **options):
    """istio-cni validates port and CIDR annotations item by item without dropping empty ones: it refuses them."""

    def strict(text, label):
        if text.strip() and not all(item.strip() for item in text.split(",")):
            raise SpecError(label, text, "empty item in the list (istio-cni refuses it)")
        return parse(text, label, **options)

    return strict


_PORTS, _PORTS_OR_ALL = _no_empty_items(parse_ports), _no_empty_items(parse_ports, wildcard=True)
_CIDRS, _CIDRS_OR_ALL = _no_empty_items(parse_cidrs), _no_empty_items(parse_cidrs, wildcard=True)

# istio-cni's annotation registry and its defaults.
ANNOTATIONS = {
    "redirectMode": Annotation("sidecar.istio.io/interceptionMode", "REDIRECT", _cni_mode),
    "includeIPCidrs": Annotation("traffic.sidecar.istio.io/includeOutboundIPRanges", "*", _CIDRS_OR_ALL),
    "excludeIPCidrs": Annotation("traffic.sidecar.istio.io/excludeOutboundIPRanges", "", _CIDRS),
    "excludeInboundPorts": Annotation(
        "traffic.sidecar.istio.io/excludeInboundPorts", str(c.MERGED_METRICS_PORT), _PORTS
    ),
    "includeInboundPorts": Annotation("traffic.sidecar.istio.io/includeInboundPorts", "*", _PORTS_OR_ALL),
    "excludeOutboundPorts": Annotation(
        "traffic.sidecar.istio.io/excludeOutboundPorts", str(c.MERGED_METRICS_PORT), _PORTS
    ),
    "includeOutboundPorts": Annotation("traffic.sidecar.istio.io/includeOutboundPorts", "", _PORTS),
    "excludeInterfaces": Annotation("traffic.sidecar.istio.io/excludeInterfaces", "", parse_interfaces),
    "rerouteVirtualInterfaces": Annotation("istio.io/reroute-virtual-interfaces", "", parse_interfaces),
    "kubevirtInterfaces": Annotation("traffic.sidecar.istio.io/kubevirtInterfaces", "", parse_interfaces),
    "statusPort": Annotation("status.sidecar.istio.io/port", "", _PORTS),
}
STATUS_ANNOTATION = "sidecar.istio.io/status"
# The sidecar always answers on these; istio-cni never captures them inbound.
CNI_EXCLUDED_INBOUND = (c.MERGED_METRICS_PORT, c.HEALTH_PORT, c.ENVOY_METRICS_PORT)
ANNOTATION_FILE_KEYS = ("annotations", "proxy_env", "proxy_runAsUser", "proxy_runAsGroup", "pod_ips")


def from_annotations(document: Mapping[str, object], base: CaptureSpec | None = None) -> Parsed:
    """istio-cni sidecar mode: annotations and the istio-proxy container's env/securityContext.

    Keys: annotations, proxy_env, proxy_runAsUser, proxy_runAsGroup and, optionally, pod_ips
    (the pod's addresses, from which istio-iptables would detect IPv6).

    Without base, what the document does not say takes istio-cni's defaults, exactly as istio-cni
    does. With base (accel-cni's "capture"), it keeps base's value instead; the sidecar's own
    ports are never captured inbound either way.
    """
    for key in document:
        if key not in ANNOTATION_FILE_KEYS:
            raise SpecError(key, document[key], f"unknown key (expected {', '.join(ANNOTATION_FILE_KEYS)})")
    annotations = _string_map(document, "annotations")
    proxy_env = _string_map(document, "proxy_env")
    warnings = []
    if STATUS_ANNOTATION not in annotations:
        warnings.append(f"no {STATUS_ANNOTATION} annotation: istio-cni would not capture this pod")
    known = {a.key for a in ANNOTATIONS.values()}
    for key in annotations:
        if key.startswith("traffic.sidecar.istio.io/") and key not in known:
            warnings.append(f"annotation {key} is not one istio-cni reads; ignored")

    def value(name):
        annotation = ANNOTATIONS[name]
        text = annotations.get(annotation.key, annotation.default)
        return Given(annotation.parse(text, annotation.key), annotation.key, text)

    for port in value("statusPort").value:  # validated by istio-cni, though it does not change capture
        s.check_port(ANNOTATIONS["statusPort"].key, port)
    excluded = value("excludeInboundPorts")
    if base is not None and ANNOTATIONS["excludeInboundPorts"].key not in annotations:
        excluded = Given(base.inbound_ports_exclude, "capture.InboundPortsExclude")
    reroute_key = ANNOTATIONS["rerouteVirtualInterfaces"].key
    uid, gid = _security_id(document, "proxy_runAsUser"), _security_id(document, "proxy_runAsGroup")
    dns = _env_bool(proxy_env, "ISTIO_META_DNS_CAPTURE")
    given = dict(
        inbound_interception_mode=value("redirectMode"),
        proxy_uids=Given((uid or c.PROXY_UID,), "proxy_runAsUser"),
        proxy_gids=Given((gid or c.PROXY_GID,), "proxy_runAsGroup"),
        outbound_ip_ranges_include=value("includeIPCidrs"),
        outbound_ip_ranges_exclude=value("excludeIPCidrs"),
        inbound_ports_include=value("includeInboundPorts"),
        # istio-cni appends the sidecar's own ports to the annotation's, keeping the first of duplicates
        inbound_ports_exclude=Given(tuple(dict.fromkeys(excluded.value + CNI_EXCLUDED_INBOUND)), excluded.label),
        outbound_ports_exclude=value("excludeOutboundPorts"),
        outbound_ports_include=value("includeOutboundPorts"),
        exclude_interfaces=value("excludeInterfaces"),
        kube_virt_interfaces=value("rerouteVirtualInterfaces" if reroute_key in annotations else "kubevirtInterfaces"),
        # istio-cni cannot know the pod's resolv.conf, so DNS capture means all port-53 traffic.
        redirect_dns=Given(dns, "proxy_env ISTIO_META_DNS_CAPTURE"),
        capture_all_dns=Given(dns, "proxy_env ISTIO_META_DNS_CAPTURE"),
        drop_invalid=Given(_env_bool(proxy_env, "INVALID_DROP"), "proxy_env INVALID_DROP"),
        enable_ipv6=Given(_detect_ipv6(document.get("pod_ips"), _env_bool(proxy_env, "ISTIO_DUAL_STACK")), "pod_ips"),
    )
    if base is not None:
        said = {attr for name, attr in _ANNOTATED.items() if ANNOTATIONS[name].key in annotations}
        said |= {"inbound_ports_exclude"}
        said |= {"proxy_uids"} if uid else set()
        said |= {"proxy_gids"} if gid else set()
        said |= {"redirect_dns", "capture_all_dns"} if "ISTIO_META_DNS_CAPTURE" in proxy_env else set()
        said |= {"drop_invalid"} if "INVALID_DROP" in proxy_env else set()
        said |= {"enable_ipv6"} if document.get("pod_ips") is not None else set()
        if reroute_key in annotations or ANNOTATIONS["kubevirtInterfaces"].key in annotations:
            said.add("kube_virt_interfaces")
        given = {attr: g for attr, g in given.items() if attr in said}
    parsed = build_spec(given, {}, base=base)
    return Parsed(parsed.spec, tuple(warnings) + parsed.warnings)


# The spec attribute each annotation sets (statusPort sets none; the interfaces pair is handled apart).
_ANNOTATED = {
    "redirectMode": "inbound_interception_mode",
    "includeIPCidrs": "outbound_ip_ranges_include",
    "excludeIPCidrs": "outbound_ip_ranges_exclude",
    "includeInboundPorts": "inbound_ports_include",
    "excludeOutboundPorts": "outbound_ports_exclude",
    "includeOutboundPorts": "outbound_ports_include",
    "excludeInterfaces": "exclude_interfaces",
}


def _string_map(document, key) -> dict[str, str]:
    value = document.get(key) or {}
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise SpecError(key, value, "expected an object of string values")
    return dict(value)


def _security_id(document, key) -> int | None:
    value = document.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(key, value, "expected an integer or null")
    return parse_id(value, key, "id")


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    return parse_bool(env[name], f"proxy_env {name}") if name in env else False


def _detect_ipv6(pod_ips, dual_stack: bool) -> bool:
    """istio-iptables' rule: the first non-loopback, non-link-local address decides;
    with dual-stack, any IPv6 one enables IPv6."""
    if pod_ips is None:
        return False
    if not isinstance(pod_ips, list):
        raise SpecError("pod_ips", pod_ips, "expected a list of addresses")
    usable = [
        a for a in (parse_address(str(t), "pod_ips") for t in pod_ips) if not a.is_loopback and not a.is_link_local
    ]
    if dual_stack:
        return any(a.version == 6 for a in usable)
    return bool(usable) and usable[0].version == 6
