"""The traffic cases of a comparison, derived from the spec: what to send, from where, as whom.

Cases follow the reference's semantics (research/istio-capture.md, "Reading the result as a
first-match capture function"): each probes one rule of the capture, using destinations taken
from the spec itself (an address inside an included CIDR, inside an excluded one, outside the
include list, ...). Nothing here predicts the outcome: the cases are run and observed.
"""

from __future__ import annotations

import fnmatch
import grp
import ipaddress
from dataclasses import dataclass, replace

from .. import constants
from ..lab import LAB_NETWORKS, OTHER_DNS, POD_ADDRESSES, LabPlan, MeshedPod, SidecarConfig
from ..spec import WILDCARD, CaptureSpec

APP_PORT = 8080  # the app's port in every pod
OTHER_APP_PORT = 9090  # a second app port in the pod under test
UDP_PORT = 9999  # a UDP service that is not DNS
# Destinations for "a service address", tried in order within whatever the spec includes.
SERVICE_CANDIDATES = {
    4: ("203.0.113.10", "198.51.100.10", "192.0.2.10", "10.96.0.10", "100.64.0.10", "172.16.0.10"),
    6: ("2001:db8:5e::10", "2001:db8:5f::10", "fd00:5e::10"),
}
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
UNSPECIFIED = {4: "0.0.0.0", 6: "::"}
# An address the pod gets after capture is applied (on lo): local from then on, as for iptables.
ADDED_AFTER_APPLY = "198.18.0.14"
# An address the pod has when capture is applied and loses after: remote from then on (the remote
# pod answers it).
REMOVED_AFTER_APPLY = "203.0.113.77"
_LAB = [ipaddress.ip_network(n) for n in LAB_NETWORKS]


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    client: str  # the pod the request starts in: a pod under test ("pod", ...) or "remote"
    # tcp, tcp-send-close, tcp-fastopen, udp, dns-udp (connected socket), dns-udp-sendto(-connected), dns-tcp
    proto: str
    dst: str
    port: int
    uid: int
    gid: int
    bind: str | None = None
    first: tuple[str, str] | None = None  # what the client's socket does before: ("dns", server)
    late: bool = False  # the sidecar asks SO_ORIGINAL_DST only after the client has closed
    setup: tuple[tuple[str, ...], ...] = ()  # commands run in the client's pod just before
    become: tuple[tuple[int, int], ...] = ()  # identities the client takes after starting (as root)


def _address(version: int, role: str) -> str:
    return POD_ADDRESSES[role][0 if version == 4 else 1]


def _usable(address: ipaddress._BaseAddress, allow_loopback: bool) -> bool:
    if address.is_loopback:
        return allow_loopback
    return not (
        address.is_multicast
        or address.is_unspecified
        or address.is_link_local
        or address.is_reserved
        or any(address in lab for lab in _LAB)
        or (address.version == 4 and address in ipaddress.ip_network("0.0.0.0/8"))
    )


def _hosts(cidr) -> list[ipaddress._BaseAddress]:
    """A few addresses inside a CIDR: known service addresses first, then low hosts."""
    network = cidr.network
    picks = [ipaddress.ip_address(a) for a in SERVICE_CANDIDATES[network.version] if ipaddress.ip_address(a) in network]
    for offset in (10, 1):
        if offset < network.num_addresses:
            picks.append(network[offset])
    return picks + [cidr.ip]


def _excluded(spec: CaptureSpec, version: int, address) -> bool:
    return any(address in c.network for c in spec.outbound_exclude(version))


def _captured_by_cidr(spec: CaptureSpec, version: int, address) -> bool:
    include = spec.outbound_include(version)
    return (include == WILDCARD or any(address in c.network for c in include)) and not _excluded(spec, version, address)


def service_address(spec: CaptureSpec, version: int) -> str | None:
    """An address the spec captures by CIDR (-i), not excluded (-x)."""
    include = spec.outbound_include(version)
    if include == WILDCARD:
        candidates = [(ipaddress.ip_address(a), False) for a in SERVICE_CANDIDATES[version]]
    else:
        candidates = [(host, cidr.ip.is_loopback) for cidr in include for host in _hosts(cidr)]
    for address, loopback_ok in candidates:
        if _usable(address, loopback_ok) and not _excluded(spec, version, address):
            return str(address)
    return None


