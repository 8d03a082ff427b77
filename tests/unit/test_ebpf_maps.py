"""A CaptureSpec as the eBPF datapath's map entries, and a namespace's facts (pure: no kernel)."""

import ctypes
import ipaddress

import pytest

from accel import inputs
from accel.ebpf import maps as m
from accel.inputs.parsers import parse_cidrs
from accel.spec import CaptureSpec
from accel.userns import IDENTITY, UNMAPPED_ID, IdMap

CONFIG = 0x4122334455667788
NETNS = 0x1234
LOCAL = ["127.0.0.0/8", "127.0.0.1/32", "198.18.0.10/32", "::1/128", "2001:db8:18::10/128"]
SOURCES = [ipaddress.ip_address("198.18.0.10"), ipaddress.ip_address("2001:db8:18::10")]


def entries(spec, ids=IDENTITY):
    return m.pod_entries(spec, CONFIG, ids)


def test_struct_sizes_match_accel_h():
    # bpf/accel.h's sizes; the datapath also checks every member's offset against the compiled BTF
    sizes = {
        m.Pod: 104,
        m.PortKey: 16,
        m.GroupKey: 16,
        m.PrefixKey: 29,
        m.Origin: 24,
        m.Tuple: 48,
        m.ListenerKey: 16,
        m.Sources: 24,
        m.Counters: 8 * len(m.COUNTERS),
    }
    assert {t: ctypes.sizeof(t) for t in sizes} == sizes


def test_stock_sidecar_entries():
    spec = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS), {})
    e = entries(spec)
    pod = e.pod
    assert pod.config == CONFIG and e.config == CONFIG
    assert (pod.proxy_port, pod.inbound_port, pod.tunnel_port, pod.dns_port) == (15001, 15006, 15008, 15053)
    assert pod.flags == m.OUT_ALL_V4 | m.OUT_ALL_V6 | m.GROUPS_ALL | m.IN_CAPTURE | m.IN_ALL | m.HAS_IN_PORTS_EXCLUDE
    assert (pod.n_uids, pod.uids[0], pod.n_gids, pod.gids[0]) == (1, 1337, 1, 1337)
    assert sorted((k.port, k.kind) for k in e.ports) == [(p, m.PORT_IN_EXCLUDE) for p in (15020, 15021, 15090)]
    assert all(k.config == CONFIG for k in e.ports)
    assert ipaddress.IPv4Address(pod.loopback_v4.to_bytes(4, "little")) == ipaddress.ip_address("127.0.0.1")
    assert ipaddress.IPv4Address(pod.loopback_v4_mask.to_bytes(4, "little")) == ipaddress.ip_address("255.255.255.255")
    assert e.prefixes == []  # '*' needs no include prefixes; local routes are the namespace's, not the spec's


def test_namespace_entries_key_local_routes_by_the_netns_and_flag_each_source():
    facts = m.namespace_entries(NETNS, LOCAL, SOURCES)
    assert {key.kind & ~m.PREFIX_V6 for key in facts.local} == {m.PREFIX_LOCAL}
    assert all(bytes(key.owner) == NETNS.to_bytes(8, "little") for key in facts.local)
    assert facts.sources.flags == m.SOURCE_HAS_V4 | m.SOURCE_HAS_V6
    assert ipaddress.IPv4Address(facts.sources.v4.to_bytes(4, "little")) == SOURCES[0]
    assert bytes(facts.sources.v6) == SOURCES[1].packed
    # an IPv6 address whose first and last bytes are zero is still an address (not "none")
    odd = ipaddress.ip_address("::1:2:3:0")
    assert m.namespace_entries(NETNS, [], [odd]).sources.flags == m.SOURCE_HAS_V6
    assert m.namespace_entries(NETNS, [], []).sources.flags == 0


