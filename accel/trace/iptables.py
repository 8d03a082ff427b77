"""Trace a flow through iptables-restore text as accel renders it (Istio's exact rules).

The text holds one block of tables per address family, IPv4 then IPv6 (accel's IptablesRules.text,
Istio's goldens without their iptables-save probe lines); one family alone works too. Each block's
family is read from the addresses its rules name, so a flow meets only the rules of its own
family, and a family without rules captures nothing (istio-iptables writes no ip6tables rules
for a pod without IPv6).

Understood, and nothing else (anything else is a TraceError naming the line):
  lines     `* TABLE` / `*TABLE`, `-N CHAIN`, `-A CHAIN ...`, `-I CHAIN [N] ...`, `COMMIT`,
            blank lines and `#` comments; tables nat, mangle, raw; rules only in PREROUTING,
            OUTPUT and user chains (the hooks a capture decision is made in)
  matches   -p tcp|udp; [!] -s/-d CIDR; [!] -i/-o IFACE (a trailing + is a prefix);
            [!] --dport/--sport P after -p; -m multiport [!] --dports P,P; -m owner
            [!] --uid-owner U / [!] --gid-owner G (a name resolves to its gid);
            -m conntrack [!] --ctstate STATES; -m mark [!] --mark V[/M]; -m connmark [!] --mark V[/M]
  targets   RETURN, ACCEPT, DROP, a user chain (-j), goto (-g); REDIRECT --to-ports|--to-port P
            (nat); TPROXY --tproxy-mark V[/M] --on-port P (mangle); MARK --set-mark V[/M];
            CONNMARK --save-mark|--restore-mark; CT --zone N (raw)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .. import constants as c
from .iptables_words import interface_matches, read_mark, read_network, read_port
from .model import UNTOUCHED, Flow, Kind, TraceError, Verdict, group_id
from .walk import (
    ACCEPT,
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

# Each table's built-in chains, and the priority its hooks run it at (NF_IP_PRI_*).
BUILTIN = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
PRIORITY = {"raw": -300, "mangle": -150, "nat": -100}
HOOKS = {"PREROUTING": PREROUTING, "OUTPUT": OUTPUT}
VERDICTS = {"RETURN": RETURN, "ACCEPT": ACCEPT, "DROP": DROP}
EXTENSIONS = ("REDIRECT", "TPROXY", "MARK", "CONNMARK", "CT")
# The chain a REDIRECT sits in says what it captures for (the ports are the spec's).
REDIRECT_KIND = {c.CHAIN_REDIRECT: Kind.OUTBOUND, c.CHAIN_IN_REDIRECT: Kind.INBOUND, c.CHAIN_OUTPUT_DNS: Kind.DNS}
CT_STATES = {"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED"}
MODULES = {
    "owner": ("--uid-owner", "--gid-owner"),
    "multiport": ("--dports",),
    "conntrack": ("--ctstate",),
    "mark": ("--mark",),
    "connmark": ("--mark",),
}
NEGATABLE = {
    "-s",
    "-d",
    "-i",
    "-o",
    "--dport",
    "--sport",
    "--dports",
    "--uid-owner",
    "--gid-owner",
    "--ctstate",
    "--mark",
}
_CHAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,28}")


@dataclass
class _Table:
    name: str
    where: str
    chains: dict[str, list[Rule]] = field(default_factory=dict)
    user: set[str] = field(default_factory=set)


@dataclass
class _Family:
    """One family's block of tables."""

    tables: dict[str, _Table] = field(default_factory=dict)
    versions: set[int] = field(default_factory=set)  # of the addresses its rules name
    where: str = ""
    bases: list[Base] = field(default_factory=list)


