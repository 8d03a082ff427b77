"""The families of cases derive() runs for each IP version, in order: each probes one part of the
capture, built from one Round's facts. Their order is the cases' order, which select relies on (a
case runs after every setup before it).
"""

from __future__ import annotations

import ipaddress

from .. import constants
from ..lab import OTHER_DNS
from ..spec import WILDCARD
from .case import APP_PORT, OTHER_APP_PORT, UDP_PORT
from .destinations import ADDED_AFTER_APPLY, REMOVED_AFTER_APPLY, UNSPECIFIED, captured_by_cidr
from .identities import gid_of
from .rounds import Round


def _outbound_destinations(r: Round):
    """App traffic by destination: in -i, in -x, outside -i; to an -o or a -q port."""
    spec, add, v, service, outside = r.spec, r.add, r.v, r.service, r.outside
    excluded, anywhere = r.excluded, r.anywhere
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


def _proxy_identities(r: Round):
    """Traffic of the proxy's uids and gids (-u, -g), and root's."""
    spec, add, v, first, anywhere = r.spec, r.add, r.v, r.first, r.anywhere
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


def _owner_groups(r: Round):
    """Traffic of an excluded, an included and no owner group (ISTIO_OUTBOUND_OWNER_GROUPS)."""
    spec, add, first, app, anywhere = r.spec, r.add, r.first, r.app, r.anywhere
    if first and spec.owner_groups_include == WILDCARD and spec.owner_groups_exclude:
        gid = next((g for g in map(gid_of, spec.owner_groups_exclude) if g is not None), None)
        if gid is not None:
            add(
                "outbound-excluded-owner-group",
                f"gid {gid}, an excluded owner group, to a service",
                anywhere,
                APP_PORT,
                gid=gid,
            )
    if first and spec.owner_groups_include != WILDCARD:
        gid = next((g for g in map(gid_of, spec.owner_groups_include) if g is not None), None)
        if gid is not None:
            add(
                "outbound-included-owner-group",
                f"gid {gid}, an included owner group, to a service",
                anywhere,
                APP_PORT,
                gid=gid,
            )
        add("outbound-other-owner-group", f"gid {app}, in no included owner group, to a service", anywhere, APP_PORT)


def _over_lo(r: Round):
    """Traffic over lo: to loopback addresses and the pod's own, from the app and from the proxy."""
    spec, add, v, first, app = r.spec, r.add, r.v, r.first, r.app
    version, proxy_uid, proxy_gid, pod_ip, loopback = r.version, r.proxy_uid, r.proxy_gid, r.pod_ip, r.loopback
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


def _inbound(r: Round):
    """Inbound from the remote pod: an app port, the -d, -b and other ports, the tunnel port."""
    spec, add, v, first, pod_ip = r.spec, r.add, r.v, r.first, r.pod_ip
    sidecar_ports = r.sidecar_ports
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
    if spec.inbound_ports_include != WILDCARD and spec.inbound_ports_include != ():
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


def _dns_and_udp(r: Round):
    """DNS over UDP and TCP, to the pod's resolver and to another server; UDP that is not DNS."""
    add, v, first, resolver, udp_target = r.add, r.v, r.first, r.resolver, r.udp_target
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
        add("dns-udp-other-server", "DNS over UDP to a server not in resolv.conf", OTHER_DNS[0], 53, proto="dns-udp")
        add("dns-tcp-other-server", "DNS over TCP to a server not in resolv.conf", OTHER_DNS[0], 53, proto="dns-tcp")
        add("udp-not-dns", f"app to UDP port {UDP_PORT} (not DNS)", udp_target, UDP_PORT, proto="udp")


def _ipv4_mapped(r: Round):
    """IPv4 traffic from IPv6 sockets (IPv4-mapped destinations): the IPv4 rules apply."""
    add, first, pod_ip, anywhere, resolver = r.add, r.first, r.pod_ip, r.anywhere, r.resolver
    if first:
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


def _proxy_view(r: Round):
    """What only a real proxy's view shows (issue: the datapath must never misroute)."""
    add, v, first, service = r.add, r.v, r.first, r.service
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


def _bypasses(r: Round):
    """Ways around the capture (issue: no bypass), each as iptables sees it."""
    spec, add, v, first, app = r.spec, r.add, r.v, r.first, r.app
    version, proxy_uid, proxy_gid, pod_ip, loopback = r.version, r.proxy_uid, r.proxy_gid, r.pod_ip, r.loopback
    service, resolver = r.service, r.resolver
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


def _addresses_changed_after_apply(r: Round):
    """Addresses the pod gains or loses after capture is applied."""
    spec, add, first, proxy_uid, proxy_gid = r.spec, r.add, r.first, r.proxy_uid, r.proxy_gid
    if first:
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
        if captured_by_cidr(spec, 4, ipaddress.ip_address(REMOVED_AFTER_APPLY)):
            add(
                "outbound-address-removed-after-apply",
                "app to an address the pod lost after capture was applied (now the remote pod's)",
                REMOVED_AFTER_APPLY,
                APP_PORT,
                setup=(("ip", "address", "del", f"{REMOVED_AFTER_APPLY}/32", "dev", "lo"),),
            )


def _dns_bypasses(r: Round):
    """Ways around DNS capture: a DNS socket reused for other UDP, UDP-Lite to port 53."""
    spec, add, first, resolver, udp_target = r.spec, r.add, r.first, r.resolver, r.udp_target
    if first and spec.dns_capture:
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


# Every family, in the order their cases run.
FAMILIES = (
    _outbound_destinations,
    _proxy_identities,
    _owner_groups,
    _over_lo,
    _inbound,
    _dns_and_udp,
    _ipv4_mapped,
    _proxy_view,
    _bypasses,
    _addresses_changed_after_apply,
    _dns_bypasses,
)