def test_prefixes_count_owner_and_kind_bits_and_map_ipv4():
    spec = CaptureSpec(
        outbound_ip_ranges_include=parse_cidrs("10.96.0.1/12,2001:db8::/32", "f"),
        outbound_ip_ranges_exclude=parse_cidrs("10.96.0.0/16", "f"),
        redirect_dns=True,
        dns_servers_v4=("10.96.0.10",),
    )
    by_kind = {}
    for key in entries(spec).prefixes:
        by_kind.setdefault(key.kind, []).append((key.prefixlen, bytes(key.addr)))
    assert by_kind[m.PREFIX_INCLUDE] == [
        (72 + 96 + 12, m.mapped(ipaddress.ip_address("10.96.0.0")))
    ]  # host bits cleared, as the kernel does
    # IPv6 prefixes carry their family in the kind: ::/0 must never cover IPv4-mapped addresses
    assert by_kind[m.PREFIX_INCLUDE | m.PREFIX_V6] == [(72 + 32, ipaddress.ip_address("2001:db8::").packed)]
    assert by_kind[m.PREFIX_EXCLUDE] == [(72 + 96 + 16, m.mapped(ipaddress.ip_address("10.96.0.0")))]
    assert by_kind[m.PREFIX_DNS] == [(72 + 128, m.mapped(ipaddress.ip_address("10.96.0.10")))]
    assert bytes(entries(spec).prefixes[0].owner) == CONFIG.to_bytes(8, "little")


def test_flags_follow_the_spec():
    spec = CaptureSpec(
        inbound_interception_mode="TPROXY",
        inbound_ports_include=(8080,),
        redirect_dns=True,
        capture_all_dns=True,
        enable_ipv6=True,
        owner_groups_include=("2345",),
        outbound_ip_ranges_include=parse_cidrs("127.1.2.3/32", "f"),
    )
    e = entries(spec)
    assert e.pod.flags == m.IPV6 | m.DNS | m.DNS_ALL | m.INCLUDE_LO | m.IN_CAPTURE | m.TPROXY | m.HAS_OUT_INCLUDE
    assert [(k.gid, k.kind) for k in e.groups] == [(2345, m.GROUP_INCLUDE)]
    assert [(k.port, k.kind) for k in e.ports] == [(8080, m.PORT_IN_INCLUDE)]
    lists = CaptureSpec(
        outbound_ports_exclude=(9000,),
        outbound_ports_include=(5432,),
        owner_groups_exclude=("7",),
        outbound_ip_ranges_exclude=parse_cidrs("2001:db8::/32", "x"),
    )
    assert entries(lists).pod.flags & 0xFC00 == (
        m.HAS_OUT_PORTS_EXCLUDE | m.HAS_OUT_PORTS_INCLUDE | m.HAS_OUT_EXCLUDE | m.HAS_GROUPS_EXCLUDE
    )
    # --redirect-dns without servers is no DNS capture, as in istio-iptables
    assert not entries(CaptureSpec(redirect_dns=True)).pod.flags & m.DNS


def test_ids_are_mapped_through_the_pods_user_namespace():
    """hostUsers: false: the pod's 1337 is 1001337 on the node; iptables' owner match maps the
    same way (through the user namespace owning the network namespace)."""
    ids = IdMap(uids=((0, 1_000_000, 65536),), gids=((0, 2_000_000, 65536),))
    spec = CaptureSpec(proxy_uids=(1337, 70000), proxy_gids=(1337,), owner_groups_include=("2345",))
    e = entries(spec, ids)
    assert list(e.pod.uids[:2]) == [1_001_337, UNMAPPED_ID]  # 70000 is not mapped: it matches no one
    assert list(e.pod.gids[:1]) == [2_001_337]
    assert [k.gid for k in e.groups] == [2_002_345]
    assert IdMap().uid(1337) == 1337 and IdMap().gid(0) == 0