class IptablesTracer:
    """Parses iptables-restore text once; trace() walks it for one flow.

    group_ids resolves group names in --gid-owner as iptables does at load (default: this
    machine's group database); an unknown name is a TraceError, as iptables-restore refuses it.
    """

    def __init__(self, text: str, *, group_ids: Mapping[str, int] | None = None):
        self._group_ids = group_ids
        self.families: dict[int, _Family] = _assign_families(self._parse(text))
        for family in self.families.values():
            family.bases = [
                Base(
                    table.name,
                    HOOKS[chain],
                    PRIORITY[table.name],
                    table.name == "nat",
                    table.chains,
                    chain,
                    table.where,
                )
                for table in family.tables.values()
                for chain in HOOKS
                if chain in table.chains
            ]
            check(family.bases)

    def trace(self, flow: Flow) -> Verdict:
        family = self.families.get(flow.version)
        if family is None:
            return Verdict(UNTOUCHED.kind, path=(f"no IPv{flow.version} rules: not captured",))
        return trace(family.bases, flow)

    # -- parsing --------------------------------------------------------------------------------
    def _parse(self, text: str) -> list[_Family]:
        families: list[_Family] = []
        table: _Table | None = None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            where = f"line {number}: {line}"
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                if table is not None:
                    raise TraceError(where, f"table {table.name} has no COMMIT")
                name = line[1:].strip()
                if name not in BUILTIN:
                    raise TraceError(where, f"table {name!r}: only {', '.join(BUILTIN)} are understood")
                if not families or name in families[-1].tables:  # a table again: the next family
                    families.append(_Family(where=where))
                table = _Table(name, where, {chain: [] for chain in BUILTIN[name]})
                families[-1].tables[name] = table
                continue
            if table is None:
                raise TraceError(where, "outside a table (expected '* TABLE')")
            if line == "COMMIT":
                table = None
                continue
            words = line.split()
            if any(quote in line for quote in "\"'"):
                raise TraceError(where, "quoted words are not understood")
            if words[0] == "-N" and len(words) == 2:
                self._declare(table, words[1], where)
            elif words[0] == "-A" and len(words) >= 2:
                self._chain(table, words[1], where).append(self._rule(table, words[1], words[2:], where, families[-1]))
            elif words[0] == "-I" and len(words) >= 2:
                rules = self._chain(table, words[1], where)
                position, rest = (int(words[2]), words[3:]) if len(words) > 2 and words[2].isdigit() else (1, words[2:])
                if not 1 <= position <= len(rules) + 1:
                    raise TraceError(where, f"insert at {position} into {words[1]}, which has {len(rules)} rules")
                rules.insert(position - 1, self._rule(table, words[1], rest, where, families[-1]))
            else:
                raise TraceError(where, "not a line iptables-restore input of accel's has")
        if table is not None:
            raise TraceError(table.where, f"table {table.name} has no COMMIT")
        return families

    @staticmethod
    def _declare(table: _Table, chain: str, where: str):
        if chain in table.chains:
            raise TraceError(where, f"chain {chain} already exists in {table.name}")
        if not _CHAIN_NAME.fullmatch(chain) or chain in VERDICTS or chain in EXTENSIONS or chain.startswith("-"):
            raise TraceError(where, f"{chain!r} is not a valid chain name")
        table.chains[chain] = []
        table.user.add(chain)

    @staticmethod
    def _chain(table: _Table, chain: str, where: str) -> list[Rule]:
        if chain not in table.chains:
            raise TraceError(where, f"no chain {chain} in table {table.name} (declare it with -N)")
        if chain not in table.user and chain not in HOOKS:
            raise TraceError(where, f"rules in {chain} are not understood: the tracer walks PREROUTING and OUTPUT")
        return table.chains[chain]

    def _gid(self, name: str, where: str) -> int:
        if name.isdigit():
            return int(name)
        return group_id(name, self._group_ids, where)

    def _rule(self, table: _Table, chain: str, words: list[str], where: str, family: _Family) -> Rule:
        steps: list = []
        requires: list[tuple[str, str]] = []
        seen: set[str] = set()
        proto: str | None = None
        module: str | None = None
        module_seen: set[str] = set()
        i = 0

        def take() -> str:
            nonlocal i
            if i >= len(words):
                raise TraceError(where, f"{words[-1]} needs a value")
            i += 1
            return words[i - 1]

        def end_module():
            if module is not None and not module_seen:
                raise TraceError(where, f"-m {module} without any of its options")

        while i < len(words):
            negate = words[i] == "!"
            if negate:
                i += 1
                if i >= len(words) or words[i] not in NEGATABLE:
                    raise TraceError(where, f"'!' before {words[i] if i < len(words) else 'nothing'} is not understood")
            option = words[i]
            i += 1
            if module is not None and option in MODULES[module]:
                if option in module_seen:
                    raise TraceError(where, f"{option} given twice in one -m {module}")
                module_seen.add(option)
                steps.append(_negated(self._module_test(module, option, take(), where, proto), negate))
                if module == "owner":
                    requires.append((OUTPUT, "-m owner: only a local socket has an owner (OUTPUT)"))
                continue
            end_module()
            module = None
            if option in seen:
                raise TraceError(where, f"{option} given twice")
            if option != "-m":
                seen.add(option)
            if option == "-p":
                proto = take()
                if proto not in ("tcp", "udp"):
                    raise TraceError(where, f"protocol {proto!r} is not understood")
                steps.append(lambda p, proto=proto: p.proto == proto)
            elif option in ("-s", "-d"):
                network = read_network(take(), where)
                family.versions.add(network.version)
                attribute = "src" if option == "-s" else "dst"
                steps.append(_negated(lambda p, n=network, a=attribute: getattr(p, a) in n, negate))
            elif option in ("-i", "-o"):
                name = take()
                attribute, hook = ("iif", PREROUTING) if option == "-i" else ("oif", OUTPUT)
                requires.append((hook, f"{option} is not valid here (iptables allows it in {hook.upper()} only)"))
                steps.append(_negated(lambda p, name=name, a=attribute: interface_matches(getattr(p, a), name), negate))
            elif option in ("--dport", "--sport"):
                if proto is None:
                    raise TraceError(where, f"{option} without -p tcp|udp before it")
                port = read_port(take(), where)
                if option == "--dport":
                    steps.append(_negated(lambda p, port=port: p.dport == port, negate))
                else:
                    steps.append(_negated(lambda p, port=port: p.sport == port, negate))
            elif option == "-m":
                module = take()
                if module not in MODULES:
                    raise TraceError(where, f"match -m {module} is not understood")
                module_seen = set()
            elif option in ("-j", "-g"):
                target = take()
                rest = words[i:]
                i = len(words)
                return self._target(table, chain, option, target, rest, steps, requires, proto, where)
            else:
                raise TraceError(where, f"option {option!r} is not understood")
        raise TraceError(where, "a rule without a target (-j or -g) is not understood")

    def _module_test(self, module: str, option: str, value: str, where: str, proto: str | None):
        if module == "owner":
            if option == "--uid-owner":
                if not value.isdigit():
                    raise TraceError(where, f"--uid-owner {value!r}: only numeric uids are understood")
                uid = int(value)
                return lambda p: p.uid == uid
            gid = self._gid(value, where)
            return lambda p: p.gid == gid  # the fsgid only: without --suppl-groups none other counts
        if module == "multiport":
            if proto is None:
                raise TraceError(where, "-m multiport without -p tcp|udp before it")
            ports = {read_port(port, where) for port in value.split(",")}
            if not 1 <= len(value.split(",")) <= 15:
                raise TraceError(where, "multiport takes 1 to 15 ports")
            return lambda p: p.dport in ports
        if module == "conntrack":
            states = set(value.split(","))
            if not states <= CT_STATES:
                raise TraceError(where, f"--ctstate {value}: states {sorted(states - CT_STATES)} are not understood")
            return lambda p: p.ctstate in states
        value_, mask = read_mark(value, where)
        attribute = "mark" if module == "mark" else "ctmark"
        return lambda p: getattr(p, attribute) & mask == value_

    def _target(
        self,
        table: _Table,
        chain: str,
        option: str,
        target: str,
        rest: list[str],
        steps: list,
        requires: list,
        proto: str | None,
        where: str,
    ) -> Rule:
        def rule(action=CONTINUE, jump=None, effect=None):
            return Rule(where, tuple(steps) + ((effect,) if effect else ()), action, jump, tuple(requires))

        def options() -> dict[str, str]:
            if len(rest) % 2:
                raise TraceError(where, f"-j {target} options {' '.join(rest)!r} are not understood")
            values = dict(zip(rest[::2], rest[1::2]))
            if len(values) != len(rest) // 2:
                raise TraceError(where, f"-j {target}: an option given twice")
            return values

        if option == "-g" or target not in VERDICTS and target not in EXTENSIONS:
            if target not in table.user:
                raise TraceError(
                    where,
                    f"{option} {target}: no such chain in {table.name} (or a target the tracer does not understand)",
                )
            if rest:
                raise TraceError(where, f"words after {option} {target} are not understood")
            return rule(GOTO if option == "-g" else JUMP, target)
        if target in VERDICTS:
            if rest:
                raise TraceError(where, f"-j {target} takes no options")
            return rule(VERDICTS[target])
        if target == "CONNMARK":  # the whole mark, both ways (no masks)
            if rest == ["--save-mark"]:
                return rule(effect=save_mark)
            if rest == ["--restore-mark"]:
                return rule(effect=restore_mark)
            raise TraceError(where, "only -j CONNMARK --save-mark or --restore-mark is understood")
        values = options()
        if target == "REDIRECT":
            port_option = next((o for o in ("--to-ports", "--to-port") if o in values), None)
            if port_option is None or table.name != "nat" or set(values) != {port_option}:
                raise TraceError(where, "only -j REDIRECT --to-ports P (or --to-port P), in nat, is understood")
            if proto is None:
                raise TraceError(where, "REDIRECT --to-ports needs -p tcp|udp")
            if chain not in REDIRECT_KIND:
                raise TraceError(
                    where, f"REDIRECT in {chain}: the tracer knows REDIRECTs only in {', '.join(REDIRECT_KIND)}"
                )
            kind, port = REDIRECT_KIND[chain], read_port(values[port_option], where)
            return rule(ACCEPT, effect=lambda p: p.redirect_to(kind, port) or True)
        if target == "TPROXY":
            if table.name != "mangle" or not set(values) <= {"--tproxy-mark", "--on-port"} or "--on-port" not in values:
                raise TraceError(where, "only -j TPROXY [--tproxy-mark V[/M]] --on-port P, in mangle, is understood")
            if proto is None:
                raise TraceError(where, "TPROXY needs -p tcp|udp")
            requires.append((PREROUTING, "TPROXY is valid in PREROUTING only"))
            port = read_port(values["--on-port"], where)
            mark, mask = read_mark(values.get("--tproxy-mark", "0/0"), where)

            def tproxy(p: Packet) -> bool:  # assigns the listener's socket, marks, accepts
                p.tproxy_to(port)
                p.mark = (p.mark & ~mask & 0xFFFFFFFF) ^ mark
                return True

            return rule(ACCEPT, effect=tproxy)
        if target == "MARK":
            if set(values) != {"--set-mark"}:
                raise TraceError(where, "only -j MARK --set-mark V[/M] is understood")
            mark, mask = read_mark(values["--set-mark"], where)

            def set_mark(p: Packet) -> bool:  # zero the mask's bits, then OR the value in
                p.mark = (p.mark & ~mask & 0xFFFFFFFF) | mark
                return True

            return rule(effect=set_mark)
        # CT
        if (
            table.name != "raw"
            or set(values) != {"--zone"}
            or not values["--zone"].isdigit()
            or int(values["--zone"]) > 65535
        ):
            raise TraceError(where, "only -j CT --zone N, in raw, is understood")
        zone = int(values["--zone"])
        return rule(effect=lambda p: p.set_zone(zone) or True)


def _assign_families(families: list[_Family]) -> dict[int, _Family]:
    """Each block's family, from the addresses it names; blocks that name none follow the
    order accel writes them in (IPv4, then IPv6)."""
    if len(families) > 2:
        raise TraceError(families[2].where, "more than two families of tables (IPv4 then IPv6 expected)")
    assigned: dict[int, _Family] = {}
    for position, family in enumerate(families):
        if len(family.versions) > 1:
            raise TraceError(family.where, "this block of tables names both IPv4 and IPv6 addresses")
        version = next(iter(family.versions)) if family.versions else (4, 6)[position]
        if version in assigned:
            raise TraceError(family.where, f"a second block of IPv{version} tables")
        assigned[version] = family
    return assigned


def _negated(test, negate: bool):
    return (lambda p: not test(p)) if negate else test


def trace_iptables(text: str, flow: Flow, *, group_ids: Mapping[str, int] | None = None) -> Verdict:
    """The verdict for one flow through iptables-restore text (parse once with IptablesTracer to
    trace many)."""
    return IptablesTracer(text, group_ids=group_ids).trace(flow)