def outside_address(spec: CaptureSpec, version: int) -> str | None:
    """An address outside the include list (and not excluded): uncaptured unless a port says so."""
    include = spec.outbound_include(version)
    if include == WILDCARD:
        return None
    for text in SERVICE_CANDIDATES[version]:
        address = ipaddress.ip_address(text)
        if not any(address in c.network for c in include) and not _excluded(spec, version, address):
            return text
    return None


def excluded_address(spec: CaptureSpec, version: int) -> str | None:
    for cidr in spec.outbound_exclude(version):
        for address in _hosts(cidr):
            if _usable(address, allow_loopback=False):
                return str(address)
    return None


def _gid_of(group: str) -> int | None:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None  # the rules could not load either; the backends report that


def app_identity(spec: CaptureSpec) -> int:
    """The app's uid (and gid): one that no owner rule of the spec names."""
    named = set(spec.proxy_uids) | set(spec.proxy_gids)
    for groups in (spec.owner_groups_include, spec.owner_groups_exclude):
        if groups != WILDCARD:
            named |= {g for g in map(_gid_of, groups) if g is not None}
    return next(n for n in range(1000, 70000) if n not in named)


def derive(spec: CaptureSpec) -> tuple[list[Case], LabPlan]:
    """The cases for this spec, and the lab they need (ports, routed service addresses)."""
    app = app_identity(spec)
    proxy_uid, proxy_gid = spec.proxy_uids[0], spec.proxy_gids[0]
    sidecar_ports = {spec.proxy_port, spec.inbound_capture_port, constants.DNS_PROXY_PORT}
    cases: list[Case] = []

    def add(name, description, dst, port, *, client="pod", proto="tcp", uid=app, gid=app, bind=None, **more):
        cases.append(Case(name, description, client, proto, dst, port, uid, gid, bind, **more))

    versions = (4, 6) if spec.enable_ipv6 else (4,)
    for version in versions:
        v = "" if version == 4 else "-v6"
        first = version == 4  # cases that do not depend on the IP version run once
        pod_ip, loopback = _address(version, "pod"), LOOPBACK[version]
        service, outside = service_address(spec, version), outside_address(spec, version)
        excluded = excluded_address(spec, version)
        anywhere = service or outside or _address(version, "remote")

        if service:
            add(f"outbound-service{v}", "app to an address in the captured CIDRs (-i)", service, APP_PORT)
        if excluded:
            add(f"outbound-excluded-cidr{v}", "app to an address in an excluded CIDR (-x)", excluded, APP_PORT)
        if outside:
            add(f"outbound-outside-include{v}", "app to an address outside the include list (-i)", outside, APP_PORT)
        if spec.outbound_ports_exclude:
            add(
                f"outbound-excluded-port{v}",
                "app to an excluded outbound port (-o)",
                anywhere,
                spec.outbound_ports_exclude[0],
            )
        if spec.outbound_ports_include:
            add(
                f"outbound-included-port{v}",
                "app to an included outbound port (-q) outside the CIDRs",
                outside or anywhere,
                spec.outbound_ports_include[0],
            )
        for uid in spec.proxy_uids:
            add(
                f"outbound-as-proxy-uid-{uid}{v}",
                f"uid {uid} (a proxy uid, -u) to a service",
                anywhere,
                APP_PORT,
                uid=uid,
            )
        for gid in spec.proxy_gids:
            add(
                f"outbound-as-proxy-gid-{gid}{v}",
                f"gid {gid} (a proxy gid, -g) to a service",
                anywhere,
                APP_PORT,
                gid=gid,
            )
        if first and 0 not in spec.proxy_uids + spec.proxy_gids:
            add("outbound-as-root", "root to a service", anywhere, APP_PORT, uid=0, gid=0)
        if first and spec.owner_groups_include == WILDCARD and spec.owner_groups_exclude:
            gid = next((g for g in map(_gid_of, spec.owner_groups_exclude) if g is not None), None)
            if gid is not None:
                add(
                    "outbound-excluded-owner-group",
                    f"gid {gid}, an excluded owner group, to a service",
                    anywhere,
                    APP_PORT,
                    gid=gid,
                )
        if first and spec.owner_groups_include != WILDCARD:
            gid = next((g for g in map(_gid_of, spec.owner_groups_include) if g is not None), None)
            if gid is not None:
                add(
                    "outbound-included-owner-group",
                    f"gid {gid}, an included owner group, to a service",
                    anywhere,
                    APP_PORT,
                    gid=gid,
                )
            add(
                "outbound-other-owner-group", f"gid {app}, in no included owner group, to a service", anywhere, APP_PORT
            )
        add(f"outbound-localhost{v}", f"app to {loopback}", loopback, APP_PORT)
        if first:
            add("outbound-loopback-other", "app to 127.0.0.2, loopback but not 127.0.0.1", "127.0.0.2", APP_PORT)
        add(f"outbound-own-pod-ip{v}", "app to its own pod address (over lo)", pod_ip, APP_PORT)
        add(
            f"proxy-to-app-over-lo{v}",
            "the proxy uid to the pod address (inbound delivery)",
            pod_ip,
            APP_PORT,
            uid=proxy_uid,
            gid=proxy_gid,
        )
        add(
            f"inbound-passthrough-source{v}",
            f"the proxy uid from {constants.INBOUND_PASSTHROUGH_SOURCE[version]} to the pod",
            pod_ip,
            APP_PORT,
            uid=proxy_uid,
            gid=proxy_gid,
            bind=constants.INBOUND_PASSTHROUGH_SOURCE[version],
        )
        # TPROXY's hairpin marks a local connection by uid or gid, where nat asks the uid first
        # (found by tests/integration/test_decision.py)
        if proxy_gid != app:
            add(
                f"proxy-gid-to-app-over-lo{v}",
                f"the app's uid with the proxy's gid {proxy_gid} to the pod address",
                pod_ip,
                APP_PORT,
                gid=proxy_gid,
            )
        add(
            f"proxy-to-tunnel-port-over-lo{v}",
            f"the proxy uid to the pod address on the tunnel port {spec.inbound_tunnel_port}",
            pod_ip,
            spec.inbound_tunnel_port,
            uid=proxy_uid,
            gid=proxy_gid,
        )

        add(f"inbound-app-port{v}", "remote pod to an app port", pod_ip, APP_PORT, client="remote")
        for port in spec.inbound_ports_exclude[:5] if first else spec.inbound_ports_exclude[:1]:
            if port not in sidecar_ports:
                add(
                    f"inbound-excluded-port-{port}{v}",
                    f"remote pod to excluded inbound port {port} (-d)",
                    pod_ip,
                    port,
                    client="remote",
                )
        if spec.inbound_ports_include not in (WILDCARD, ()):
            for port in spec.inbound_ports_include[:2] if first else spec.inbound_ports_include[:1]:
                if port not in sidecar_ports:
                    add(
                        f"inbound-included-port-{port}{v}",
                        f"remote pod to included inbound port {port} (-b)",
                        pod_ip,
                        port,
                        client="remote",
                    )
            other = next(p for p in (OTHER_APP_PORT, APP_PORT, 9091, 9092) if p not in spec.inbound_ports_include)
            add(
                f"inbound-outside-include{v}",
                f"remote pod to port {other}, not in the inbound list (-b)",
                pod_ip,
                other,
                client="remote",
            )
        add(
            f"inbound-tunnel-port{v}",
            f"remote pod to the tunnel port {spec.inbound_tunnel_port} (-e)",
            pod_ip,
            spec.inbound_tunnel_port,
            client="remote",
        )

        resolver = _address(version, "dns")
        add(f"dns-udp{v}", "DNS over UDP to the pod's resolver (connected socket)", resolver, 53, proto="dns-udp")
        add(f"dns-tcp{v}", "DNS over TCP to the pod's resolver", resolver, 53, proto="dns-tcp")
        if first:
            add(
                "dns-udp-sendto",
                "DNS over UDP to the resolver, destination per datagram (sendto)",
                resolver,
                53,
                proto="dns-udp-sendto",
            )
            add(
                "dns-udp-other-server", "DNS over UDP to a server not in resolv.conf", OTHER_DNS[0], 53, proto="dns-udp"
            )
            add(
                "dns-tcp-other-server", "DNS over TCP to a server not in resolv.conf", OTHER_DNS[0], 53, proto="dns-tcp"
            )
            udp_target = anywhere if not ipaddress.ip_address(anywhere).is_loopback else _address(4, "remote")
            add("udp-not-dns", f"app to UDP port {UDP_PORT} (not DNS)", udp_target, UDP_PORT, proto="udp")
            # An IPv6 socket talking to an IPv4 address (::ffff:a.b.c.d) sends IPv4: the IPv4 rules apply.
            add(
                "outbound-service-mapped",
                "app, through an IPv6 socket, to an IPv4-mapped service address",
                f"::ffff:{anywhere}",
                APP_PORT,
            )
            add(
                "outbound-own-pod-ip-mapped",
                "app, through an IPv6 socket, to its own IPv4-mapped address",
                f"::ffff:{pod_ip}",
                APP_PORT,
            )
            add(
                "dns-udp-sendto-mapped",
                "DNS over UDP to the IPv4-mapped resolver (sendto, IPv6 socket)",
                f"::ffff:{resolver}",
                53,
                proto="dns-udp-sendto",
            )
            add(
                "dns-tcp-mapped",
                "DNS over TCP to the IPv4-mapped resolver (IPv6 socket)",
                f"::ffff:{resolver}",
                53,
                proto="dns-tcp",
            )

        # What only a real proxy's view shows (issue: the datapath must never misroute):
        if service:
            add(
                f"outbound-send-close{v}",
                "app to a service: sends its request and closes at once",
                service,
                APP_PORT,
                proto="tcp-send-close",
            )
            if first:
                add(
                    "outbound-send-close-late",
                    "app sends and closes before the proxy asks for the original destination",
                    service,
                    APP_PORT,
                    proto="tcp-send-close",
                    late=True,
                )
        # Ways around the capture (issue: no bypass), each as iptables sees it:
        if service:
            add(
                f"outbound-after-dropping-from-proxy-uid{v}",
                f"a process started as the proxy's uid {proxy_uid} that became the app's, then connects",
                service,
                APP_PORT,
                uid=0,
                gid=0,
                become=((proxy_uid, proxy_gid), (app, app)),
            )
            add(
                f"outbound-bound-to-passthrough-source{v}",
                f"app bound to {constants.INBOUND_PASSTHROUGH_SOURCE[version]} "
                "(the proxy's passthrough source) to a service, not over lo",
                service,
                APP_PORT,
                bind=constants.INBOUND_PASSTHROUGH_SOURCE[version],
            )
            add(
                f"outbound-second-connect-after-a-failure{v}",
                f"app connects a socket whose connect to {loopback}:1 was refused",
                service,
                APP_PORT,
                first=("connect", f"[{loopback}]:1" if version == 6 else f"{loopback}:1"),
            )
            add(
                f"outbound-tcp-fast-open{v}",
                "app to a service with sendto(MSG_FASTOPEN): the connect inside the send",
                service,
                APP_PORT,
                proto="tcp-fastopen",
            )
        add(
            f"outbound-own-pod-ip-inbound-port{v}",
            f"app to its own address on the inbound capture port {spec.inbound_capture_port}",
            pod_ip,
            spec.inbound_capture_port,
        )
        if first:
            add(
                "dns-udp-sendto-on-a-connected-socket",
                "DNS over UDP with sendto on a socket connected elsewhere",
                resolver,
                53,
                proto="dns-udp-sendto-connected",
            )
        add(
            f"outbound-unspecified{v}",
            f"app to {UNSPECIFIED[version]} (the kernel connects it to itself)",
            UNSPECIFIED[version],
            APP_PORT,
        )
        add(
            f"app-dials-proxy-port{v}",
            f"app to {loopback}:{spec.proxy_port}, the proxy itself (never redirected)",
            loopback,
            spec.proxy_port,
        )
        if spec.dns_capture and spec.capture_all_dns:
            add(
                f"dns-udp-sendto-from-passthrough{v}",
                f"DNS over UDP from {constants.INBOUND_PASSTHROUGH_SOURCE[version]} to the pod's "
                "own address (lo, from the inbound passthrough source)",
                pod_ip,
                53,
                proto="dns-udp-sendto",
                bind=constants.INBOUND_PASSTHROUGH_SOURCE[version],
            )
        if first:
            add(
                "outbound-unspecified-mapped",
                "app, through an IPv6 socket, to ::ffff:0.0.0.0",
                "::ffff:0.0.0.0",
                APP_PORT,
            )
            add("proxy-to-unspecified", "the proxy uid to 0.0.0.0", "0.0.0.0", APP_PORT, uid=proxy_uid, gid=proxy_gid)
            setup = (("ip", "address", "add", f"{ADDED_AFTER_APPLY}/32", "dev", "lo"),)
            add(
                "outbound-address-added-after-apply",
                "app to an address the pod got after capture was applied",
                ADDED_AFTER_APPLY,
                APP_PORT,
                setup=setup,
            )
            add(
                "proxy-to-address-added-after-apply",
                "the proxy uid to that address",
                ADDED_AFTER_APPLY,
                APP_PORT,
                uid=proxy_uid,
                gid=proxy_gid,
            )
            if _captured_by_cidr(spec, 4, ipaddress.ip_address(REMOVED_AFTER_APPLY)):
                add(
                    "outbound-address-removed-after-apply",
                    "app to an address the pod lost after capture was applied (now the remote pod's)",
                    REMOVED_AFTER_APPLY,
                    APP_PORT,
                    setup=(("ip", "address", "del", f"{REMOVED_AFTER_APPLY}/32", "dev", "lo"),),
                )
            if spec.dns_capture:
                add(
                    "udp-after-dns",
                    f"app sends a DNS query, then connects the same UDP socket to port {UDP_PORT}",
                    udp_target,
                    UDP_PORT,
                    proto="udp",
                    first=("dns", resolver),
                )
                add(
                    "udplite-to-53",
                    "app to the resolver's port 53 over UDP-Lite (not UDP to the rules)",
                    resolver,
                    53,
                    proto="udplite",
                )

    if spec.captures_inbound and not spec.tproxy and _captures_inbound_port(spec, APP_PORT):
        # REDIRECT to a port nobody listens on is refused; TPROXY without a listener drops instead
        add(
            "inbound-ipv6-only-listener",
            "remote pod over IPv4 to a pod whose proxy listens inbound on IPv6 only",
            _address(4, "v6-listener-pod"),
            APP_PORT,
            client="remote",
        )
    # a pod in a user namespace of its own (hostUsers: false): its uid 1337 is another uid on the node
    for case in [c for c in cases if c.name in USERNS_CASES]:
        cases.append(_in_userns_pod(case))
    return cases, _plan(spec, cases, sidecar_ports)


