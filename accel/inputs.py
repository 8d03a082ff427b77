"""The three ways a CaptureSpec comes in, each read exactly as Istio reads it.

1. istio-iptables argv and environment (`from_istio_args`): pflag syntax, env binding with
   aliases (argv > alias env > env > default), env-only owner-group and loopback settings.
2. Istio's config JSON with Go field names (`from_istio_config`), absent fields defaulted
   as istio-iptables' command line would.
3. Pod annotations as the istio-cni plugin reads them in sidecar mode (`from_annotations`).

One table, FIELDS, describes every option; the --help text is generated from it.
"""

from __future__ import annotations

import json
import os
import pwd
from dataclasses import dataclass
from typing import Callable, Mapping

from . import constants as c
from . import spec as s
from .spec import CaptureSpec, SpecError


@dataclass(frozen=True)
class Field:
    go: str  # Go field of Istio's config.Config: the key in --istio-config files
    attr: str | None  # CaptureSpec attribute; None = accepted but changes nothing captured
    flags: tuple[str, ...]  # istio-iptables flags, long form first
    env: tuple[str, ...]  # environment variables; a later one wins over an earlier one
    default: str  # istio-iptables' command-line default, as text
    parse: Callable[[str, str], object] | None
    help: str
    boolean: bool = False


def _ports(text, label):
    return s.parse_ports(text, label)


def _ports_or_all(text, label):
    return s.parse_ports(text, label, wildcard=True)


def _uids(text, label):
    return s.parse_ids(text, label, "uid")


def _gids(text, label):
    return s.parse_ids(text, label, "gid")


def _cidrs(text, label):
    return s.parse_cidrs(text, label)


def _cidrs_or_all(text, label):
    return s.parse_cidrs(text, label, wildcard=True)


def _mark(text, label):
    return s.parse_uint32(text, label, "packet mark", minimum=1)


def _table(text, label):
    return s.parse_uint32(text, label, "route table", minimum=1)


def _groups_or_all(text, label):
    groups = s.parse_groups(text, label, wildcard=True)
    if groups != s.WILDCARD and len(groups) > s.MAX_OWNER_GROUPS_INCLUDE:
        raise SpecError(label, text, f"at most {s.MAX_OWNER_GROUPS_INCLUDE} groups may be included")
    return groups


def _groups(text, label):
    return s.parse_groups(text, label)


def _ignored(text, label):
    return None


def _ignored_bool(text, label):
    s.parse_bool(text, label)  # still checked: istio-iptables would refuse a bad boolean too
    return None


