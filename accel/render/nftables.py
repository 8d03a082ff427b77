"""Render a CaptureSpec as Istio's native nftables transaction (accel's nftables fallback).

The output is the `nft -f` text istio-iptables --native-nftables applies as one atomic
transaction (Istio's nftables golden format): per table `add table`, `flush table`, the
chains that have rules, then the rules in Istio's order, each with a counter. All tables are
family inet, so one rule set covers IPv4 and IPv6; IPv6-only rules appear when the pod has IPv6.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .. import constants as c
from ..spec import WILDCARD, CaptureSpec, SpecError, cidr_text

NAT, MANGLE, RAW = c.NFT_TABLE_NAT, c.NFT_TABLE_MANGLE, c.NFT_TABLE_RAW
PREROUTING, OUTPUT_BASE = "prerouting", "output"
INBOUND, REDIRECT, IN_REDIRECT = c.NFT_CHAIN_INBOUND, c.NFT_CHAIN_REDIRECT, c.NFT_CHAIN_IN_REDIRECT
OUTPUT, OUTPUT_DNS, DIVERT, TPROXY_CHAIN, DROP = (
    c.NFT_CHAIN_OUTPUT,
    c.NFT_CHAIN_OUTPUT_DNS,
    c.NFT_CHAIN_DIVERT,
    c.NFT_CHAIN_TPROXY,
    c.NFT_CHAIN_DROP,
)
DNS_PROXY_PORT, OUTBOUND_MARK = str(c.DNS_PROXY_PORT), str(c.OUTBOUND_MARK)
PASSTHROUGH_V4, PASSTHROUGH_V6 = f"{c.INBOUND_PASSTHROUGH_SOURCE[4]}/32", f"{c.INBOUND_PASSTHROUGH_SOURCE[6]}/128"

# Tables in transaction order; chains in declaration order, base chains with their hook.
# Priorities are numeric: nft 1.0.6 rejects the name "dstnat" on an output hook.
TABLES: dict[str, list[tuple[str, str | None]]] = {
    NAT: [
        (PREROUTING, "type nat hook prerouting priority -100"),
        (OUTPUT_BASE, "type nat hook output priority -100"),
        (INBOUND, None),
        (REDIRECT, None),
        (IN_REDIRECT, None),
        (OUTPUT, None),
        (OUTPUT_DNS, None),
    ],
    MANGLE: [
        (PREROUTING, "type filter hook prerouting priority -150"),
        (OUTPUT_BASE, "type route hook output priority -150"),
        (DIVERT, None),
        (TPROXY_CHAIN, None),
        (INBOUND, None),
        (DROP, None),
    ],
    RAW: [
        (PREROUTING, "type filter hook prerouting priority -300"),
        (OUTPUT_BASE, "type filter hook output priority -300"),
        (INBOUND, None),
        (OUTPUT_DNS, None),
    ],
}


# nft reads a bare word as a name only when its scanner sees a plain string: not a keyword, not
# a number. Istio writes interface and group names bare, which breaks for names such as "1abc",
# "eth@0" or "counter". accel writes a name bare when that is safe, so Istio's own output is
# unchanged, and quoted otherwise. The keywords are those of nftables' src/scanner.l (a recent
# version, a superset of Debian's 1.0.6: an extra entry only costs an unneeded quote).
_NFT_STRING = re.compile(r"[A-Za-z_.][A-Za-z0-9/_.-]*")
_NFT_KEYWORDS = frozenset(
    """
    a-rwnd abort accept ackseq add addr ah all and arp asconf asconf-ack auto-merge avgpkt burst
    bypass bytes cfi cgroup cgroupv2 chain chains check checksum chunk classid code comment comp
    constant continue cookie-ack cookie-echo count counter counters cpi cpu create csumcov ct
    cum-tsn-ack cwr daddr data day dccp define dei delete describe destroy device devices direction
    dnat doff dport drop dscp dst dup dynamic echo ecn ecne element elements eol eq error esp ether
    event exists expectation expiration expires export exthdr fanout fastopen fib flags flow
    flowlabel flowtable flowtables flush forward-tsn frag frag-off fully-random fwd gateway
    gc-interval ge geneve get goto gre gretap group gt handle hbh hdrlength heartbeat heartbeat-ack
    helper helpers hlen hook hooks hoplimit hour htype ibriport ibrname icmp icmpv6 icmpx id
    iif iifgroup iifname iiftype igmp import in inc include index inet init init-ack init-tag
    initial-tsn insert interval ip ip6 ipsec jhash json jump l3proto label last last-entry le
    left length level limit limits list ll log lowest-tsn lshift lsrr lt map maps mark masquerade
    max-delay maxseg md5sig memory meta meter meters mh minute missing mod monitor more-fragments
    mptcp mrt mss mtu name ne netdev never new-cum-tsn nexthdr nexthop nftrace nh noop nop not
    notrack num num-dup-tsns num-gap-ack-blocks num-inbound-streams num-outbound-streams numgen
    obriport obrname offload offset oif oifgroup oifname oiftype operation option options or
    original osf out over packets param-problem pcp performance persistent pkttype plen policy
    port position ppid prefix priority proto-dst proto-src protocol ptr ptype queue
    queue-threshold quota quotas ra random rate redefine redirect reject rename replace reply reqid
    reserved reserved2 reset return right rr rshift rt rt0 rt2 rtclassid rule rules ruleset sack
    sack-perm sack-permitted sack0 sack1 sack2 sack3 saddr sctp second secmark secmarks seed
    seg-left sequence seqno set sets shutdown shutdown-ack shutdown-complete sid size skgid skuid
    snaplen snat socket spi spnum sport srh ssn ssrr state status stream subtype symhash synproxy
    synproxys table tables tag taddr tcp th time timeout timestamp to tos tproxy trace transparent
    tsecr tsn tsval ttl tunnel tunnels type typeof udp udplite undefine until update urgptr used
    value version vlan vm vmap vni vtag week wildcard window with wscale xml xor xt
    8021ad 8021q""".split()
)


def nft_name(name: str, field: str, *, numeric: bool = False) -> str:
    """An interface or group name (numeric: a number is a gid) as nft must read it."""
    if '"' in name:
        raise SpecError(field, name, "cannot be written in nftables syntax (contains a double quote)")
    if numeric and name.isdigit():
        return name
    if _NFT_STRING.fullmatch(name) and name not in _NFT_KEYWORDS:
        return name
    return f'"{name}"'


def nft_interface(key: str, name: str, field: str) -> str:
    """`key` (iifname, oifname) matching an interface name as iptables means it: a trailing '+'
    matches every name with that prefix, which nftables writes as a trailing '*' (the spec
    refuses a '*' of its own). A '+' alone matches every interface; nft refuses an all-wildcard
    string, so that match is empty: a packet here always has the interface."""
    if name == "+":
        return ""
    return f"{key} {nft_name(name[:-1] + '*' if name.endswith('+') else name, field)}"


@dataclass(frozen=True)
class _Rule:
    table: str
    chain: str
    match: str  # what comes before the counter
    action: str  # the statement after the counter
    index: int | None = None  # nft insert position (0-based); None appends

    @property
    def body(self) -> str:
        return " ".join(part for part in (self.match, "counter", self.action) if part)


class _Builder:
    def __init__(self, spec: CaptureSpec, sets: bool = False):
        self.ipv6 = spec.enable_ipv6
        self.use_sets = sets
        self.rules: list[_Rule] = []
        self.sets: dict[tuple[str, str], tuple[str, list[str]]] = {}  # (table, name) -> (type, elements)

    def match_any(self, table: str, name: str, selector: str, set_type: str, elements: list[str]) -> list[str]:
        """Matches for `selector` being any of `elements`: one per element, as Istio writes them,
        or with sets, one match against a named set (a lookup, whatever its size)."""
        if not elements:
            return []
        if not self.use_sets:
            return [f"{selector} {element}" for element in elements]
        self.sets[(table, name)] = (set_type, list(dict.fromkeys(elements)))
        return [f"{selector} @{name}"]

    def add(self, table, chain, match, action, *, index=None):
        self.rules.append(_Rule(table, chain, match, action, index))

    def add6(self, table, chain, match, action, *, index=None):
        """An IPv6-only rule: written only when the pod has IPv6."""
        if self.ipv6:
            self.add(table, chain, match, action, index=index)

    def transaction(self) -> str:
        out = []
        for table, chains in TABLES.items():
            rules = [r for r in self.rules if r.table == table]
            if not rules:
                continue
            out += [f"add table inet {table}", f"flush table inet {table}"]
            # Chains with rules, and chains jumped to even if empty, as Istio's iptables builder
            # declares them. (Istio's nftables builder does not: with DNS capture, no IPv6 and only
            # IPv6 nameservers its transaction jumps to a chain it never created, and nft refuses it.)
            used = {r.chain for r in rules} | {r.action.split()[1] for r in rules if r.action.startswith("jump ")}
            for chain, base in chains:
                if chain in used:
                    out.append(f"add chain inet {table} {chain}" + (f" {{ {base} ; }}" if base else ""))
            for (set_table, name), (set_type, elements) in self.sets.items():
                if set_table != table:
                    continue
                # Intervals (CIDRs) may overlap in a spec: auto-merge folds them as nft requires.
                flags = " flags interval ; auto-merge ;" if set_type.endswith("_addr") else ""
                out += [
                    f"add set inet {table} {name} {{ type {set_type} ;{flags} }}",
                    f"flush set inet {table} {name}",
                    f"add element inet {table} {name} {{ {', '.join(elements)} }}",
                ]
            count: dict[str, int] = {}
            for rule in rules:
                # iptables' "-I CHAIN 1" is index 0 here, but nft can only insert before an
                # existing rule: into an empty or shorter chain it appends instead.
                length = count.get(rule.chain, 0)
                if rule.index is None or rule.index >= length:
                    out.append(f"add rule inet {table} {rule.chain} {rule.body}")
                else:
                    out.append(f"insert rule inet {table} {rule.chain} index {rule.index} {rule.body}")
                count[rule.chain] = length + 1
        return "".join(line + "\n" for line in out)


def render_nftables(spec: CaptureSpec, sets: bool = False) -> str:
    """Istio's nftables transaction; with `sets`, beyond Istio, CIDR and port lists become named
    sets matched in one rule each, so the cost of a new connection does not grow with them."""
    b = _Builder(spec, sets)
    dns = spec.dns_capture
    tunnel = str(spec.inbound_tunnel_port)
    mark = str(spec.inbound_tproxy_mark)
    lo4 = cidr_text(spec.host_ipv4_loopback_cidr)

    excluded = spec.exclude_interfaces
    for nic in excluded:
        b.add(NAT, PREROUTING, nft_interface("iifname", nic, "exclude_interfaces"), "return")
        b.add(NAT, OUTPUT_BASE, nft_interface("oifname", nic, "exclude_interfaces"), "return")
    if spec.tproxy:
        for nic in excluded:
            b.add(MANGLE, PREROUTING, nft_interface("iifname", nic, "exclude_interfaces"), "return")
            b.add(MANGLE, OUTPUT_BASE, nft_interface("oifname", nic, "exclude_interfaces"), "return")
    virtual = [nft_interface("iifname", nic, "kube_virt_interfaces") for nic in spec.kube_virt_interfaces]
    for nic in virtual:
        b.add(NAT, PREROUTING, nic, "return", index=0)

    if spec.drop_invalid:  # TCP only, unlike the iptables rule
        b.add(MANGLE, PREROUTING, "meta l4proto tcp ct state invalid", f"jump {DROP}")
        b.add(MANGLE, DROP, "", "drop")

    b.add(NAT, INBOUND, f"meta l4proto tcp tcp dport {tunnel}", "return")
    b.add(NAT, REDIRECT, "meta l4proto tcp", f"redirect to :{spec.proxy_port}")
    b.add(NAT, IN_REDIRECT, "meta l4proto tcp", f"redirect to :{spec.inbound_capture_port}")

    _inbound(b, spec, lo4)

    b.add(NAT, OUTPUT_BASE, "", f"jump {OUTPUT}")
    excluded_ports = [str(p) for p in spec.outbound_ports_exclude]
    if b.use_sets:  # both returns: the order of tcp and udp among them does not matter
        for proto in ("tcp", "udp"):
            for match in b.match_any(NAT, "outbound-ports-exclude", f"{proto} dport", "inet_service", excluded_ports):
                b.add(NAT, OUTPUT, match, "return")
    else:
        for port in excluded_ports:
            b.add(NAT, OUTPUT, f"tcp dport {port}", "return")
            b.add(NAT, OUTPUT, f"udp dport {port}", "return")
    b.add(NAT, OUTPUT, f"oifname lo ip saddr {PASSTHROUGH_V4}", "return")
    b.add6(NAT, OUTPUT, f"oifname lo ip6 saddr {PASSTHROUGH_V6}", "return")

    for owner, ids in (("skuid", spec.proxy_uids), ("skgid", spec.proxy_gids)):
        for number in ids:
            ports = f"{{ 53, {tunnel} }}" if dns and owner == "skuid" else tunnel
            hairpin = f"tcp dport != {ports} {owner} {number}"
            b.add(NAT, OUTPUT, f"oifname lo meta l4proto tcp ip daddr != {lo4} {hairpin}", f"jump {IN_REDIRECT}")
            b.add6(NAT, OUTPUT, f"oifname lo meta l4proto tcp ip6 daddr != ::1/128 {hairpin}", f"jump {IN_REDIRECT}")
            if not spec.include_has_loopback:
                tcp_not_dns = "meta l4proto tcp tcp dport != 53 " if dns else ""
                b.add(NAT, OUTPUT, f"oifname lo {tcp_not_dns}{owner} != {number}", "return")
            b.add(NAT, OUTPUT, f"{owner} {number}", "return")

    if spec.owner_groups_include == WILDCARD:
        for group in spec.owner_groups_exclude:
            b.add(NAT, OUTPUT, f"skgid {nft_name(group, 'owner_groups_exclude', numeric=True)}", "return")
    else:
        b.add(
            NAT,
            OUTPUT,
            " ".join(
                f"skgid != {nft_name(g, 'owner_groups_include', numeric=True)}" for g in spec.owner_groups_include
            ),
            "return",
        )

    if dns:
        _dns(b, spec)

    b.add(NAT, OUTPUT, f"ip daddr {lo4}", "return")
    b.add6(NAT, OUTPUT, "ip6 daddr ::1/128", "return")
    for match in b.match_any(
        NAT, "outbound-exclude-v4", "ip daddr", "ipv4_addr", [cidr_text(cidr) for cidr in spec.outbound_exclude(4)]
    ):
        b.add(NAT, OUTPUT, match, "return")
    if b.ipv6:
        for match in b.match_any(
            NAT, "outbound-exclude-v6", "ip6 daddr", "ipv6_addr", [cidr_text(c) for c in spec.outbound_exclude(6)]
        ):
            b.add6(NAT, OUTPUT, match, "return")
    for match in b.match_any(
        NAT, "outbound-ports-include", "tcp dport", "inet_service", [str(p) for p in spec.outbound_ports_include]
    ):
        b.add(NAT, OUTPUT, match, f"jump {REDIRECT}")
    if spec.outbound_ip_ranges_include == WILDCARD:
        # One family-less jump: unlike iptables, this also captures IPv6 on a pod without IPv6.
        b.add(NAT, OUTPUT, "", f"jump {REDIRECT}")
        for nic in virtual:
            b.add(NAT, PREROUTING, nic, f"jump {REDIRECT}", index=0)
    else:
        for version, add, keyword in ((4, b.add, "ip"), (6, b.add6, "ip6")):
            if version == 6 and not b.ipv6:
                continue
            include = spec.outbound_include(version)
            assert include != WILDCARD  # '*' is the branch above
            cidrs = [cidr_text(c) for c in include]
            for match in b.match_any(
                NAT, f"outbound-include-v{version}", f"{keyword} daddr", f"ipv{version}_addr", cidrs
            ):
                for nic in virtual:
                    add(NAT, PREROUTING, f"{nic} {match}".strip(), f"jump {REDIRECT}", index=0)
                add(NAT, OUTPUT, match, f"jump {REDIRECT}")

    if spec.tproxy:
        b.add(MANGLE, PREROUTING, f"meta l4proto tcp mark {mark}", "ct mark set mark")
        b.add(MANGLE, OUTPUT_BASE, f"oifname lo meta l4proto tcp mark {mark}", "return")
        for owner, ids in (("skuid", spec.proxy_uids), ("skgid", spec.proxy_gids)):
            for number in ids:
                b.add(
                    MANGLE,
                    OUTPUT_BASE,
                    f"oifname lo meta l4proto tcp ip daddr != {lo4} {owner} {number}",
                    f"meta mark set {OUTBOUND_MARK}",
                )
                b.add6(
                    MANGLE,
                    OUTPUT_BASE,
                    f"oifname lo meta l4proto tcp ip6 daddr != ::1/128 {owner} {number}",
                    f"meta mark set {OUTBOUND_MARK}",
                )
        b.add(MANGLE, OUTPUT_BASE, f"meta l4proto tcp ct mark {mark}", "meta mark set ct mark")
        b.add(MANGLE, INBOUND, f"meta l4proto tcp mark {mark}", "return", index=0)
        b.add(MANGLE, INBOUND, f"iifname lo meta l4proto tcp ip saddr {PASSTHROUGH_V4}", "return", index=1)
        b.add6(MANGLE, INBOUND, f"iifname lo meta l4proto tcp ip6 saddr {PASSTHROUGH_V6}", "return", index=1)
        b.add(MANGLE, INBOUND, f"iifname lo meta l4proto tcp mark != {OUTBOUND_MARK}", "return", index=2)

    return b.transaction()


def _inbound(b: _Builder, spec: CaptureSpec, lo4: str):
    if not spec.captures_inbound:
        return
    port = spec.inbound_capture_port
    if spec.tproxy:
        mark = spec.inbound_tproxy_mark
        b.add(MANGLE, DIVERT, "", f"meta mark set {mark}")
        b.add(MANGLE, DIVERT, "", "accept")
        b.add(
            MANGLE,
            TPROXY_CHAIN,
            f"meta l4proto tcp ip daddr != {lo4} tproxy ip to :{port} meta mark set {mark}",
            "accept",
        )
        b.add6(
            MANGLE,
            TPROXY_CHAIN,
            f"meta l4proto tcp ip6 daddr != ::1/128 tproxy ip6 to :{port} meta mark set {mark}",
            "accept",
        )
        table = MANGLE
    else:
        table = NAT
    b.add(table, PREROUTING, "meta l4proto tcp", f"jump {INBOUND}")
    if spec.inbound_ports_include == WILDCARD:
        for match in b.match_any(
            table, "inbound-ports-exclude", "tcp dport", "inet_service", [str(p) for p in spec.inbound_ports_exclude]
        ):
            b.add(table, INBOUND, f"meta l4proto tcp {match}", "return")
        if spec.tproxy:
            b.add(MANGLE, INBOUND, "meta l4proto tcp ct state related,established", f"jump {DIVERT}")
            b.add(MANGLE, INBOUND, "meta l4proto tcp", f"jump {TPROXY_CHAIN}")
        else:
            b.add(NAT, INBOUND, "meta l4proto tcp", f"jump {IN_REDIRECT}")
        return
    # With a set, TPROXY's per-port pairs become one pair: the ports are disjoint, so each
    # packet meets the same verdict.
    for match in b.match_any(
        table, "inbound-ports-include", "tcp dport", "inet_service", [str(p) for p in spec.inbound_ports_include]
    ):
        if spec.tproxy:
            b.add(MANGLE, INBOUND, f"meta l4proto tcp ct state related,established {match}", f"jump {DIVERT}")
            b.add(MANGLE, INBOUND, f"meta l4proto tcp {match}", f"jump {TPROXY_CHAIN}")
        else:
            b.add(NAT, INBOUND, f"meta l4proto tcp {match}", f"jump {IN_REDIRECT}")


def _dns(b: _Builder, spec: CaptureSpec):
    v4, v6 = spec.dns_servers_v4, spec.dns_servers_v6
    capture_all = spec.capture_all_dns
    redirect = f"redirect to :{DNS_PROXY_PORT}"
    b.add(RAW, OUTPUT_BASE, "", f"jump {OUTPUT_DNS}")
    # Unlike iptables (one jump per family that has servers) this jump is written once.
    b.add(NAT, OUTPUT, "", f"jump {OUTPUT_DNS}")
    if capture_all:
        b.add(NAT, OUTPUT_DNS, "meta l4proto tcp tcp dport 53", redirect)
        b.add(NAT, OUTPUT_DNS, "udp dport 53", redirect)
    else:
        for proto in ("tcp", "udp"):
            for server in v4:
                b.add(NAT, OUTPUT_DNS, f"ip daddr {server}/32 {proto} dport 53", redirect)
            for server in v6:
                b.add6(NAT, OUTPUT_DNS, f"ip6 daddr {server}/128 {proto} dport 53", redirect)
    for owner, ids in (("skuid", spec.proxy_uids), ("skgid", spec.proxy_gids)):
        for number in ids:
            b.add(RAW, OUTPUT_DNS, f"udp dport 53 meta {owner} {number}", "ct zone set 1")
            b.add(RAW, OUTPUT_DNS, f"udp sport {DNS_PROXY_PORT} meta {owner} {number}", "ct zone set 2")
    if capture_all:
        b.add(RAW, PREROUTING, "", f"jump {INBOUND}")
        b.add(RAW, OUTPUT_DNS, "udp dport 53", "ct zone set 2")
        b.add(RAW, INBOUND, "udp sport 53", "ct zone set 1")
        return
    b.add(RAW, PREROUTING, "", f"jump {INBOUND}")
    for server in v4:
        b.add(RAW, OUTPUT_DNS, f"udp dport 53 ip daddr {server}/32", "ct zone set 2")
        b.add(RAW, INBOUND, f"udp sport 53 ip saddr {server}/32", "ct zone set 1")
    for server in v6:
        b.add6(RAW, OUTPUT_DNS, f"udp dport 53 ip6 daddr {server}/128", "ct zone set 2")
        b.add6(RAW, INBOUND, f"udp sport 53 ip6 saddr {server}/128", "ct zone set 1")
