"""The eBPF backend's dry run: the programs it attaches and the map entries that configure a pod.

There are no rules to print: the programs are the same for every pod and every spec, and a spec
becomes entries in maps keyed by the pod's network-namespace cookie. This renders those entries,
built by the same function the backend uses (accel.ebpf.maps.pod_entries) and decoded back, so
what is printed is what would be written. Facts that only the pod's namespace can give (its
cookie, its addresses, its local routes) are filled in at apply and shown as placeholders.
"""

from __future__ import annotations

import ipaddress

from ..ebpf import maps
from ..ebpf.programs import PROGRAMS
from ..spec import CaptureSpec

FLAG_NAMES = {
    maps.IPV6: "ipv6",
    maps.DNS: "dns",
    maps.DNS_ALL: "dns-all",
    maps.OUT_ALL_V4: "outbound-all-v4",
    maps.OUT_ALL_V6: "outbound-all-v6",
    maps.INCLUDE_LO: "include-lo",
    maps.GROUPS_ALL: "groups-all",
    maps.IN_CAPTURE: "inbound-capture",
    maps.IN_ALL: "inbound-all",
    maps.TPROXY: "tproxy",
    maps.HAS_OUT_PORTS_EXCLUDE: "has-outbound-ports-exclude",
    maps.HAS_OUT_PORTS_INCLUDE: "has-outbound-ports-include",
    maps.HAS_OUT_EXCLUDE: "has-outbound-exclude",
    maps.HAS_OUT_INCLUDE: "has-outbound-include",
    maps.HAS_GROUPS_EXCLUDE: "has-groups-exclude",
    maps.HAS_IN_PORTS_EXCLUDE: "has-inbound-ports-exclude",
}
PORT_KINDS = {
    maps.PORT_OUT_EXCLUDE: "outbound-exclude",
    maps.PORT_OUT_INCLUDE: "outbound-include",
    maps.PORT_IN_EXCLUDE: "inbound-exclude",
    maps.PORT_IN_INCLUDE: "inbound-include",
}
GROUP_KINDS = {maps.GROUP_INCLUDE: "include", maps.GROUP_EXCLUDE: "exclude"}
PREFIX_KINDS = {
    maps.PREFIX_INCLUDE: "outbound-include",
    maps.PREFIX_EXCLUDE: "outbound-exclude",
    maps.PREFIX_LOCAL: "local",
    maps.PREFIX_DNS: "dns-server",
}
AT_APPLY = [
    "netns cookie: the key of the pod's entry, its sources, counters and local routes (SO_NETNS_COOKIE, "
    "read inside the pod)",
    "configuration id: the key of the list entries below, new for each apply, so a spec change swaps in one update",
    "proxy uids/gids and owner groups: mapped through the pod's user namespace, if it has one of its own",
    "sources: the address the pod's traffic to a remote destination takes (routing's answer), followed",
    "prefixes kind local: the pod's local routes, what it reaches over lo (table local), followed",
    "listeners: the proxy's inbound listening sockets (registered at apply, and by sockops on listen)",
]


def _ip(raw: bytes) -> str:
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped or address)


def _prefix(key: maps.PrefixKey) -> str:
    bits = key.prefixlen - maps.PREFIX_KEY_BITS
    address = ipaddress.IPv6Address(bytes(key.addr))
    if not key.kind & maps.PREFIX_V6:
        return str(ipaddress.ip_network(f"{address.ipv4_mapped}/{bits - 96}"))
    return str(ipaddress.ip_network(f"{address}/{bits}"))


def _v4(value: int) -> str:
    return str(ipaddress.IPv4Address(value.to_bytes(4, "little")))


def render_ebpf(spec: CaptureSpec) -> dict:
    """The programs and the decoded map entries for a pod with this spec (UnsupportedSpec if the
    eBPF backend refuses it)."""
    entries = maps.pod_entries(spec, 0)
    pod = entries.pod
    return {
        "programs": [{"name": p.name, "hook": p.hook, "attached_at": p.attached_at, "does": p.does} for p in PROGRAMS],
        "maps": {
            "pods": {
                "proxy_port": pod.proxy_port,
                "inbound_port": pod.inbound_port,
                "tunnel_port": pod.tunnel_port,
                "dns_port": pod.dns_port,
                "flags": [name for bit, name in FLAG_NAMES.items() if pod.flags & bit],
                "proxy_uids": list(pod.uids[: pod.n_uids]),
                "proxy_gids": list(pod.gids[: pod.n_gids]),
                "host_loopback": str(ipaddress.ip_network(f"{_v4(pod.loopback_v4)}/{_v4(pod.loopback_v4_mask)}")),
            },
            "ports": [{"kind": PORT_KINDS[k.kind], "port": k.port} for k in entries.ports],
            "groups": [{"kind": GROUP_KINDS[k.kind], "gid": k.gid} for k in entries.groups],
            "prefixes": [
                {"kind": PREFIX_KINDS[k.kind & ~maps.PREFIX_V6], "cidr": _prefix(k)} for k in entries.prefixes
            ],
        },
        "at_apply": AT_APPLY,
    }


def render_ebpf_text(spec: CaptureSpec) -> str:
    document = render_ebpf(spec)
    lines = ["# accel ebpf: no rules. These programs are attached once, shared by every pod:"]
    width = max(len(p["name"]) for p in document["programs"])
    hook_width = max(len(p["hook"]) for p in document["programs"])
    for program in document["programs"]:
        lines.append(
            f"#   {program['name']:<{width}}  {program['hook']:<{hook_width}}  at the "
            f"{program['attached_at']}: {program['does']}"
        )
    lines.append("# and this pod is these map entries, keyed by its network-namespace cookie:")
    pod = document["maps"]["pods"]
    lines.append(
        "pods " + " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in pod.items())
    )
    for name, field in (("ports", "port"), ("groups", "gid"), ("prefixes", "cidr")):
        kinds: dict[str, list[str]] = {}
        for entry in document["maps"][name]:
            kinds.setdefault(entry["kind"], []).append(str(entry[field]))
        for kind, values in kinds.items():
            lines.append(f"{name} {kind} {','.join(values)}")
    lines.append("# filled in at apply, from inside the pod:")
    lines += [f"#   {fact}" for fact in document["at_apply"]]
    return "\n".join(lines) + "\n"