FIELDS: tuple[Field, ...] = (
    Field("ProxyPort", "proxy_port", ("--envoy-port", "-p"), (), str(c.PROXY_PORT), s.parse_port,
          "port outbound TCP is redirected to"),
    Field("InboundCapturePort", "inbound_capture_port", ("--inbound-capture-port", "-z"),
          ("INBOUND_CAPTURE_PORT",), str(c.INBOUND_CAPTURE_PORT), s.parse_port,
          "port inbound TCP (and the proxy's own hairpin) is redirected to"),
    Field("InboundTunnelPort", "inbound_tunnel_port", ("--inbound-tunnel-port", "-e"),
          ("INBOUND_TUNNEL_PORT",), str(c.INBOUND_TUNNEL_PORT), s.parse_port,
          "HBONE tunnel port: never captured inbound"),
    Field("ProxyUID", "proxy_uids", ("--proxy-uid", "-u"), ("PROXY_UID",),
          f"uid of $ENVOY_USER ({c.PROXY_USER}), else {c.PROXY_UID}", _uids,
          "comma list of uids whose traffic is never captured outbound"),
    Field("ProxyGID", "proxy_gids", ("--proxy-gid", "-g"), ("PROXY_GID",), "the uid list", _gids,
          "comma list of gids whose traffic is never captured outbound"),
    Field("InboundInterceptionMode", "inbound_interception_mode",
          ("--istio-inbound-interception-mode", "-m"), ("ISTIO_INBOUND_INTERCEPTION_MODE",),
          "REDIRECT", s.parse_mode, "REDIRECT (nat) or TPROXY (mangle, source kept)"),
    Field("InboundTProxyMark", "inbound_tproxy_mark", ("--istio-inbound-tproxy-mark", "-t"),
          ("ISTIO_INBOUND_TPROXY_MARK",), str(c.TPROXY_MARK), _mark, "packet mark used by TPROXY mode"),
    Field("InboundTProxyRouteTable", "inbound_tproxy_route_table",
          ("--istio-inbound-tproxy-route-table", "-r"), ("ISTIO_INBOUND_TPROXY_ROUTE_TABLE",),
          str(c.TPROXY_ROUTE_TABLE), _table, "policy-routing table used by TPROXY mode"),
    Field("InboundPortsInclude", "inbound_ports_include", ("--istio-inbound-ports", "-b"),
          ("ISTIO_INBOUND_PORTS",), "'' (none)", _ports_or_all,
          "inbound ports to capture: comma list, '*' for all, '' for none"),
    Field("InboundPortsExclude", "inbound_ports_exclude", ("--istio-local-exclude-ports", "-d"),
          ("ISTIO_LOCAL_EXCLUDE_PORTS",), "''", _ports,
          "inbound ports never captured (only with -b '*')"),
    Field("ExcludeInterfaces", "exclude_interfaces", ("--istio-exclude-interfaces", "-c"),
          ("ISTIO_EXCLUDE_INTERFACES",), "''", s.parse_interfaces,
          "interfaces whose traffic is never captured"),
    Field("OutboundIPRangesInclude", "outbound_ip_ranges_include", ("--istio-service-cidr", "-i"),
          ("ISTIO_SERVICE_CIDR",), "'' (none)", _cidrs_or_all,
          "outbound destinations to capture: CIDR list, '*' for all, '' for none"),
    Field("OutboundIPRangesExclude", "outbound_ip_ranges_exclude",
          ("--istio-service-exclude-cidr", "-x"), ("ISTIO_SERVICE_EXCLUDE_CIDR",), "''", _cidrs,
          "outbound destinations never captured (beats -i and -q)"),
    Field("OutboundPortsInclude", "outbound_ports_include", ("--istio-outbound-ports", "-q"),
          ("ISTIO_OUTBOUND_PORTS",), "''", _ports,
          "outbound TCP ports captured whatever the destination"),
    Field("OutboundPortsExclude", "outbound_ports_exclude",
          ("--istio-local-outbound-ports-exclude", "-o"), ("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",),
          "''", _ports, "outbound TCP/UDP ports never captured"),
    Field("RerouteVirtualInterfaces", "kube_virt_interfaces", ("--kube-virt-interfaces", "-k"),
          ("KUBE_VIRT_INTERFACES",), "''", s.parse_interfaces,
          "interfaces (e.g. KubeVirt VMs) whose inbound traffic is treated as outbound"),
    Field("RedirectDNS", "redirect_dns", ("--redirect-dns",), ("REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"),
          "false", s.parse_bool, "capture DNS to the resolv.conf servers to 15053", boolean=True),
    Field("CaptureAllDNS", "capture_all_dns", ("--capture-all-dns",), ("CAPTURE_ALL_DNS",), "false",
          s.parse_bool, "with --redirect-dns: capture all port-53 traffic", boolean=True),
    Field("DropInvalid", "drop_invalid", ("--drop-invalid",), ("DROP_INVALID", "INVALID_DROP"),
          "false", s.parse_bool, "drop conntrack-INVALID packets instead of resetting", boolean=True),
    Field("OwnerGroupsInclude", "owner_groups_include", (), ("ISTIO_OUTBOUND_OWNER_GROUPS",), "*",
          _groups_or_all, "groups (names or gids) whose outbound traffic is captured (env only)"),
    Field("OwnerGroupsExclude", "owner_groups_exclude", (), ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",),
          "''", _groups, "groups never captured, when the include list is '*' (env only)"),
    Field("HostIPv4LoopbackCidr", "host_ipv4_loopback_cidr", (), ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",),
          "127.0.0.1/32", s.parse_loopback_cidr,
          "IPv4 loopback destinations never captured (env only)"),
    # Options that change how istio-iptables runs, not what it captures: accepted and ignored.
    Field("DryRun", None, ("--dry-run", "-n"), ("DRY_RUN",), "false", _ignored_bool, "", boolean=True),
    Field("DualStack", None, ("--dual-stack",), ("DUAL_STACK", "ISTIO_DUAL_STACK"), "false",
          _ignored_bool, "", boolean=True),
    Field("IptablesProbePort", None, ("--iptables-probe-port",), ("IPTABLES_PROBE_PORT",), "15002",
          _ignored, ""),
    Field("ProbeTimeout", None, ("--probe-timeout",), ("PROBE_TIMEOUT",), "5s", _ignored, ""),
    Field("SkipRuleApply", None, ("--skip-rule-apply",), ("SKIP_RULE_APPLY",), "false",
          _ignored_bool, "", boolean=True),
    Field("RunValidation", None, ("--run-validation",), ("RUN_VALIDATION",), "false",
          _ignored_bool, "", boolean=True),
    Field("NetworkNamespace", None, ("--network-namespace",), ("NETWORK_NAMESPACE",), "''",
          _ignored, ""),
    Field("HostFilesystemPodNetwork", None, ("--cni-mode",), ("CNI_MODE",), "false",
          _ignored_bool, "", boolean=True),
    Field("Reconcile", None, ("--reconcile",), ("RECONCILE",), "false", _ignored_bool, "", boolean=True),
    Field("CleanupOnly", None, ("--cleanup-only",), ("CLEANUP_ONLY",), "false", _ignored_bool, "",
          boolean=True),
    Field("ForceApply", None, ("--force-apply",), ("FORCE_APPLY",), "false", _ignored_bool, "",
          boolean=True),
    Field("NativeNftables", None, ("--native-nftables",), ("NATIVE_NFTABLES",), "false",
          _ignored_bool, "", boolean=True),
    Field("ForceIptablesBinary", None, ("--force-iptables-binary",), ("FORCE_IPTABLES_BINARY",), "''",
          _ignored, ""),
)

