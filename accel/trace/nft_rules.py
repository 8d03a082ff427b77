"""One rule of an `nft -f` transaction compiled to walk's Rule: its matches as tests on the
packet, its statements as effects, its verdict; and the tables and sets a rule refers to. The
matches and statements it understands are listed in accel.trace.nftables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .. import constants as c
from .model import Kind, TraceError, group_id
from .nft_words import (
    Token,
    braced,
    member_matches,
    read_colon_port,
    read_interface,
    read_mark,
    read_name,
    read_network,
    read_port,
    read_proto,
    read_uid,
)
from .walk import ACCEPT, CONTINUE, DROP, GOTO, JUMP, OUTPUT, PREROUTING, RETURN, Packet, Rule, restore_mark, save_mark

VERDICTS = {"accept": ACCEPT, "drop": DROP, "return": RETURN}
# The chain a redirect sits in says what it captures for (the ports are the spec's).
REDIRECT_KIND = {
    c.NFT_CHAIN_REDIRECT: Kind.OUTBOUND,
    c.NFT_CHAIN_IN_REDIRECT: Kind.INBOUND,
    c.NFT_CHAIN_OUTPUT_DNS: Kind.DNS,
}
CT_STATES = {"new", "established", "related", "invalid", "untracked"}


@dataclass
class NftSet:
    """A named set: what @name looks up."""

    kind: str | int  # "port", 4 or 6
    interval: bool
    where: str
    elements: list = field(default_factory=list)

    def __contains__(self, value) -> bool:
        if self.kind == "port":
            return value in self.elements
        return any(value in network for network in self.elements)


@dataclass
class NftTable:
    """A table as the commands so far built it: its chains (the base ones in hooks) and sets."""

    name: str
    where: str
    chains: dict[str, list[Rule]] = field(default_factory=dict)
    hooks: dict[str, tuple[str, str, int, str]] = field(default_factory=dict)  # chain -> (type, hook, priority, where)
    sets: dict[str, NftSet] = field(default_factory=dict)


def compile_rule(
    table: NftTable, chain: str, tokens: list[Token], where: str, group_ids: Mapping[str, int] | None
) -> Rule:
    """What `add rule inet T C <tokens>` (or insert rule) adds to chain C of table T, as walk's
    Rule; group_ids resolves group names in skgid (see NftablesTracer)."""
    steps: list[Callable[[Packet], bool]] = []
    requires: list[tuple[str, str]] = []
    action, target = CONTINUE, None
    l4 = False  # a transport protocol match came before (nat and tproxy statements need one)
    i = 0

    def word(expected: str | None = None) -> str:
        nonlocal i
        if i >= len(tokens):
            raise TraceError(where, f"rule ends after {tokens[-1].text if tokens else 'nothing'}")
        token = tokens[i]
        i += 1
        if expected is not None and token.text != expected:
            raise TraceError(where, f"expected {expected!r}, got {token.text!r}")
        if token.quoted:
            raise TraceError(where, f"a quoted word {token.text!r} where nft wants a keyword")
        return token.text

    def negation() -> bool:
        nonlocal i
        if i < len(tokens) and tokens[i].text == "!=" and not tokens[i].quoted:
            i += 1
            return True
        return False

    def value(parse):
        """A literal, { ... } or @set, as a membership test on the packet's value (for a named
        set, with the set, whose type the selector must have)."""
        nonlocal i
        if i >= len(tokens):
            raise TraceError(where, "a match without a value")
        token = tokens[i]
        if token.text == "{" and not token.quoted:
            values, rest = braced(tokens[i:], where)
            i = len(tokens) - len(rest)
            members = [parse(v) for v in values]
            return lambda actual: any(member_matches(actual, m) for m in members)
        i += 1
        if token.text.startswith("@") and not token.quoted:
            name = token.text[1:]
            if name not in table.sets:
                raise TraceError(where, f"no set {name} in {table.name} (add it first)")
            named = table.sets[name]
            return lambda actual: actual in named, named
        member = parse(token)
        return lambda actual: member_matches(actual, member)

    def match(get, parse, negate: bool, set_kind=None, dependency=None):
        test = value(parse)
        if isinstance(test, tuple):  # a named set: its type must be the selector's
            test, named = test
            if named.kind != set_kind:
                raise TraceError(where, f"a set of {named.kind} looked up with a {set_kind} selector")
        if negate:
            steps.append(lambda p: (dependency is None or dependency(p)) and not test(get(p)))
        else:
            steps.append(lambda p: (dependency is None or dependency(p)) and test(get(p)))

    while i < len(tokens):
        if action != CONTINUE:
            raise TraceError(where, f"{tokens[i].text!r} after the verdict is not understood")
        keyword = word()
        if keyword == "counter":
            continue
        if keyword in VERDICTS:
            action = VERDICTS[keyword]
        elif keyword in ("jump", "goto"):
            target = word()
            if target not in table.chains or target in table.hooks:
                raise TraceError(where, f"{keyword} {target}: no such regular chain in {table.name} (add it first)")
            action = JUMP if keyword == "jump" else GOTO
        elif keyword == "redirect":
            word("to")
            port = read_colon_port(word(), where)
            if not l4:
                raise TraceError(where, "redirect to :PORT needs a transport protocol match before it")
            if chain not in REDIRECT_KIND:
                raise TraceError(
                    where, f"redirect in {chain}: the tracer knows redirects only in {', '.join(REDIRECT_KIND)}"
                )
            kind = REDIRECT_KIND[chain]
            requires.append(("nat", "redirect is valid in nat chains only"))

            def redirect(p: Packet, kind=kind, port=port) -> bool:
                p.redirect_to(kind, port)
                return True

            steps.append(redirect)
            action = ACCEPT
        elif keyword == "tproxy":
            version = {"ip": 4, "ip6": 6}.get(word())
            if version is None:
                raise TraceError(where, "only tproxy ip|ip6 to :PORT is understood")
            word("to")
            port = read_colon_port(word(), where)
            if not l4:
                raise TraceError(where, "tproxy needs a transport protocol match before it")
            requires.append((PREROUTING, "tproxy is valid in prerouting only"))

            def tproxy(p: Packet, version=version, port=port) -> bool:
                if p.family != version:  # NFT_BREAK: the rule stops here
                    return False
                p.tproxy_to(port)
                return True

            steps.append(tproxy)
        elif keyword in ("iifname", "oifname"):
            attribute, hook = ("iif", PREROUTING) if keyword == "iifname" else ("oif", OUTPUT)
            requires.append((hook, f"{keyword} is only understood in {hook}"))
            negate = negation()
            match(lambda p, a=attribute: getattr(p, a), lambda t: read_interface(t, where), negate)
        elif keyword in ("skuid", "skgid", "mark") or keyword == "meta":
            selector = word() if keyword == "meta" else keyword
            if selector == "l4proto":
                negate = negation()
                match(lambda p: p.proto, lambda t: read_proto(t, where), negate)
                l4 = l4 or not negate
            elif selector in ("skuid", "skgid"):
                requires.append((OUTPUT, f"{selector}: only a local socket has an owner (output)"))
                negate = negation()
                if selector == "skuid":
                    match(lambda p: p.uid, lambda t: read_uid(t, where), negate)
                else:  # the socket's fsgid only: supplementary groups never count
                    match(lambda p: p.gid, lambda t: _gid(t, group_ids, where), negate)
            elif selector == "mark" and i < len(tokens) and tokens[i].text == "set":
                if keyword != "meta":
                    raise TraceError(where, "mark set is written meta mark set")
                word("set")
                if i < len(tokens) and tokens[i].text == "ct":
                    word("ct")
                    word("mark")
                    steps.append(restore_mark)
                else:
                    mark = read_mark(word(), where)

                    def set_mark(p: Packet, mark=mark) -> bool:
                        p.mark = mark
                        return True

                    steps.append(set_mark)
            elif selector == "mark":
                negate = negation()
                match(lambda p: p.mark, lambda t: read_mark(t.text, where), negate)
            else:
                raise TraceError(where, f"meta {selector} is not understood")
        elif keyword in ("ip", "ip6"):
            version = 4 if keyword == "ip" else 6
            field_ = word()
            if field_ not in ("saddr", "daddr"):
                raise TraceError(where, f"{keyword} {field_} is not understood")
            negate = negation()
            match(
                lambda p, a="src" if field_ == "saddr" else "dst": getattr(p, a),
                lambda t, v=version: read_network(t.text, v, where),
                negate,
                version,
                dependency=lambda p, v=version: p.family == v,
            )
        elif keyword in ("tcp", "udp"):
            field_ = word()
            if field_ not in ("dport", "sport"):
                raise TraceError(where, f"{keyword} {field_} is not understood")
            negate = negation()
            match(
                lambda p, a=field_: getattr(p, a),
                lambda t: read_port(t.text, where),
                negate,
                "port",
                dependency=lambda p, proto=keyword: p.proto == proto,
            )
            l4 = True  # the dependency holds whatever the comparison
        elif keyword == "ct":
            selector = word()
            if selector == "state":
                negate = negation()
                states = _states(tokens, i, where)
                i += 2 * len(states) - 1

                def in_states(p: Packet, states=states, negate=negate) -> bool:
                    return (p.ctstate.lower() in states) != negate

                steps.append(in_states)
            elif selector == "mark" and i < len(tokens) and tokens[i].text == "set":
                word("set")
                word("mark")  # ct mark set mark: save the packet's mark on the connection
                steps.append(save_mark)
            elif selector == "mark":
                negate = negation()
                match(lambda p: p.ctmark, lambda t: read_mark(t.text, where), negate)
            elif selector == "zone":
                word("set")
                zone = word()
                if not zone.isdigit() or int(zone) > 65535:
                    raise TraceError(where, f"ct zone {zone!r} is not a zone")

                def set_zone(p: Packet, zone=int(zone)) -> bool:
                    p.set_zone(zone)
                    return True

                steps.append(set_zone)
            else:
                raise TraceError(where, f"ct {selector} is not understood")
        else:
            raise TraceError(where, f"{keyword!r} is not understood")
    return Rule(where, tuple(steps), action, target, tuple(requires))


def _states(tokens: list[Token], i: int, where: str) -> frozenset[str]:
    """ct state STATE[,STATE...] (the tokenizer splits at the commas)."""
    states = []
    while True:
        if i >= len(tokens) or tokens[i].text not in CT_STATES:
            raise TraceError(where, f"ct state {tokens[i].text if i < len(tokens) else ''!r} is not understood")
        states.append(tokens[i].text)
        if i + 1 < len(tokens) and tokens[i + 1].text == ",":
            i += 2
            continue
        return frozenset(states)


def _gid(token: Token, group_ids: Mapping[str, int] | None, where: str) -> int:
    text = token.text
    if text.isdigit() and not token.quoted:
        return int(text)
    name = read_name(token, where)
    return group_id(name, group_ids, where)
