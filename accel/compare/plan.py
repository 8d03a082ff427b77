"""The lab a comparison's cases need: which pods are meshed, the ports each pod serves, the
service addresses the node routes to the remote pod."""

from __future__ import annotations

import ipaddress

from .. import constants
from ..lab import POD_ADDRESSES, LabPlan, MeshedPod, SidecarConfig
from ..spec import CaptureSpec
from .case import APP_PORT, OTHER_APP_PORT, UDP_PORT, Case
from .destinations import ADDED_AFTER_APPLY, LAB_NETS, REMOVED_AFTER_APPLY


def _unmapped(text: str):
    """The address a destination really is: ::ffff:a.b.c.d is the IPv4 address a.b.c.d."""
    address = ipaddress.ip_address(text)
    return address.ipv4_mapped if address.version == 6 and address.ipv4_mapped else address


def lab_plan(spec: CaptureSpec, cases: list[Case], sidecar_ports: set[int]) -> LabPlan:
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
            and not any(address in lab for lab in LAB_NETS)
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
