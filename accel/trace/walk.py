"""The walk both tracers share: rules as tests and effects, chains with jump/goto/return, and the
hooks a packet meets in priority order. The parsers turn their syntax into this; the netfilter
semantics live here once, so iptables and nftables cannot drift apart in the tracer itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from .model import INBOUND, OUTBOUND, REDIRECT, TPROXY, UNTOUCHED, Address, Flow, Kind, TraceError, Verdict

PREROUTING, OUTPUT = "prerouting", "output"
# nf_conntrack's hook priority: base chains before it (raw) can attach a CT template (zone),
# those after it see the connection already tracked.
CONNTRACK_PRIORITY = -200
# Where REDIRECT sends a locally generated packet (nf_nat_redirect: the loopback address).
LOOPBACK: dict[int, Address] = {4: ipaddress.IPv4Address("127.0.0.1"), 6: ipaddress.IPv6Address("::1")}

# Rule actions, after its tests passed and its effects ran.
CONTINUE, ACCEPT, DROP, RETURN, JUMP, GOTO = "continue", "accept", "drop", "return", "jump", "goto"


class Packet:
    """The packet's state as the walk changes it: marks, zone, what captured it."""

    def __init__(self, flow: Flow):
        self.flow = flow
        self.family = flow.version
        self.proto = flow.protocol
        self.src: Address = flow.source
        self.dst: Address = flow.destination
        self.dport = flow.dport
        self.sport = flow.sport  # None: ephemeral, named by no rule
        self.uid, self.gid = flow.uid, flow.gid
        self.mark = flow.mark
        self.ctmark = 0  # a new connection's mark
        self.ctstate = "NEW"
        self.hook = ""
        self.iif: str | None = None
        self.oif: str | None = None
        self.ct_attached = False  # conntrack (or a CT template) is on the packet: zones are fixed
        self.zone: int | None = None
        self.redirect: tuple[Kind, int] | None = None  # nat REDIRECT: where to
        self.tproxy: int | None = None  # TPROXY: the port whose socket it was assigned
        self.dropped = False
        self.path: list[str] = []

    # -- effects the parsers' rules call -------------------------------------------------------
    def set_zone(self, zone: int):
        """CT --zone / ct zone set: the first template wins (xt_CT and nft_ct both leave a packet
        that already carries one alone), and nothing attaches once conntrack has run."""
        if not self.ct_attached:
            self.zone = zone
            self.ct_attached = True

    def redirect_to(self, kind: Kind, port: int):
        self.redirect = (kind, port)

    def tproxy_to(self, port: int):
        self.tproxy = port


Step = Callable[[Packet], bool]  # a test, or an effect that returns True


def save_mark(packet: Packet) -> bool:
    """CONNMARK --save-mark, ct mark set mark: the packet's mark onto its connection."""
    packet.ctmark = packet.mark
    return True


def restore_mark(packet: Packet) -> bool:
    """CONNMARK --restore-mark, meta mark set ct mark: the connection's mark onto the packet."""
    packet.mark = packet.ctmark
    return True


@dataclass(frozen=True)
class Rule:
    where: str  # "line N: text", for errors and the path
    steps: tuple[Step, ...]  # run in order; the first False ends the rule (no match)
    action: str = CONTINUE
    target: str | None = None  # the chain of JUMP/GOTO
    # (requirement, why): "prerouting"/"output" = only reachable from that hook, "nat" = only
    # from a nat base chain. Checked statically, as iptables-restore and nft check them at load.
    requires: tuple[tuple[str, str], ...] = ()


@dataclass
class Base:
    """A base chain: where a hook enters a table."""

    label: str  # e.g. "nat" or "inet istio-proxy-nat", for the path
    hook: str
    priority: int
    nat: bool  # nat chains see only a connection's first packet, before it is NATed
    chains: dict[str, list[Rule]]
    start: str
    where: str = ""


def check(bases: list[Base]):
    """What the kernel refuses at load, for the chains the hooks reach: loops, and rules reached
    from a hook (or a chain type) they are not valid in. Unreached chains are not checked, as in
    the kernel; their rules were still parsed."""
    order: dict[str, list[Base]] = {}
    for base in bases:
        order.setdefault(base.hook, []).append(base)
    for hook, group in order.items():
        seen: dict[int, Base] = {}
        for base in group:
            if base.priority in seen:
                raise TraceError(
                    base.where,
                    f"two base chains on hook {hook} at priority {base.priority}: their order is not defined",
                )
            seen[base.priority] = base
    for base in bases:
        _check_from(base, base.start, [], set())