BY_GO = {f.go: f for f in FIELDS}
BY_FLAG = {flag: f for f in FIELDS for flag in f.flags}

# Istio's logging flags, accepted on every istio-iptables command line (the stock istio-init
# passes --log_output_level). None of them takes part in capture.
LOG_FLAGS = {"--log_as_json": True, "--log_caller": False, "--log_output_level": False,
             "--log_rotate": False, "--log_rotate_max_age": False, "--log_rotate_max_backups": False,
             "--log_rotate_max_size": False, "--log_stacktrace_level": False, "--log_target": False}

# The stock sidecar: istio-init's arguments as Istio's injector writes them (no DNS capture).
ISTIO_INIT_DEFAULT_ARGS = c.ISTIO_INIT_DEFAULT_ARGS

# Fields with no flag: detected by istio-iptables on the node. Settable in --istio-config files.
DETECTED = ("EnableIPv6", "DNSServersV4", "DNSServersV6")
# Other Go fields of config.Config that may appear in a dumped config; none affects capture.
OTHER_GO_FIELDS = ("TraceLogging", "EnableInboundIPv6")


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
# 1. istio-iptables command line and environment


def parse_istio_argv(argv: list[str]) -> dict[str, str]:
    """pflag-style parsing of istio-iptables arguments into {Go field: text}."""
    values: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            if i < len(argv):
                raise SpecError("istio-iptables arguments", argv[i], "unexpected argument")
            break
        if not arg.startswith("-") or arg == "-":
            raise SpecError("istio-iptables arguments", arg, "unexpected argument (flags start with -)")
        name, has_value, value = arg.partition("=")
        if not arg.startswith("--") and len(name) > 2:  # -p15001
            name, has_value, value = arg[:2], True, arg[2:].lstrip("=")
        if name in LOG_FLAGS:
            if not has_value and not LOG_FLAGS[name]:
                i += 1
            continue
        field = BY_FLAG.get(name)
        if field is None:
            raise SpecError(name, arg, "unknown istio-iptables flag (see accel render --help)")
        if field.boolean:
            values[field.go] = value if has_value else "true"
            continue
        if not has_value:
            if i >= len(argv):
                raise SpecError(flag_label(field), arg, "flag needs a value")
            value = argv[i]
            i += 1
        values[field.go] = value
    return values


