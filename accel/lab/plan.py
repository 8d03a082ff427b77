"""What a lab is made of: its addresses (benchmarking and documentation ranges, with no way out
of the node namespace), the plan a test asks for, the pods it gets, and the error it raises."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..cgroup import Cgroup

NODE_V4, NODE_V6 = "198.18.0.1", "2001:db8:18::1"
POD_ADDRESSES = {
    "pod": ("198.18.0.10", "2001:db8:18::10"),
    "userns-pod": ("198.18.0.11", "2001:db8:18::11"),
    "v6-listener-pod": ("198.18.0.12", "2001:db8:18::12"),
    "remote": ("198.18.0.20", "2001:db8:18::20"),
    "dns": ("198.18.0.53", "2001:db8:18::53"),
}
OTHER_DNS = ("198.18.0.54", "2001:db8:18::54")  # a DNS server that is not the pod's resolver
SCALE_V4 = ipaddress.ip_network("198.18.64.0/18")  # the scale pods' subnet on the bridge, the node .1
SCALE_SIDECAR = """global
    nbthread 1
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend outbound
    bind :{outbound}
    default_backend original
frontend inbound
    bind :{inbound}
    default_backend original
backend original
    server s 0.0.0.0:0
"""
LAB_NETWORKS = ("198.18.0.0/24", "2001:db8:18::/64", str(SCALE_V4))


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class SidecarConfig:
    outbound_port: int
    inbound_port: int
    dns_port: int
    uid: int
    gid: int
    transparent: bool = False  # TPROXY: the inbound listener accepts for any address


@dataclass(frozen=True)
class MeshedPod:
    """A pod under test: app servers on the plan's pod ports and, if the plan has one, a sidecar."""

    role: str = "pod"
    userns: bool = False  # a user namespace of its own: its ids are others on the node
    inbound_families: tuple[int, ...] = (4, 6)  # the sidecar's inbound listeners


@dataclass(frozen=True)
class LabPlan:
    ipv6: bool = False
    pod_tcp_ports: tuple[int, ...] = (8080,)
    remote_tcp_ports: tuple[int, ...] = (8080,)
    remote_udp_ports: tuple[int, ...] = ()
    service_addresses: tuple[str, ...] = ()  # answered by the remote pod, routed by the node
    sidecar: SidecarConfig | None = None
    recording_agents: bool = True  # False: bare pods (pod, remote) for processes of one's own
    meshed: tuple[MeshedPod, ...] = (MeshedPod(),)
    pod_local_addresses: tuple[str, ...] = ()  # more addresses on the pod's lo (CIDRs)
    pod_dns_ports: tuple[int, ...] = ()  # DNS servers in the pods under test
    # More pods, cheap ones for node scale (scale-1, scale-2, ...): a namespace, a cgroup and a
    # minimal sidecar (HAProxy as the proxy uid on the outbound and inbound ports), from SCALE_V4.
    scale_pods: int = 0


@dataclass
class Pod:
    role: str
    netns: str
    cgroup: Cgroup
    ipv4: str
    ipv6: str | None
    node_cgroup: Cgroup | None = None  # the cgroup above every pod: where node-wide BPF attaches
    userns: bool = False  # processes of the pod live in the user namespace owning its netns

    def address(self, version: int) -> str | None:
        return self.ipv4 if version == 4 else self.ipv6
