"""The eBPF datapath's maps as Python sees them: ctypes mirrors of bpf/accel.h, and what configures
one pod: its spec as entries keyed by a configuration id, and the facts of its network namespace
(local routes, source addresses) keyed by the namespace's cookie. Pure: no kernel needed, so
unit-tested.

The mirrors must match bpf/accel.h field for field; the datapath checks them, member by member,
against the compiled object's BTF when it loads.
"""

from __future__ import annotations

import ctypes
import grp
import ipaddress
import secrets
import sys
from dataclasses import dataclass, field

from .. import constants
from ..spec import WILDCARD, CaptureSpec
from ..userns import IDENTITY, IdMap

MAX_IDS = 8
# A captured TCP connect goes to the proxy on one of ports 1..SPREAD_PORTS, by its original
# destination (bpf/accel.h, spread_port): destinations keep port spaces of their own.
SPREAD_PORTS = 1023

# accel_pod.flags
IPV6 = 1 << 0
DNS = 1 << 1
DNS_ALL = 1 << 2
OUT_ALL_V4 = 1 << 3
OUT_ALL_V6 = 1 << 4
INCLUDE_LO = 1 << 5
GROUPS_ALL = 1 << 6
IN_CAPTURE = 1 << 7
IN_ALL = 1 << 8
TPROXY = 1 << 9
# which lists are not empty (the programs skip lookups in empty ones)
HAS_OUT_PORTS_EXCLUDE = 1 << 10
HAS_OUT_PORTS_INCLUDE = 1 << 11
HAS_OUT_EXCLUDE = 1 << 12
HAS_OUT_INCLUDE = 1 << 13
HAS_GROUPS_EXCLUDE = 1 << 14
HAS_IN_PORTS_EXCLUDE = 1 << 15
SHORTCUT = 1 << 16

PORT_OUT_EXCLUDE, PORT_OUT_INCLUDE, PORT_IN_EXCLUDE, PORT_IN_INCLUDE = 1, 2, 3, 4
GROUP_INCLUDE, GROUP_EXCLUDE = 1, 2
PREFIX_INCLUDE, PREFIX_EXCLUDE, PREFIX_LOCAL, PREFIX_DNS = 1, 2, 3, 4
PREFIX_V6 = 0x80  # in the kind byte: an IPv6 prefix never covers an IPv4(-mapped) address
PREFIX_KEY_BITS = 64 + 8
SOURCE_HAS_V4, SOURCE_HAS_V6 = 1 << 0, 1 << 1
ORIGIN_OUTBOUND, ORIGIN_INBOUND, ORIGIN_DNS, ORIGIN_LOST = 1, 2, 3, 4
ROLE_APP, ROLE_PROXY = 1, 2
AF_INET, AF_INET6 = 2, 10
# bpf/inbound.c's placeholder for the pod's netns cookie, replaced in each pod's copy
POD_NETNS_PLACEHOLDER = 0x6163636C6E65746E

U8x16 = ctypes.c_uint8 * 16


class Pod(ctypes.Structure):
    _fields_ = [
        ("config", ctypes.c_uint64),
        ("proxy_port", ctypes.c_uint16),
        ("inbound_port", ctypes.c_uint16),
        ("tunnel_port", ctypes.c_uint16),
        ("dns_port", ctypes.c_uint16),
        ("flags", ctypes.c_uint32),
        ("loopback_v4", ctypes.c_uint32),
        ("loopback_v4_mask", ctypes.c_uint32),
        ("uids", ctypes.c_uint32 * MAX_IDS),
        ("gids", ctypes.c_uint32 * MAX_IDS),
        ("n_uids", ctypes.c_uint8),
        ("n_gids", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
        ("tproxy_mark", ctypes.c_uint32),
        ("pad2", ctypes.c_uint32),
    ]


class PortKey(ctypes.Structure):
    _fields_ = [
        ("config", ctypes.c_uint64),
        ("port", ctypes.c_uint16),
        ("kind", ctypes.c_uint16),
        ("pad", ctypes.c_uint32),
    ]


class GroupKey(ctypes.Structure):
    _fields_ = [("config", ctypes.c_uint64), ("gid", ctypes.c_uint32), ("kind", ctypes.c_uint32)]


class PrefixKey(ctypes.Structure):
    _pack_ = 1
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("owner", ctypes.c_uint8 * 8),
        ("kind", ctypes.c_uint8),
        ("addr", U8x16),
    ]