def from_istio_args(argv: list[str], env: Mapping[str, str] | None = None, *,
                    enable_ipv6: bool = False, dns_servers: list[str] | None = None,
                    resolv_conf: str = "/etc/resolv.conf") -> CaptureSpec:
    """A CaptureSpec exactly as `istio-iptables ARGV` with environment ENV would capture.

    What istio-iptables detects on the node is given instead: enable_ipv6 (the pod's first
    address is IPv6) and the DNS servers (else read from resolv_conf when DNS capture needs them).
    """
    env = {} if env is None else env
    argv_values = parse_istio_argv(argv)
    texts: dict[str, tuple[str, str]] = {}  # Go field -> (text, label for errors)
    for field in FIELDS:
        for name in field.env:
            if name in env:
                texts[field.go] = (env[name], name)
        if field.go in argv_values:
            texts[field.go] = (argv_values[field.go], flag_label(field))
    if "ProxyUID" not in texts:
        user = env.get("ENVOY_USER", "istio-proxy")
        texts["ProxyUID"] = (default_proxy_uid(user), f"uid of user {user}")
    if "ProxyGID" not in texts:
        texts["ProxyGID"] = (texts["ProxyUID"][0], flag_label(BY_GO["ProxyGID"]))
    kwargs = _spec_kwargs(texts)
    kwargs["enable_ipv6"] = enable_ipv6
    kwargs.update(_dns_servers(kwargs, dns_servers, resolv_conf))
    return CaptureSpec(**kwargs)


def _spec_kwargs(texts: dict[str, tuple[str, str]]) -> dict:
    kwargs = {}
    for go, (text, label) in texts.items():
        field = BY_GO[go]
        value = field.parse(text, label)
        if field.attr is not None:
            kwargs[field.attr] = value
    return kwargs


def _dns_servers(kwargs, given: list[str] | None, resolv_conf: str) -> dict:
    """DNS servers: given explicitly, or, as istio-iptables does, the nameservers of
    resolv.conf, read only when --redirect-dns is on and --capture-all-dns is off."""
    if given is not None:
        servers = [s.parse_dns_server(text, "--dns-servers") for text in given]
    elif kwargs.get("redirect_dns") and not kwargs.get("capture_all_dns"):
        servers = [s.parse_dns_server(text, resolv_conf) for text in read_nameservers(resolv_conf)]
    else:
        servers = []
    return split_dns_servers(servers)


def split_dns_servers(servers: list[str]) -> dict[str, tuple[str, ...]]:
    """CaptureSpec keyword arguments for a mixed list of nameservers."""
    by_version = {4: [], 6: []}
    for server in servers:
        by_version[s.parse_address(server, "DNS server").version].append(server)
    return {"dns_servers_v4": tuple(by_version[4]), "dns_servers_v6": tuple(by_version[6])}


