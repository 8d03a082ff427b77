"""Trace a flow through the `nft -f` transaction accel renders (Istio's native nftables, plain or
with sets).

All tables are family inet: one rule set sees IPv4 and IPv6, and a match on `ip ...` or `tcp ...`
carries nft's implicit dependency (an IPv6 packet never matches `ip daddr != X`; a UDP packet never
matches `tcp dport != 53`). Base chains of one hook run in priority order across tables.

Understood, and nothing else (anything else is a TraceError naming the line):
  commands  add table inet T; flush table inet T (before it has sets); add chain inet T C
            [{ type nat|filter|route hook prerouting|output priority N ; }]; add set inet T S
            { type inet_service|ipv4_addr|ipv6_addr ; [flags interval ;] [auto-merge ;] };
            flush set; add element inet T S { ... }; add rule inet T C ...; insert rule inet T C
            index N ...; blank lines and # comments
  matches   iifname/oifname [!=] NAME (quoted, a trailing * is a prefix); meta l4proto tcp|udp;
            ip|ip6 saddr|daddr [!=] ADDR[/LEN] | @set | { ... }; tcp|udp dport|sport [!=] PORT |
            @set | { ... }; [meta] skuid|skgid [!=] ID (a group name resolves to its gid);
            [meta] mark [!=] V; ct mark [!=] V; ct state [!=] STATE[,STATE]
  statements counter; accept, drop, return, jump C, goto C; redirect to :P (nat chains);
            tproxy ip|ip6 to :P (prerouting); meta mark set V | ct mark; ct mark set mark;
            ct zone set N
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .. import constants as c
from .model import Flow, Kind, TraceError, Verdict, group_id
from .nft_words import (
    BARE_NAME,
    KEYWORDS,
    Token,
    member_matches,
    read_colon_port,
    read_interface,
    read_mark,
    read_name,
    read_network,
    read_port,
    read_proto,
    read_uid,
    split_tokens,
)
from .walk import (
    ACCEPT,
    CONNTRACK_PRIORITY,
    CONTINUE,
    DROP,
    GOTO,
    JUMP,
    OUTPUT,
    PREROUTING,
    RETURN,
    Base,
    Packet,
    Rule,
    check,
    restore_mark,
    save_mark,
    trace,
)

CHAIN_TYPES = {"nat": (PREROUTING, OUTPUT), "filter": (PREROUTING, OUTPUT), "route": (OUTPUT,)}
VERDICTS = {"accept": ACCEPT, "drop": DROP, "return": RETURN}
# The chain a redirect sits in says what it captures for (the ports are the spec's).
REDIRECT_KIND = {
    c.NFT_CHAIN_REDIRECT: Kind.OUTBOUND,
    c.NFT_CHAIN_IN_REDIRECT: Kind.INBOUND,
    c.NFT_CHAIN_OUTPUT_DNS: Kind.DNS,
}
SET_TYPES: dict[str, str | int] = {"inet_service": "port", "ipv4_addr": 4, "ipv6_addr": 6}
CT_STATES = {"new", "established", "related", "invalid", "untracked"}


@dataclass
class _Set:
    kind: str | int  # "port", 4 or 6
    interval: bool
    where: str
    elements: list = field(default_factory=list)

    def __contains__(self, value) -> bool:
        if self.kind == "port":
            return value in self.elements
        return any(value in network for network in self.elements)


@dataclass
class _Table:
    name: str
    where: str
    chains: dict[str, list[Rule]] = field(default_factory=dict)
    hooks: dict[str, tuple[str, str, int, str]] = field(default_factory=dict)  # chain -> (type, hook, priority, where)
    sets: dict[str, _Set] = field(default_factory=dict)


class NftablesTracer:
    """Parses an nft -f transaction once; trace() walks it for one flow.

    group_ids resolves group names in skgid as nft does at load (default: this machine's group
    database); an unknown name is a TraceError, as nft refuses it.
    """

    def __init__(self, text: str, *, group_ids: Mapping[str, int] | None = None):
        self._group_ids = group_ids
        self.tables: dict[str, _Table] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                self._command(split_tokens(line, f"line {number}: {line}"), f"line {number}: {line}")
        self.bases = [
            Base(f"inet {table.name}", hook, priority, kind == "nat", table.chains, chain, where)
            for table in self.tables.values()
            for chain, (kind, hook, priority, where) in table.hooks.items()
        ]
        check(self.bases)

    def trace(self, flow: Flow) -> Verdict:
        return trace(self.bases, flow)

    # -- commands -------------------------------------------------------------------------------
    def _command(self, tokens: list[Token], where: str):
        words = [t.text for t in tokens]
        if len(words) < 3 or words[2] != "inet":
            raise TraceError(where, "only commands on family inet tables are understood")
        command = " ".join(words[:2])
        if command == "add table" and len(words) == 4:
            self.tables.setdefault(words[3], _Table(words[3], where))
            return
        if len(words) < 4 or words[3] not in self.tables:
            raise TraceError(where, f"no table {words[3] if len(words) > 3 else ''!r} (add it first)")
        table = self.tables[words[3]]
        if command == "flush table" and len(words) == 4:
            if table.sets:
                raise TraceError(where, "flush table after its sets were added is not understood")
            for rules in table.chains.values():
                rules.clear()
        elif command == "add chain" and len(words) >= 5:
            self._chain(table, words[4], words[5:], where)
        elif command == "add set" and len(words) >= 5:
            self._set(table, words[4], words[5:], where)
        elif command in ("flush set", "add element") and len(words) >= 5:
            if words[4] not in table.sets:
                raise TraceError(where, f"no set {words[4]} in {table.name}")
            named = table.sets[words[4]]
            if command == "flush set":
                if len(words) != 5:
                    raise TraceError(where, "words after flush set are not understood")
                named.elements.clear()
            else:
                named.elements.extend(self._elements(tokens[5:], named.kind, named.interval, where))
        elif command in ("add rule", "insert rule") and len(words) >= 5:
            if words[4] not in table.chains:
                raise TraceError(where, f"no chain {words[4]} in {table.name} (add it first)")
            rules, body = table.chains[words[4]], tokens[5:]
            if command == "insert rule":
                if len(words) < 7 or words[5] != "index" or not words[6].isdigit():
                    raise TraceError(where, "only insert rule ... index N is understood")
                index = int(words[6])
                if index >= len(rules):  # nft inserts before an existing rule only
                    raise TraceError(where, f"insert at index {index} into {words[4]}, which has {len(rules)} rules")
                rules.insert(index, self._rule(table, words[4], tokens[7:], where))
            else:
                if words[5:6] == ["index"] or words[5:6] == ["handle"] or words[5:6] == ["position"]:
                    raise TraceError(where, "add rule at a position is not understood")
                rules.append(self._rule(table, words[4], body, where))
        else:
            raise TraceError(where, "not a command accel's nft transactions have")

    def _chain(self, table: _Table, name: str, words: list[str], where: str):
        if not BARE_NAME.fullmatch(name) or name in KEYWORDS:
            raise TraceError(where, f"chain name {name!r} is not understood")
        if not words:
            if name in table.hooks:
                raise TraceError(where, f"{name} was added as a base chain")
            table.chains.setdefault(name, [])
            return
        if (
            len(words) != 9
            or words[0] != "{"
            or words[1] != "type"
            or words[3] != "hook"
            or words[5] != "priority"
            or words[7:] != [";", "}"]
            or not re.fullmatch(r"-?[0-9]+", words[6])
        ):
            raise TraceError(where, "only { type T hook H priority N ; } is understood for a base chain")
        kind, hook, priority = words[2], words[4], int(words[6])
        if kind not in CHAIN_TYPES or hook not in CHAIN_TYPES[kind]:
            raise TraceError(
                where,
                f"a {kind} chain on hook {hook} is not understood (the tracer walks "
                "nat/filter prerouting and output, route output)",
            )
        if kind == "nat" and priority <= CONNTRACK_PRIORITY:
            raise TraceError(where, "a nat chain must run after conntrack (priority above -200)")
        if name in table.chains and table.hooks.get(name, (None, None, None))[:3] != (kind, hook, priority):
            raise TraceError(where, f"chain {name} already exists with another definition")
        table.chains.setdefault(name, [])
        table.hooks[name] = (kind, hook, priority, where)

    def _set(self, table: _Table, name: str, words: list[str], where: str):
        if name in table.sets:
            raise TraceError(where, f"set {name} already exists")
        spec = " ".join(words)
        match = re.fullmatch(r"\{ type (\S+) ;( flags interval ;)?( auto-merge ;)? \}", spec)
        if not match or match.group(1) not in SET_TYPES:
            raise TraceError(
                where,
                "only { type inet_service|ipv4_addr|ipv6_addr ; [flags interval ;] "
                "[auto-merge ;] } is understood for a set",
            )
        interval = bool(match.group(2))
        if match.group(3) and not interval:
            raise TraceError(where, "auto-merge needs flags interval")
        table.sets[name] = _Set(SET_TYPES[match.group(1)], interval, where)

    def _elements(self, tokens: list[Token], kind, interval: bool, where: str) -> list:
        values, rest = self._braced(tokens, where)
        if rest:
            raise TraceError(where, "words after the elements are not understood")
        if kind == "port":
            return [read_port(v.text, where) for v in values]
        networks = [read_network(v.text, kind, where) for v in values]
        if not interval and any(n.prefixlen != n.max_prefixlen for n in networks):
            raise TraceError(where, "a prefix in a set without flags interval")
        return networks

    @staticmethod
    def _braced(tokens: list[Token], where: str) -> tuple[list[Token], list[Token]]:
        """{ a, b, ... } at the start of tokens: the elements and what follows."""
        if not tokens or tokens[0].text != "{" or tokens[0].quoted:
            raise TraceError(where, "expected { ... }")
        try:
            end = next(i for i, t in enumerate(tokens) if t.text == "}" and not t.quoted)
        except StopIteration:
            raise TraceError(where, "{ without }") from None
        inner = tokens[1:end]
        values = inner[::2]
        if not values or any(t.text != "," for t in inner[1::2]) or any(t.text in "{},;" for t in values):
            raise TraceError(where, "elements must be a comma list")
        return values, tokens[end + 1 :]

    # -- rules ----------------------------------------------------------------------------------
    def _rule(self, table: _Table, chain: str, tokens: list[Token], where: str) -> Rule:
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
                values, rest = self._braced(tokens[i:], where)
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
                        match(lambda p: p.gid, lambda t: self._gid(t, where), negate)
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
                    states = self._states(tokens, i, where)
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

    @staticmethod
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

    def _gid(self, token: Token, where: str) -> int:
        text = token.text
        if text.isdigit() and not token.quoted:
            return int(text)
        name = read_name(token, where)
        return group_id(name, self._group_ids, where)


def trace_nftables(text: str, flow: Flow, *, group_ids: Mapping[str, int] | None = None) -> Verdict:
    """The verdict for one flow through an nft -f transaction (parse once with NftablesTracer to
    trace many)."""
    return NftablesTracer(text, group_ids=group_ids).trace(flow)