def _check_from(base: Base, chain: str, stack: list[str], done: set[str]):
    """Depth first from one chain; `stack` holds the chains being walked (a jump back into one is
    a loop, named by the rule that closes it), `done` those found loop-free."""
    for rule in base.chains[chain]:
        for requirement, why in rule.requires:
            met = base.nat if requirement == "nat" else base.hook == requirement
            if not met:
                raise TraceError(rule.where, f"{why} (reached from {base.label} {base.hook})")
        if rule.action in (JUMP, GOTO):
            assert rule.target is not None  # the parsers give every jump and goto its chain
            if rule.target in stack or rule.target == chain:
                raise TraceError(rule.where, f"a loop: {' -> '.join(stack + [chain, rule.target])}")
            if rule.target not in done:
                _check_from(base, rule.target, stack + [chain], done)
    done.add(chain)


def run_chain(base: Base, packet: Packet) -> str:
    """One base chain, first match wins: ACCEPT or DROP. RETURN pops to the caller (or, in the
    base chain, ends it with the policy, accept); GOTO does not push, so a RETURN from its target
    goes back to the chain that called the one holding the goto."""
    stack: list[tuple[str, int]] = []
    chain, index = base.start, 0
    while True:
        rules = base.chains[chain]
        if index >= len(rules):  # fell off: a user chain returns, a base chain takes its policy
            if not stack:
                return ACCEPT
            chain, index = stack.pop()
            continue
        rule = rules[index]
        index += 1
        if not all(step(packet) for step in rule.steps):
            continue
        packet.path.append(f"{base.label} {chain} {rule.where}")
        if rule.action == CONTINUE:
            continue
        if rule.action in (ACCEPT, DROP):
            return rule.action
        if rule.action == RETURN:
            if not stack:
                return ACCEPT
            chain, index = stack.pop()
        elif rule.action == JUMP:
            assert rule.target is not None  # as in _check_from
            stack.append((chain, index))
            chain, index = rule.target, 0
        elif rule.action == GOTO:
            assert rule.target is not None
            chain, index = rule.target, 0
        else:  # pragma: no cover - the parsers only build the actions above
            raise TraceError(rule.where, f"unknown action {rule.action}")


def _walk(bases: list[Base], packet: Packet, hook: str, *, nat: bool) -> bool:
    """The base chains of one hook in priority order; False if the packet was dropped. ACCEPT ends
    only its own base chain: the next table still sees the packet, as in the kernel."""
    packet.hook = hook
    for base in sorted((b for b in bases if b.hook == hook), key=lambda b: b.priority):
        if base.priority > CONNTRACK_PRIORITY:
            packet.ct_attached = True
        if base.nat and not nat:
            continue
        if run_chain(base, packet) == DROP:
            packet.dropped = True
            return False
    packet.ct_attached = True
    return True


def trace(bases: list[Base], flow: Flow) -> Verdict:
    """The verdict for the first packet of `flow` (see Flow for what each direction walks)."""
    packet = Packet(flow)
    if flow.direction == OUTBOUND:
        packet.oif = "lo" if flow.lo else flow.interface
        if _walk(bases, packet, OUTPUT, nat=True) and (flow.lo or packet.redirect):
            # Out by lo and straight back in: conntrack already holds the connection (nat is not
            # consulted again, no zone attaches), the destination is what REDIRECT made it.
            if packet.redirect:
                packet.dst, packet.dport = LOOPBACK[packet.family], packet.redirect[1]
            packet.oif, packet.iif = None, "lo"
            packet.uid = packet.gid = None  # skb_orphan on lo: no owner (no such match is reachable)
            _walk(bases, packet, PREROUTING, nat=False)
    else:
        assert flow.direction == INBOUND
        packet.iif = "lo" if flow.lo else flow.interface
        packet.ct_attached = flow.lo
        _walk(bases, packet, PREROUTING, nat=not flow.lo)
    return verdict_of(packet)


def verdict_of(packet: Packet) -> Verdict:
    """DROP beats all; a TPROXY socket assignment beats a nat rewrite (the socket is stolen from
    the packet before any lookup by address); otherwise the nat REDIRECT, or nothing."""
    path, zone = tuple(packet.path), packet.zone
    if packet.dropped:
        return Verdict(Kind.DROP, ct_zone=zone, path=path)
    if packet.tproxy is not None:
        return Verdict(Kind.INBOUND, packet.tproxy, TPROXY, ct_zone=zone, path=path)
    if packet.redirect is not None:
        kind, port = packet.redirect
        return Verdict(kind, port, REDIRECT, ct_zone=zone, path=path)
    return Verdict(UNTOUCHED.kind, ct_zone=zone, path=path)