# The cases repeated for a pod in a user namespace of its own.
USERNS_CASES = (
    "outbound-service",
    "outbound-as-proxy-uid-1337",
    "outbound-as-proxy-gid-1337",
    "outbound-own-pod-ip",
    "proxy-to-app-over-lo",
    "inbound-passthrough-source",
    "inbound-app-port",
    "dns-tcp",
    "outbound-excluded-cidr",
    "outbound-included-owner-group",
)


def _in_userns_pod(case: Case) -> Case:
    moved = {POD_ADDRESSES["pod"][i]: POD_ADDRESSES["userns-pod"][i] for i in (0, 1)}
    return Case(
        f"userns-{case.name}",
        f"in a pod with its own user namespace: {case.description}",
        "userns-pod" if case.client == "pod" else case.client,
        case.proto,
        moved.get(case.dst, case.dst),
        case.port,
        case.uid,
        case.gid,
        case.bind,
        case.first,
        case.late,
        case.setup,
        case.become,
    )


def _captures_inbound_port(spec: CaptureSpec, port: int) -> bool:
    if spec.inbound_ports_include == WILDCARD:
        return port not in spec.inbound_ports_exclude
    return port in spec.inbound_ports_include


def _unmapped(text: str):
    """The address a destination really is: ::ffff:a.b.c.d is the IPv4 address a.b.c.d."""
    address = ipaddress.ip_address(text)
    return address.ipv4_mapped if address.version == 6 and address.ipv4_mapped else address


