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
from collections.abc import Mapping

from .model import Flow, TraceError, Verdict
from .nft_rules import NftSet, NftTable, compile_rule
from .nft_words import BARE_NAME, KEYWORDS, Token, braced, read_network, read_port, split_tokens
from .walk import CONNTRACK_PRIORITY, OUTPUT, PREROUTING, Base, check, trace

CHAIN_TYPES = {"nat": (PREROUTING, OUTPUT), "filter": (PREROUTING, OUTPUT), "route": (OUTPUT,)}
SET_TYPES: dict[str, str | int] = {"inet_service": "port", "ipv4_addr": 4, "ipv6_addr": 6}


class NftablesTracer:
    """Parses an nft -f transaction once; trace() walks it for one flow.

    group_ids resolves group names in skgid as nft does at load (default: this machine's group
    database); an unknown name is a TraceError, as nft refuses it.
    """

    def __init__(self, text: str, *, group_ids: Mapping[str, int] | None = None):
        self._group_ids = group_ids
        self.tables: dict[str, NftTable] = {}
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
            self.tables.setdefault(words[3], NftTable(words[3], where))
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
                rules.insert(index, compile_rule(table, words[4], tokens[7:], where, self._group_ids))
            else:
                if words[5:6] == ["index"] or words[5:6] == ["handle"] or words[5:6] == ["position"]:
                    raise TraceError(where, "add rule at a position is not understood")
                rules.append(compile_rule(table, words[4], body, where, self._group_ids))
        else:
            raise TraceError(where, "not a command accel's nft transactions have")

    def _chain(self, table: NftTable, name: str, words: list[str], where: str):
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

    def _set(self, table: NftTable, name: str, words: list[str], where: str):
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
        table.sets[name] = NftSet(SET_TYPES[match.group(1)], interval, where)

    def _elements(self, tokens: list[Token], kind, interval: bool, where: str) -> list:
        values, rest = braced(tokens, where)
        if rest:
            raise TraceError(where, "words after the elements are not understood")
        if kind == "port":
            return [read_port(v.text, where) for v in values]
        networks = [read_network(v.text, kind, where) for v in values]
        if not interval and any(n.prefixlen != n.max_prefixlen for n in networks):
            raise TraceError(where, "a prefix in a set without flags interval")
        return networks


def trace_nftables(text: str, flow: Flow, *, group_ids: Mapping[str, int] | None = None) -> Verdict:
    """The verdict for one flow through an nft -f transaction (parse once with NftablesTracer to
    trace many)."""
    return NftablesTracer(text, group_ids=group_ids).trace(flow)