def read_nameservers(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise SpecError(path, path, f"cannot read resolv.conf: {error.strerror}") from None
    servers = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append(words[1])
    return servers


# ---------------------------------------------------------------------------
# 2. Istio's config as JSON (Go field names, e.g. the effective_config objects of cases.json)


def from_istio_config(config: Mapping[str, object]) -> CaptureSpec:
    if not isinstance(config, Mapping):
        raise SpecError("--istio-config", type(config).__name__, "expected a JSON object")
    texts: dict[str, tuple[str, str]] = {}
    for key, value in config.items():
        if key in DETECTED:
            continue
        if key in OTHER_GO_FIELDS:
            continue
        field = BY_GO.get(key)
        if field is None:
            raise SpecError(key, value, "unknown Istio config field")
        texts[key] = (_as_text(key, value), key)
    if "ProxyUID" not in texts:
        texts["ProxyUID"] = (default_proxy_uid(), "ProxyUID")
    if "ProxyGID" not in texts:
        texts["ProxyGID"] = (texts["ProxyUID"][0], "ProxyGID")
    kwargs = _spec_kwargs(texts)
    kwargs["enable_ipv6"] = s.parse_bool(config.get("EnableIPv6", False), "EnableIPv6")
    for key, version in (("DNSServersV4", 4), ("DNSServersV6", 6)):
        servers = config.get(key) or []
        if not isinstance(servers, list):
            raise SpecError(key, servers, "expected a list of addresses")
        addresses = tuple(s.parse_dns_server(str(text), key) for text in servers)
        for text in addresses:
            if s.parse_address(text, key).version != version:
                raise SpecError(key, text, f"not an IPv{version} address")
        kwargs[f"dns_servers_v{version}"] = addresses
    return CaptureSpec(**kwargs)


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


# ---------------------------------------------------------------------------
# 3. Pod annotations, as the istio-cni plugin reads them in sidecar mode


@dataclass(frozen=True)
class Annotation:
    key: str
    default: str
    parse: Callable[[str, str], object]


def _cni_mode(text, label):
    # istio-cni validates this annotation (unlike istio-iptables' -m): NONE pods never reach it.
    if text not in (s.REDIRECT, s.TPROXY):
        raise SpecError(label, text, "unknown annotation value (expected REDIRECT or TPROXY)")
    return text


# istio-cni's annotation registry (cni/pkg/plugin/sidecar_redirect.go) and its defaults.
ANNOTATIONS = {
    "redirectMode": Annotation("sidecar.istio.io/interceptionMode", "REDIRECT", _cni_mode),
    "includeIPCidrs": Annotation("traffic.sidecar.istio.io/includeOutboundIPRanges", "*", _cidrs_or_all),
    "excludeIPCidrs": Annotation("traffic.sidecar.istio.io/excludeOutboundIPRanges", "", _cidrs),
    "excludeInboundPorts": Annotation("traffic.sidecar.istio.io/excludeInboundPorts", str(c.MERGED_METRICS_PORT), _ports),
    "includeInboundPorts": Annotation("traffic.sidecar.istio.io/includeInboundPorts", "*", _ports_or_all),
    "excludeOutboundPorts": Annotation("traffic.sidecar.istio.io/excludeOutboundPorts", str(c.MERGED_METRICS_PORT),
                                       _ports),
    "includeOutboundPorts": Annotation("traffic.sidecar.istio.io/includeOutboundPorts", "", _ports),
    "excludeInterfaces": Annotation("traffic.sidecar.istio.io/excludeInterfaces", "", s.parse_interfaces),
    "rerouteVirtualInterfaces": Annotation("istio.io/reroute-virtual-interfaces", "", s.parse_interfaces),
    "kubevirtInterfaces": Annotation("traffic.sidecar.istio.io/kubevirtInterfaces", "", s.parse_interfaces),
    "statusPort": Annotation("status.sidecar.istio.io/port", "", _ports),
}
STATUS_ANNOTATION = "sidecar.istio.io/status"
# The sidecar always answers on these; istio-cni never captures them inbound.
CNI_EXCLUDED_INBOUND = (c.MERGED_METRICS_PORT, c.HEALTH_PORT, c.ENVOY_METRICS_PORT)
ANNOTATION_FILE_KEYS = ("annotations", "proxy_env", "proxy_runAsUser", "proxy_runAsGroup", "pod_ips")


@dataclass(frozen=True)
class AnnotatedPod:
    spec: CaptureSpec
    warnings: tuple[str, ...]


def from_annotations(document: Mapping[str, object]) -> AnnotatedPod:
    """istio-cni sidecar mode: annotations and the istio-proxy container's env/securityContext.

    Keys: annotations, proxy_env, proxy_runAsUser, proxy_runAsGroup and, optionally, pod_ips
    (the pod's addresses, from which istio-iptables would detect IPv6).
    """
    if not isinstance(document, Mapping):
        raise SpecError("--annotations", type(document).__name__, "expected a JSON object")
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
        return annotation.parse(annotations.get(annotation.key, annotation.default), annotation.key)

    value("statusPort")  # validated by istio-cni, though it does not change capture
    # istio-cni appends the sidecar's own ports to the annotation's, keeping the first of duplicates
    excluded_inbound = tuple(dict.fromkeys(value("excludeInboundPorts") + CNI_EXCLUDED_INBOUND))
    reroute_key = ANNOTATIONS["rerouteVirtualInterfaces"].key
    virt = value("rerouteVirtualInterfaces" if reroute_key in annotations else "kubevirtInterfaces")
    uid = _security_id(document, "proxy_runAsUser")
    gid = _security_id(document, "proxy_runAsGroup")
    dns = _env_bool(proxy_env, "ISTIO_META_DNS_CAPTURE")
    dual_stack = _env_bool(proxy_env, "ISTIO_DUAL_STACK")
    kwargs = dict(
        inbound_interception_mode=value("redirectMode"),
        proxy_uids=(uid or c.PROXY_UID,),
        proxy_gids=(gid or c.PROXY_GID,),
        outbound_ip_ranges_include=value("includeIPCidrs"),
        outbound_ip_ranges_exclude=value("excludeIPCidrs"),
        inbound_ports_include=value("includeInboundPorts"),
        inbound_ports_exclude=excluded_inbound,
        outbound_ports_exclude=value("excludeOutboundPorts"),
        outbound_ports_include=value("includeOutboundPorts"),
        exclude_interfaces=value("excludeInterfaces"),
        kube_virt_interfaces=virt,
        # istio-cni cannot know the pod's resolv.conf, so DNS capture means all port-53 traffic.
        redirect_dns=dns,
        capture_all_dns=dns,
        drop_invalid=_env_bool(proxy_env, "INVALID_DROP"),
        enable_ipv6=_detect_ipv6(document.get("pod_ips"), dual_stack),
    )
    return AnnotatedPod(CaptureSpec(**kwargs), tuple(warnings))


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
    return s.parse_id(value, key, "id")


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    return s.parse_bool(env[name], f"proxy_env {name}") if name in env else False


def _detect_ipv6(pod_ips, dual_stack: bool) -> bool:
    """istio-iptables' rule: the first non-loopback, non-link-local address decides;
    with dual-stack, any IPv6 one enables IPv6."""
    if pod_ips is None:
        return False
    if not isinstance(pod_ips, list):
        raise SpecError("pod_ips", pod_ips, "expected a list of addresses")
    usable = [a for a in (s.parse_address(str(t), "pod_ips") for t in pod_ips)
              if not a.is_loopback and not a.is_link_local]
    if dual_stack:
        return any(a.version == 6 for a in usable)
    return bool(usable) and usable[0].version == 6


# ---------------------------------------------------------------------------


def load_json(path: str, label: str) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as error:
        raise SpecError(label, path, f"cannot read file: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise SpecError(label, path, f"not valid JSON: {error.msg} at line {error.lineno}") from None


# ---------------------------------------------------------------------------
# One spec from whichever input a command was given


def spec_from_inputs(istio_args, istio_config, annotations, ipv6, dns_servers, resolv_conf):
    """One CaptureSpec from whichever input was given, plus warnings about ignored options."""
    given = [name for name, value in (("istio-iptables arguments", istio_args),
                                      ("--istio-config", istio_config),
                                      ("--annotations", annotations)) if value]
    if len(given) > 1:
        raise SpecError("input", ", ".join(given), "give only one of them")
    warnings: list[str] = []
    servers = None
    if dns_servers is not None:
        servers = [s.parse_dns_server(text, "--dns-servers") for text in s.split_list(dns_servers)]
    if istio_config or annotations:
        if istio_config:
            spec = from_istio_config(load_json(istio_config, "--istio-config"))
        else:
            pod = from_annotations(load_json(annotations, "--annotations"))
            spec, warnings = pod.spec, list(pod.warnings)
        if servers is not None:
            spec = spec.replace(**split_dns_servers(servers))
    else:
        spec = from_istio_args(istio_args, os.environ, dns_servers=servers, resolv_conf=resolv_conf)
    if ipv6 is not None:
        spec = spec.replace(enable_ipv6=ipv6)
    return spec, warnings + spec.warnings()