def select(cases: list[Case], patterns: tuple[str, ...]) -> list[Case]:
    """The cases whose names match any of the shell-style patterns, in their order. Each chosen
    case runs after every setup of the cases before it, so it meets the pod as it would in the
    full run. A pattern that matches no case is a ValueError naming it."""
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(c.name, p) for c in cases)]
    if unmatched:
        raise ValueError(f"{unmatched[0]!r} matches no case (accel compare --list-cases shows them)")
    chosen, pending = [], ()
    for case in cases:
        pending += case.setup
        if any(fnmatch.fnmatchcase(case.name, p) for p in patterns):
            chosen.append(replace(case, setup=pending))
            pending = ()
    return chosen


def _plan(spec: CaptureSpec, cases: list[Case], sidecar_ports: set[int]) -> LabPlan:
    pod_ports, remote_ports, services = {APP_PORT, OTHER_APP_PORT}, {APP_PORT}, set()
    meshed = (
        {"pod"}
        | {c.client for c in cases if c.client != "remote"}
        | {role for c in cases if c.client == "remote" for role in MESHED_ROLES if c.dst in POD_ADDRESSES[role]}
    )
    pod_addresses = {ipaddress.ip_address(a) for role in meshed for a in POD_ADDRESSES[role]}
    pod_addresses.add(ipaddress.ip_address(ADDED_AFTER_APPLY))
    for case in cases:
        if case.proto not in ("tcp", "tcp-send-close", "tcp-fastopen"):
            continue
        address = _unmapped(case.dst)
        if case.client == "remote" or address.is_loopback or address.is_unspecified:
            pod_ports.add(case.port)
        elif address not in pod_addresses:
            remote_ports.add(case.port)
    for case in cases:
        address = _unmapped(case.dst)
        if (
            case.client != "remote"
            and not (address.is_loopback or address.is_unspecified)
            and not any(address in lab for lab in _LAB)
        ):
            services.add(str(address))
    removed = any(c.name == "outbound-address-removed-after-apply" for c in cases)
    return LabPlan(
        ipv6=spec.enable_ipv6,
        pod_tcp_ports=tuple(sorted(pod_ports - sidecar_ports)),
        remote_tcp_ports=tuple(sorted(remote_ports)),
        remote_udp_ports=(UDP_PORT,),
        service_addresses=tuple(sorted(services)),
        sidecar=SidecarConfig(
            spec.proxy_port,
            spec.inbound_capture_port,
            constants.DNS_PROXY_PORT,
            spec.proxy_uids[0],
            spec.proxy_gids[0],
            transparent=spec.tproxy,
        ),
        meshed=tuple(MESHED_ROLES[role] for role in MESHED_ROLES if role in meshed),
        pod_local_addresses=(f"{REMOVED_AFTER_APPLY}/32",) if removed else (),
        pod_dns_ports=(53,) if any(c.name.startswith("dns-udp-sendto-from-passthrough") for c in cases) else (),
    )


# The pods under test a comparison may use, by role.
MESHED_ROLES = {
    "pod": MeshedPod("pod"),
    "userns-pod": MeshedPod("userns-pod", userns=True),
    "v6-listener-pod": MeshedPod("v6-listener-pod", inbound_families=(6,)),
}
