"""Hypothesis strategies for valid CaptureSpecs, including awkward names and addresses."""

from hypothesis import strategies as st

from accel import constants as c
from accel import spec as s
from accel.inputs import parsers
from accel.spec import CaptureSpec

# Group names resolvable where rules are loaded (see tests.reference.CASE_GROUPS); "counter" is
# also an nft keyword, so it exercises quoting.
GROUP_NAMES = ["java", "ftp", "counter"]

ports = st.lists(st.integers(1, 65535), max_size=4).map(tuple)
ids = st.lists(st.integers(0, s.MAX_ID), min_size=1, max_size=3).map(tuple)
cidrs = st.lists(
    st.ip_addresses().flatmap(
        lambda a: st.integers(0, a.max_prefixlen).map(lambda bits: parsers.parse_cidr(f"{a}/{bits}", "x"))
    ),
    max_size=3,
).map(tuple)
interface_names = st.one_of(
    st.sampled_from(["eth0", "not-istio-nic", "1abc", "counter", "eth@0", "a+b", "veth.10", "ip6", "lo"]),
    st.text(
        st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="-_.@+", max_codepoint=127),
        min_size=1,
        max_size=15,
    ).filter(lambda n: n not in (".", "..")),
)
interfaces = st.lists(interface_names, max_size=2).map(tuple)
groups = st.lists(st.one_of(st.sampled_from(GROUP_NAMES), st.integers(0, 65535).map(str)), max_size=3).map(tuple)
dns_v4 = st.lists(st.ip_addresses(v=4).map(str), max_size=2).map(tuple)
dns_v6 = st.lists(st.ip_addresses(v=6).map(str), max_size=2).map(tuple)
loopback = st.integers(8, 32).flatmap(
    lambda bits: st.ip_addresses(network="127.0.0.0/8").map(lambda a: parsers.parse_cidr(f"{a}/{bits}", "x"))
)

# -p and -z differ (one port for both is a loop), and neither is the DNS proxy's (it may be capturing).
listener_ports = st.lists(
    st.integers(1, 65535).filter(lambda port: port != c.DNS_PROXY_PORT), min_size=2, max_size=2, unique=True
)

capture_specs = listener_ports.flatmap(
    lambda listeners: st.builds(
        CaptureSpec,
        proxy_port=st.just(listeners[0]),
        inbound_capture_port=st.just(listeners[1]),
        inbound_tunnel_port=st.integers(1, 65535),
        proxy_uids=ids,
        proxy_gids=ids,
        inbound_interception_mode=st.sampled_from([s.REDIRECT, s.TPROXY]),
        inbound_tproxy_mark=st.integers(1, 2**32 - 1),
        inbound_ports_include=st.one_of(st.just(s.WILDCARD), ports),
        inbound_ports_exclude=ports,
        outbound_ports_include=ports,
        outbound_ports_exclude=ports,
        outbound_ip_ranges_include=st.one_of(st.just(s.WILDCARD), cidrs),
        outbound_ip_ranges_exclude=cidrs,
        owner_groups_include=st.one_of(st.just(s.WILDCARD), groups),
        owner_groups_exclude=groups,
        kube_virt_interfaces=interfaces,
        exclude_interfaces=interfaces,
        redirect_dns=st.booleans(),
        capture_all_dns=st.booleans(),
        dns_servers_v4=dns_v4,
        dns_servers_v6=dns_v6,
        drop_invalid=st.booleans(),
        enable_ipv6=st.booleans(),
        host_ipv4_loopback_cidr=loopback,
    )
)