class Sources(ctypes.Structure):
    _fields_ = [("v4", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("v6", U8x16)]


class Origin(ctypes.Structure):
    _fields_ = [
        ("addr", U8x16),
        ("port", ctypes.c_uint16),
        ("kind", ctypes.c_uint8),
        ("role", ctypes.c_uint8),
        ("shortcut", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class Tuple(ctypes.Structure):
    _fields_ = [
        ("netns", ctypes.c_uint64),
        ("local", U8x16),
        ("remote", U8x16),
        ("local_port", ctypes.c_uint16),
        ("remote_port", ctypes.c_uint16),
        ("pad", ctypes.c_uint32),
    ]


class ListenerKey(ctypes.Structure):
    _fields_ = [
        ("netns", ctypes.c_uint64),
        ("family", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


# What the programs count per pod and per CPU (bpf/accel.h explains each).
COUNTERS = (
    "outbound",
    "inbound",
    "dns",
    "passed",
    "refused",
    "no_memory",
    "handoff_failed",
    "lost",
    "foreign_listener",
)


class Counters(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in COUNTERS]


# What the short-circuit carried per pod and per CPU (accel_shortcut_counters).
SHORTCUT_COUNTERS = ("messages", "bytes")


class ShortcutCounters(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in SHORTCUT_COUNTERS]


# map name -> (key type, value type), checked against the compiled object's BTF. socket_origins
# is keyed by a socket (an fd from userspace), so only its value is a mirror; the per-CPU
# `counters` hold one value per CPU.
MIRRORS = {
    "pods": (ctypes.c_uint64, Pod),
    "ports": (PortKey, ctypes.c_uint8),
    "groups": (GroupKey, ctypes.c_uint8),
    "prefixes": (PrefixKey, ctypes.c_uint8),
    "sources": (ctypes.c_uint64, Sources),
    "counters": (ctypes.c_uint64, Counters),
    "shortcut_counters": (ctypes.c_uint64, ShortcutCounters),
    "shortcut_states": (ctypes.c_int, ctypes.c_uint8),
    "socket_origins": (ctypes.c_int, Origin),
    "handoffs": (Tuple, Origin),
    "lost": (Tuple, ctypes.c_uint8),  # the ORIGIN_* kind of the record it stands for
}
# struct name -> mirror, for the keys of maps that have no BTF of their own (`listeners`, a
# hand-declared sockhash): checked against the struct of that name in the compiled object's BTF.
STRUCT_MIRRORS = {
    "accel_listener_key": ListenerKey,
}


class UnsupportedSpec(ValueError):
    """A spec option the eBPF datapath cannot reproduce exactly (use the nftables backend)."""


def mapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16 bytes, IPv4 as IPv4-mapped IPv6, as the programs keep every address."""
    if address.version == 4:
        return bytes(10) + b"\xff\xff" + address.packed
    return address.packed


def _network_u32(address: ipaddress.IPv4Address) -> int:
    """A u32 whose memory holds the address in network byte order, as the C side reads it."""
    return int.from_bytes(address.packed, sys.byteorder)


def _prefix(owner: int, kind: int, network) -> PrefixKey:
    bits = network.prefixlen + (96 if network.version == 4 else 0)
    return PrefixKey(
        prefixlen=PREFIX_KEY_BITS + bits,
        owner=(ctypes.c_uint8 * 8)(*owner.to_bytes(8, sys.byteorder)),
        kind=kind | (PREFIX_V6 if network.version == 6 else 0),
        addr=U8x16(*mapped(network.network_address)),
    )


def new_config_id() -> int:
    """A node-unique id for one configuration of one pod: its list entries carry it, so a spec
    change writes the new lists beside the old and swaps the pod's entry in one update."""
    return secrets.randbits(63) | 1 << 62  # never 0, and never a small netns cookie


@dataclass
class PodEntries:
    """The spec of one pod: its entry in `pods`, and its list entries."""

    config: int
    pod: Pod
    ports: list[PortKey] = field(default_factory=list)
    groups: list[GroupKey] = field(default_factory=list)
    prefixes: list[PrefixKey] = field(default_factory=list)


@dataclass
class NamespaceEntries:
    """The facts of a pod's network namespace, keyed by its cookie: its local routes (what it
    reaches over lo) and the addresses a redirected connection takes its source from."""

    netns: int
    local: list[PrefixKey]
    sources: Sources


def check_supported(spec: CaptureSpec) -> None:
    """Refuse what socket-level hooks cannot reproduce exactly, naming every such option at once."""
    problems = []
    if spec.exclude_interfaces:
        problems.append(
            "-c/--istio-exclude-interfaces: a connect() hook cannot see the interface a packet will leave by"
        )
    if spec.kube_virt_interfaces:
        problems.append("-k/--kube-virt-interfaces: traffic forwarded from a VM interface never passes a socket hook")
    if spec.drop_invalid:
        problems.append("--drop-invalid: there is no conntrack state to call invalid without conntrack")
    for name, ids in (("-u/--proxy-uid", spec.proxy_uids), ("-g/--proxy-gid", spec.proxy_gids)):
        if len(ids) > MAX_IDS:
            problems.append(f"{name}: at most {MAX_IDS} ids ({len(ids)} given)")
    for groups in (spec.owner_groups_include, spec.owner_groups_exclude):
        if groups != WILDCARD:
            for group in groups:
                try:
                    _gid(group)
                except UnsupportedSpec as error:
                    problems.append(str(error))
    if problems:
        raise UnsupportedSpec("; ".join(problems))


def _gid(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UnsupportedSpec(f"owner group {group!r} does not exist on this node") from None


def pod_entries(spec: CaptureSpec, config: int, ids: IdMap = IDENTITY, shortcut: bool = False) -> PodEntries:
    """The map entries of a spec, under configuration id `config`, with the proxy's and the
    owner groups' ids mapped as the pod's user namespace maps them (`ids`); `shortcut`: its app
    <-> proxy hops are short-circuited."""
    check_supported(spec)
    flags = 0
    flags |= IPV6 if spec.enable_ipv6 else 0
    flags |= DNS if spec.dns_capture else 0
    flags |= DNS_ALL if spec.dns_capture and spec.capture_all_dns else 0
    flags |= OUT_ALL_V4 if spec.outbound_include(4) == WILDCARD else 0
    flags |= OUT_ALL_V6 if spec.outbound_include(6) == WILDCARD else 0
    flags |= INCLUDE_LO if spec.include_has_loopback else 0
    flags |= GROUPS_ALL if spec.owner_groups_include == WILDCARD else 0
    flags |= IN_CAPTURE if spec.captures_inbound else 0
    flags |= IN_ALL if spec.inbound_ports_include == WILDCARD else 0
    flags |= TPROXY if spec.tproxy else 0
    flags |= HAS_OUT_PORTS_EXCLUDE if spec.outbound_ports_exclude else 0
    flags |= HAS_OUT_PORTS_INCLUDE if spec.outbound_ports_include else 0
    flags |= HAS_OUT_EXCLUDE if spec.outbound_exclude(4) or spec.outbound_exclude(6) else 0
    flags |= HAS_OUT_INCLUDE if any(spec.outbound_include(v) not in (WILDCARD, ()) for v in (4, 6)) else 0
    flags |= HAS_GROUPS_EXCLUDE if spec.owner_groups_include == WILDCARD and spec.owner_groups_exclude else 0
    flags |= HAS_IN_PORTS_EXCLUDE if spec.inbound_ports_include == WILDCARD and spec.inbound_ports_exclude else 0
    flags |= SHORTCUT if shortcut else 0
    loopback = spec.host_ipv4_loopback_cidr.network
    pod = Pod(
        config=config,
        proxy_port=spec.proxy_port,
        inbound_port=spec.inbound_capture_port,
        tunnel_port=spec.inbound_tunnel_port,
        dns_port=constants.DNS_PROXY_PORT,
        flags=flags,
        loopback_v4=_network_u32(loopback.network_address),
        loopback_v4_mask=_network_u32(loopback.netmask),
        n_uids=len(spec.proxy_uids),
        n_gids=len(spec.proxy_gids),
        tproxy_mark=spec.inbound_tproxy_mark,
    )
    pod.uids[: len(spec.proxy_uids)] = [ids.uid(u) for u in spec.proxy_uids]
    pod.gids[: len(spec.proxy_gids)] = [ids.gid(g) for g in spec.proxy_gids]
    entries = PodEntries(config, pod)

    def ports(values, kind):
        entries.ports += [PortKey(config=config, port=p, kind=kind) for p in dict.fromkeys(values)]

    ports(spec.outbound_ports_exclude, PORT_OUT_EXCLUDE)
    ports(spec.outbound_ports_include, PORT_OUT_INCLUDE)
    if spec.inbound_ports_include == WILDCARD:  # as in istio-iptables, -d only qualifies -b '*'
        ports(spec.inbound_ports_exclude, PORT_IN_EXCLUDE)
    else:
        ports(spec.inbound_ports_include, PORT_IN_INCLUDE)
    if spec.owner_groups_include == WILDCARD:
        groups, kind = spec.owner_groups_exclude, GROUP_EXCLUDE
    else:
        groups, kind = spec.owner_groups_include, GROUP_INCLUDE
    entries.groups += [GroupKey(config=config, gid=ids.gid(_gid(g)), kind=kind) for g in groups]
    for version in (4, 6):
        include = spec.outbound_include(version)
        if include != WILDCARD:
            entries.prefixes += [_prefix(config, PREFIX_INCLUDE, c.network) for c in include]
        entries.prefixes += [_prefix(config, PREFIX_EXCLUDE, c.network) for c in spec.outbound_exclude(version)]
    for server in spec.dns_servers_v4 + spec.dns_servers_v6:
        entries.prefixes.append(_prefix(config, PREFIX_DNS, ipaddress.ip_network(server)))
    return entries


def namespace_entries(netns: int, local_networks: list[str], addresses: list) -> NamespaceEntries:
    """The entries of a namespace's facts: its local routes, and its first IPv4 and IPv6 address
    (the source a redirected connection keeps)."""
    v4 = next((a for a in addresses if a.version == 4), None)
    v6 = next((a for a in addresses if a.version == 6), None)
    sources = Sources(
        v4=_network_u32(v4) if v4 else 0,
        v6=U8x16(*(v6.packed if v6 else bytes(16))),
        flags=(SOURCE_HAS_V4 if v4 else 0) | (SOURCE_HAS_V6 if v6 else 0),
    )
    local = [_prefix(netns, PREFIX_LOCAL, ipaddress.ip_network(n, strict=False)) for n in local_networks]
    return NamespaceEntries(netns, local, sources)
