"""Flows the packet tracer and the eBPF decision test both ask about: a pod's own address, a peer,
the passthrough source, an app's ids, and a grid of flows that meets every rule of a spec."""

from __future__ import annotations

import ipaddress
import itertools

from accel import constants as c
from accel.render import render_iptables, render_nftables
from accel.spec import WILDCARD, CaptureSpec
from accel.trace import Flow, IptablesTracer, NftablesTracer
from tests.reference import CASE_GROUPS

POD = {4: "10.1.0.5", 6: "fd00::5"}  # the pod's own address (reached over lo)
PEER = {4: "10.2.0.9", 6: "fd00:2::9"}  # another pod
PASSTHROUGH = c.INBOUND_PASSTHROUGH_SOURCE
APP = 1000  # the app's uid and gid
PROXY = c.PROXY_UID
EPHEMERAL = 40000


def out(dst, dport, *, uid=APP, gid=None, src=None, lo=None, **kw) -> Flow:
    """A locally generated connection; to the pod's own address or a loopback one it leaves by lo."""
    address = ipaddress.ip_address(dst)
    if lo is None:
        lo = address.is_loopback or dst in POD.values()
    if src is None:
        src = ("127.0.0.1" if address.version == 4 else "::1") if address.is_loopback else POD[address.version]
    return Flow(
        direction="outbound", src=src, dst=dst, dport=dport, uid=uid, gid=uid if gid is None else gid, lo=lo, **kw
    )


def proxy(dst, dport, **kw) -> Flow:
    return out(dst, dport, uid=PROXY, gid=c.PROXY_GID, **kw)


def inb(dport, *, dst=None, src=None, version=4, **kw) -> Flow:
    dst = dst or POD[version]
    version = ipaddress.ip_address(dst).version
    return Flow(direction="inbound", src=src or PEER[version], dst=dst, dport=dport, **kw)


def tracers(s: CaptureSpec) -> dict[str, IptablesTracer | NftablesTracer]:
    """The three renderings of a spec, parsed once."""
    return {
        "iptables": IptablesTracer(render_iptables(s).text, group_ids=CASE_GROUPS),
        "nftables": NftablesTracer(render_nftables(s), group_ids=CASE_GROUPS),
        "nftables-sets": NftablesTracer(render_nftables(s, sets=True), group_ids=CASE_GROUPS),
    }


def gids(s: CaptureSpec) -> list[int]:
    named = [] if s.owner_groups_include == WILDCARD else list(s.owner_groups_include)
    named += s.owner_groups_exclude
    return sorted({APP, *s.proxy_gids, *(int(g) if g.isdigit() else CASE_GROUPS[g] for g in named)})


def grid(s: CaptureSpec) -> list[Flow]:
    """Flows that meet every rule of the spec: its addresses, ports, ids and interfaces, and
    others; only of the families the pod has (see test_known_difference_ipv6_on_an_ipv4_pod)."""
    flows = []
    for version in (4, 6) if s.enable_ipv6 else (4,):
        remote = {4: ["10.96.0.10", "9.9.1.1", "192.168.1.1"], 6: ["fd00:96::10", "2001:db8::1"]}[version]
        cidrs = [] if s.outbound_ip_ranges_include == WILDCARD else list(s.outbound_ip_ranges_include)
        remote += [str(cidr.ip) for cidr in cidrs + list(s.outbound_ip_ranges_exclude) if cidr.version == version]
        remote += list(s.dns_servers_v4 if version == 4 else s.dns_servers_v6)
        # No IPv6 packet ever goes to an IPv4-mapped address: the kernel connects an IPv6 socket
        # to one over IPv4, where the IPv4 rules apply (test_compare's mapped cases run that).
        remote = [dst for dst in remote if version == 4 or ipaddress.IPv6Address(dst).ipv4_mapped is None]
        local = [POD[version], "127.0.0.1" if version == 4 else "::1"] + (["127.0.0.5"] if version == 4 else [])
        ports = sorted(
            {
                80,
                c.DNS_PORT,
                s.inbound_tunnel_port,
                s.proxy_port,
                c.ENVOY_METRICS_PORT,
                *s.outbound_ports_include,
                *s.outbound_ports_exclude,
                *s.inbound_ports_exclude,
                *(() if s.inbound_ports_include == WILDCARD else s.inbound_ports_include),
            }
        )
        owners = [(APP, APP), *((uid, APP) for uid in s.proxy_uids), *((APP, gid) for gid in gids(s) if gid != APP)]
        nics = [None, *(nic for nic in s.exclude_interfaces + s.kube_virt_interfaces if nic != "lo")]
        for dst, port, proto, (uid, gid) in itertools.product(remote + local, ports, ("tcp", "udp"), owners):
            loopback = ipaddress.ip_address(dst).is_loopback
            lo = dst in local or loopback
            for nic in [None] if lo else nics:
                flows.append(
                    Flow(
                        direction="outbound",
                        src=local[1] if loopback else local[0],
                        dst=dst,
                        dport=port,
                        protocol=proto,
                        uid=uid,
                        gid=gid,
                        lo=lo,
                        interface=None if lo else nic,
                    )
                )
        for uid in s.proxy_uids[:1]:
            flows += [out(POD[version], port, uid=uid, gid=APP, src=PASSTHROUGH[version], lo=True) for port in ports]
        for port, proto, nic in itertools.product(ports + [8080], ("tcp", "udp"), nics):
            flows.append(inb(port, dst=POD[version], protocol=proto, interface=nic))
            if not ipaddress.ip_address(remote[0]).is_loopback:
                flows.append(inb(port, dst=remote[0], protocol=proto, interface=nic))
        for port, mark, src in itertools.product(
            ports, (0, s.inbound_tproxy_mark, c.OUTBOUND_MARK), (POD[version], PASSTHROUGH[version])
        ):
            flows.append(inb(port, dst=POD[version], src=src, lo=True, mark=mark))
        for server in s.dns_servers_v4 if version == 4 else s.dns_servers_v6:
            loopback = ipaddress.ip_address(server).is_loopback
            flows.append(inb(EPHEMERAL, src=server, dst=POD[version], sport=c.DNS_PORT, protocol="udp", lo=loopback))
    return flows
