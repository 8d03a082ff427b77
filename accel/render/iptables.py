"""Render a CaptureSpec as Istio's exact iptables-restore input (the reference capture).

The output is byte-for-byte what istio-iptables feeds to `iptables-restore --noflush`
(and `ip6tables-restore --noflush` when the pod has IPv6), as in Istio's golden files
minus their iptables-save probe lines. Rules are emitted in istio-iptables' order;
each step below names the rule it reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import constants as c
from ..spec import WILDCARD, CaptureSpec, cidr_text

NAT, MANGLE, RAW = "nat", "mangle", "raw"
INBOUND, REDIRECT, IN_REDIRECT = c.CHAIN_INBOUND, c.CHAIN_REDIRECT, c.CHAIN_IN_REDIRECT
OUTPUT, OUTPUT_DNS, DIVERT, TPROXY_CHAIN, DROP = (
    c.CHAIN_OUTPUT,
    c.CHAIN_OUTPUT_DNS,
    c.CHAIN_DIVERT,
    c.CHAIN_TPROXY,
    c.CHAIN_DROP,
)
# as the rules' text spells them
DNS_PORT, DNS_PROXY_PORT, OUTBOUND_MARK = str(c.DNS_PORT), str(c.DNS_PROXY_PORT), str(c.OUTBOUND_MARK)

# Never declared with -N: the kernel's chains and the standard targets.
_NOT_CHAINS = {
    "PREROUTING",
    "INPUT",
    "FORWARD",
    "OUTPUT",
    "POSTROUTING",
    "RETURN",
    "ACCEPT",
    "DROP",
    "REJECT",
    "REDIRECT",
    "MARK",
    "TPROXY",
    "CT",
    "CONNMARK",
}


@dataclass(frozen=True)
class Family:
    version: int
    loopback: str  # destinations never captured: the host loopback CIDR / ::1
    passthrough_source: str  # the proxy's inbound passthrough source 127.0.0.6 / ::6


@dataclass
class _Rule:
    table: str
    chain: str
    words: tuple[str, ...]  # everything after the chain name
    position: int | None = None  # -I position; None for -A

    def line(self) -> str:
        head = ["-A", self.chain] if self.position is None else ["-I", self.chain, str(self.position)]
        return " ".join(head + list(self.words))


@dataclass
class _Restore:
    """The rules of one address family, in emission order."""

    family: Family
    rules: list[_Rule] = field(default_factory=list)

    def _declared(self) -> dict[str, list[str]]:
        """Per table, the chains to create: those with rules, then those only jumped to."""
        declared: dict[str, list[str]] = {}
        seen: set[tuple[str, str]] = set()

        def declare(table, chain):
            if (table, chain) not in seen:
                seen.add((table, chain))
                if chain not in _NOT_CHAINS:
                    declared.setdefault(table, []).append(chain)

        for rule in self.rules:
            declare(rule.table, rule.chain)
        for rule in self.rules:
            if len(rule.words) >= 2 and rule.words[-2] == "-j":
                declare(rule.table, rule.words[-1])
        return declared

    def _tables(self) -> list[str]:
        return sorted({rule.table for rule in self.rules})

    def text(self) -> str:
        """iptables-restore input: one block per table, tables sorted, chains declared first."""
        declared, out = self._declared(), []
        for table in self._tables():
            out.append(f"* {table}")
            out.extend(f"-N {chain}" for chain in declared.get(table, []))
            out.extend(rule.line() for rule in self.rules if rule.table == table)
            out.append("COMMIT")
        return "".join(line + "\n" for line in out)

    def undo_text(self) -> str:
        """iptables-restore --noflush input that removes exactly these rules and chains again:
        the rules added to built-in chains, newest first, then our chains, flushed and deleted."""
        declared, out = self._declared(), []
        for table in self._tables():
            ours = declared.get(table, [])
            out.append(f"*{table}")
            out.extend(
                f"-D {rule.chain} {' '.join(rule.words)}"
                for rule in reversed(self.rules)
                if rule.table == table and rule.chain not in ours
            )
            out.extend(f"-F {chain}" for chain in ours)
            out.extend(f"-X {chain}" for chain in ours)
            out.append("COMMIT")
        return "".join(line + "\n" for line in out)


@dataclass(frozen=True)
class IptablesRules:
    ipv4: str
    ipv6: str | None  # None when the pod has no IPv6: istio-iptables writes no ip6tables rules
    undo_ipv4: str  # iptables-restore --noflush input that removes the IPv4 rules again
    undo_ipv6: str | None

    @property
    def text(self) -> str:
        return self.ipv4 + (self.ipv6 or "")

    def by_family(self) -> list[tuple[int, str, str]]:
        """(IP version, rules, undo) for each family that has rules."""
        families = [(4, self.ipv4, self.undo_ipv4)]
        if self.ipv6 is not None:
            assert self.undo_ipv6 is not None  # render_iptables writes both or neither
            families.append((6, self.ipv6, self.undo_ipv6))
        return families


class _Builder:
    """Appends each rule to the IPv4 rules and, when IPv6 is on, to the IPv6 rules.

    `words` may be a function of the Family, for rules that name a per-family address.
    """

    def __init__(self, spec: CaptureSpec):
        self.families = [
            _Restore(Family(4, cidr_text(spec.host_ipv4_loopback_cidr), f"{c.INBOUND_PASSTHROUGH_SOURCE[4]}/32"))
        ]
        if spec.enable_ipv6:
            self.families.append(_Restore(Family(6, "::1/128", f"{c.INBOUND_PASSTHROUGH_SOURCE[6]}/128")))

    def add(self, table, chain, *words, only: int | None = None, position: int | None = None):
        for restore in self.families:
            if only is not None and restore.family.version != only:
                continue
            resolved = words[0](restore.family) if words and callable(words[0]) else words
            restore.rules.append(_Rule(table, chain, tuple(resolved), position))

    def insert(self, table, chain, position, *words, only: int | None = None):
        self.add(table, chain, *words, only=only, position=position)


def render_iptables(spec: CaptureSpec) -> IptablesRules:
    b = _Builder(spec)
    dns = spec.dns_capture
    tunnel = str(spec.inbound_tunnel_port)
    mark = str(spec.inbound_tproxy_mark)

    # Excluded interfaces are never captured (in mangle too when TPROXY uses it).
    for nic in spec.exclude_interfaces:
        b.add(NAT, "PREROUTING", "-i", nic, "-j", "RETURN")
        b.add(NAT, "OUTPUT", "-o", nic, "-j", "RETURN")
    if spec.tproxy:
        for nic in spec.exclude_interfaces:
            b.add(MANGLE, "PREROUTING", "-i", nic, "-j", "RETURN")
            b.add(MANGLE, "OUTPUT", "-o", nic, "-j", "RETURN")

    # Traffic arriving from virtual interfaces skips inbound capture.
    for nic in spec.kube_virt_interfaces:
        b.insert(NAT, "PREROUTING", 1, "-i", nic, "-j", "RETURN")

    if spec.drop_invalid:
        b.add(MANGLE, "PREROUTING", "-m", "conntrack", "--ctstate", "INVALID", "-j", DROP)
        b.add(MANGLE, DROP, "-j", "DROP")

    b.add(NAT, INBOUND, "-p", "tcp", "--dport", tunnel, "-j", "RETURN")
    b.add(NAT, REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(spec.proxy_port))
    b.add(NAT, IN_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(spec.inbound_capture_port))

    _inbound(b, spec)

    b.add(NAT, "OUTPUT", "-j", OUTPUT)
    for port in spec.outbound_ports_exclude:
        b.add(NAT, OUTPUT, "-p", "tcp", "--dport", str(port), "-j", "RETURN")
        b.add(NAT, OUTPUT, "-p", "udp", "--dport", str(port), "-j", "RETURN")
    b.add(NAT, OUTPUT, lambda f: ("-o", "lo", "-s", f.passthrough_source, "-j", "RETURN"))

    # The proxy's owner rules. Per uid, then per gid: its hairpin to the pod's own address goes
    # to the inbound listener; everyone else's traffic over lo is left alone; and the proxy's
    # traffic is never captured.
    for owner, ids in (("--uid-owner", spec.proxy_uids), ("--gid-owner", spec.proxy_gids)):
        for number in map(str, ids):
            ports: tuple[str, ...]
            if dns and owner == "--uid-owner":  # Istio uses the 53 form for uids only
                ports = ("-m", "multiport", "!", "--dports", f"{DNS_PORT},{tunnel}")
            else:
                ports = ("!", "--dport", tunnel)
            owned = ("-m", "owner", owner, number)
            b.add(
                NAT,
                OUTPUT,
                lambda f, ports=ports, owned=owned: (
                    ("-o", "lo", "!", "-d", f.loopback, "-p", "tcp", *ports, *owned) + ("-j", IN_REDIRECT)
                ),
            )
            if not spec.include_has_loopback:
                tcp_not_dns = ("-p", "tcp", "!", "--dport", DNS_PORT) if dns else ()
                b.add(NAT, OUTPUT, "-o", "lo", *tcp_not_dns, "-m", "owner", "!", owner, number, "-j", "RETURN")
            b.add(NAT, OUTPUT, "-m", "owner", owner, number, "-j", "RETURN")

    if spec.owner_groups_include == WILDCARD:
        for group in spec.owner_groups_exclude:
            b.add(NAT, OUTPUT, "-m", "owner", "--gid-owner", group, "-j", "RETURN")
    else:
        not_any = [w for g in spec.owner_groups_include for w in ("-m", "owner", "!", "--gid-owner", g)]
        b.add(NAT, OUTPUT, *not_any, "-j", "RETURN")

    if dns:
        _dns(b, spec)

    b.add(NAT, OUTPUT, lambda f: ("-d", f.loopback, "-j", "RETURN"))
    for version in (4, 6):
        for cidr in spec.outbound_exclude(version):
            b.add(NAT, OUTPUT, "-d", cidr_text(cidr), "-j", "RETURN", only=version)
    for port in spec.outbound_ports_include:
        b.add(NAT, OUTPUT, "-p", "tcp", "--dport", str(port), "-j", REDIRECT)
    for version in (4, 6):
        include = spec.outbound_include(version)
        if include == WILDCARD:
            b.add(NAT, OUTPUT, "-j", REDIRECT, only=version)
            for nic in spec.kube_virt_interfaces:
                b.insert(NAT, "PREROUTING", 1, "-i", nic, "-j", REDIRECT, only=version)
        else:
            for cidr in include:
                for nic in spec.kube_virt_interfaces:
                    b.insert(NAT, "PREROUTING", 1, "-i", nic, "-d", cidr_text(cidr), "-j", REDIRECT, only=version)
                b.add(NAT, OUTPUT, "-d", cidr_text(cidr), "-j", REDIRECT, only=version)

    if spec.tproxy:
        # Keep the proxy's original_src mark on the connection, and mark the proxy's own
        # hairpin (1338) so inbound TPROXY tells it from the app talking to itself.
        b.add(MANGLE, "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark")
        b.add(MANGLE, "OUTPUT", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN")
        for owner, ids in (("--uid-owner", spec.proxy_uids), ("--gid-owner", spec.proxy_gids)):
            for number in map(str, ids):
                owned = ("-m", "owner", owner, number)
                b.add(
                    MANGLE,
                    "OUTPUT",
                    lambda f, owned=owned: (
                        ("!", "-d", f.loopback, "-p", "tcp", "-o", "lo", *owned)
                        + ("-j", "MARK", "--set-mark", OUTBOUND_MARK)
                    ),
                )
        b.add(MANGLE, "OUTPUT", "-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK", "--restore-mark")
        b.insert(MANGLE, INBOUND, 1, "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN")
        b.insert(MANGLE, INBOUND, 2, lambda f: ("-p", "tcp", "-s", f.passthrough_source, "-i", "lo", "-j", "RETURN"))
        b.insert(
            MANGLE, INBOUND, 3, "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark", OUTBOUND_MARK, "-j", "RETURN"
        )

    v4, *v6 = b.families
    return IptablesRules(
        ipv4=v4.text(),
        ipv6=v6[0].text() if v6 else None,
        undo_ipv4=v4.undo_text(),
        undo_ipv6=v6[0].undo_text() if v6 else None,
    )


def _inbound(b: _Builder, spec: CaptureSpec):
    """Inbound TCP to the inbound listener: nat REDIRECT, or mangle TPROXY."""
    if not spec.captures_inbound:
        return
    if spec.tproxy:
        mark = str(spec.inbound_tproxy_mark)
        b.add(MANGLE, DIVERT, "-j", "MARK", "--set-mark", mark)
        b.add(MANGLE, DIVERT, "-j", "ACCEPT")
        tproxy = ("-j", "TPROXY", "--tproxy-mark", f"{mark}/0xffffffff", "--on-port", str(spec.inbound_capture_port))
        b.add(MANGLE, TPROXY_CHAIN, lambda f: ("!", "-d", f.loopback, "-p", "tcp", *tproxy))
        table = MANGLE
    else:
        table = NAT
    b.add(table, "PREROUTING", "-p", "tcp", "-j", INBOUND)
    established = ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", DIVERT)
    if spec.inbound_ports_include == WILDCARD:
        for port in map(str, spec.inbound_ports_exclude):
            b.add(table, INBOUND, "-p", "tcp", "--dport", port, "-j", "RETURN")
        if spec.tproxy:
            b.add(MANGLE, INBOUND, "-p", "tcp", *established)
            b.add(MANGLE, INBOUND, "-p", "tcp", "-j", TPROXY_CHAIN)
        else:
            b.add(NAT, INBOUND, "-p", "tcp", "-j", IN_REDIRECT)
        return
    for port in map(str, spec.inbound_ports_include):
        if spec.tproxy:
            b.add(MANGLE, INBOUND, "-p", "tcp", "--dport", port, *established)
            b.add(MANGLE, INBOUND, "-p", "tcp", "--dport", port, "-j", TPROXY_CHAIN)
        else:
            b.add(NAT, INBOUND, "-p", "tcp", "--dport", port, "-j", IN_REDIRECT)


def _dns(b: _Builder, spec: CaptureSpec):
    """DNS to the agent's port 15053, and the conntrack zones that keep the two UDP legs apart."""
    servers = {4: spec.dns_servers_v4, 6: spec.dns_servers_v6}
    bits = {4: "32", 6: "128"}
    capture_all = spec.capture_all_dns
    b.add(RAW, "OUTPUT", "-j", OUTPUT_DNS)
    for version in (4, 6):
        if capture_all or servers[version]:
            b.add(NAT, OUTPUT, "-j", OUTPUT_DNS, only=version)
    # TCP then UDP; Istio writes --to-ports for TCP and --to-port for UDP.
    for proto, to_flag in (("tcp", "--to-ports"), ("udp", "--to-port")):
        redirect = ("-j", "REDIRECT", to_flag, DNS_PROXY_PORT)
        if capture_all:
            b.add(NAT, OUTPUT_DNS, "-p", proto, "--dport", DNS_PORT, *redirect)
            continue
        for version in (4, 6):
            for server in servers[version]:
                to_server = ("-p", proto, "--dport", DNS_PORT, "-d", f"{server}/{bits[version]}")
                b.add(NAT, OUTPUT_DNS, *to_server, *redirect, only=version)
    # Zone 1: the proxy and upstream resolvers; zone 2: apps and the proxy's DNS listener.
    for owner, ids in (("--uid-owner", spec.proxy_uids), ("--gid-owner", spec.proxy_gids)):
        for number in map(str, ids):
            owned = ("-m", "owner", owner, number)
            b.add(RAW, OUTPUT_DNS, "-p", "udp", "--dport", DNS_PORT, *owned, "-j", "CT", "--zone", "1")
            b.add(RAW, OUTPUT_DNS, "-p", "udp", "--sport", DNS_PROXY_PORT, *owned, "-j", "CT", "--zone", "2")
    if capture_all:
        b.add(RAW, "PREROUTING", "-j", INBOUND)
        b.add(RAW, OUTPUT_DNS, "-p", "udp", "--dport", DNS_PORT, "-j", "CT", "--zone", "2")
        b.add(RAW, INBOUND, "-p", "udp", "--sport", DNS_PORT, "-j", "CT", "--zone", "1")
        return
    for version in (4, 6):
        if servers[version]:
            b.add(RAW, "PREROUTING", "-j", INBOUND, only=version)
        for server in servers[version]:
            address = f"{server}/{bits[version]}"
            b.add(
                RAW,
                OUTPUT_DNS,
                "-p",
                "udp",
                "--dport",
                DNS_PORT,
                "-d",
                address,
                "-j",
                "CT",
                "--zone",
                "2",
                only=version,
            )
            b.add(
                RAW, INBOUND, "-p", "udp", "--sport", DNS_PORT, "-s", address, "-j", "CT", "--zone", "1", only=version
            )