def test_each_configuration_gets_its_own_id():
    ids = {m.new_config_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(i >= 1 << 62 for i in ids)  # never a small netns cookie


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"exclude_interfaces": ("eth1",)}, "--istio-exclude-interfaces"),
        ({"kube_virt_interfaces": ("eth1",)}, "--kube-virt-interfaces"),
        ({"drop_invalid": True}, "--drop-invalid"),
        ({"proxy_uids": tuple(range(9))}, "-u/--proxy-uid: at most 8"),
        ({"owner_groups_include": ("no-such-group-accel",)}, "does not exist"),
    ],
)
def test_what_socket_hooks_cannot_do_is_refused_by_name(change, needle):
    with pytest.raises(m.UnsupportedSpec, match=needle):
        entries(CaptureSpec().replace(**change))


def _defines(path):
    """The numeric #defines of a C header: name -> value ((1 << n), hex and sums evaluated)."""
    import re
    from pathlib import Path

    found = {}
    for name, value in re.findall(r"^#define\s+(\w+)\s+([^/\n]+?)\s*(?:/\*.*)?$", Path(path).read_text(), re.M):
        if re.fullmatch(r"[\d\s()<+x0-9a-fA-F]+", value):
            found[name] = eval(value, {})  # only digits, shifts and sums reach here
    return found


def test_accel_h_defines_match_maps_py():
    """bpf/accel.h and accel/ebpf/maps.py name the same flags and kinds with the same values;
    the structs are checked against the compiled BTF when the datapath loads."""
    from pathlib import Path

    header = _defines(Path(__file__).resolve().parents[2] / "bpf" / "accel.h")
    pairs = {
        f"ACCEL_{name}": name
        for name in (
            "IPV6",
            "DNS",
            "DNS_ALL",
            "OUT_ALL_V4",
            "OUT_ALL_V6",
            "INCLUDE_LO",
            "GROUPS_ALL",
            "IN_CAPTURE",
            "IN_ALL",
            "TPROXY",
            "HAS_OUT_PORTS_EXCLUDE",
            "HAS_OUT_PORTS_INCLUDE",
            "HAS_OUT_EXCLUDE",
            "HAS_OUT_INCLUDE",
            "HAS_GROUPS_EXCLUDE",
            "HAS_IN_PORTS_EXCLUDE",
            "SHORTCUT",
        )
    }
    pairs.update(
        {
            name: name
            for name in (
                "PORT_OUT_EXCLUDE",
                "PORT_OUT_INCLUDE",
                "PORT_IN_EXCLUDE",
                "PORT_IN_INCLUDE",
                "GROUP_INCLUDE",
                "GROUP_EXCLUDE",
                "PREFIX_INCLUDE",
                "PREFIX_EXCLUDE",
                "PREFIX_LOCAL",
                "PREFIX_DNS",
                "PREFIX_V6",
                "PREFIX_KEY_BITS",
                "SOURCE_HAS_V4",
                "SOURCE_HAS_V6",
                "ORIGIN_OUTBOUND",
                "ORIGIN_INBOUND",
                "ORIGIN_DNS",
                "ORIGIN_LOST",
                "ROLE_APP",
                "ROLE_PROXY",
            )
        }
    )
    pairs["ACCEL_MAX_IDS"] = "MAX_IDS"
    pairs["ACCEL_SPREAD_PORTS"] = "SPREAD_PORTS"
    assert {c: header.get(c) for c in pairs} == {c: getattr(m, p) for c, p in pairs.items()}
    # every flag bit of accel.h has its Python name
    flags = {
        name
        for name in header
        if name.startswith("ACCEL_") and not name.startswith("ACCEL_MAX") and name not in ("ACCEL_PAGE_SIZE",)
    }
    assert flags <= set(pairs)


def test_every_refusal_is_named_at_once():
    spec = CaptureSpec(
        exclude_interfaces=("eth1",),
        kube_virt_interfaces=("eth2",),
        drop_invalid=True,
        owner_groups_include=("no-such-group-accel",),
    )
    with pytest.raises(m.UnsupportedSpec) as refused:
        entries(spec)
    for needle in ("--istio-exclude-interfaces", "--kube-virt-interfaces", "--drop-invalid", "no-such-group-accel"):
        assert needle in str(refused.value)
