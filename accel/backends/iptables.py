"""The reference backend: Istio's own rules, loaded with iptables-restore in the pod's namespace.

Which iptables: istio-iptables uses iptables-legacy when the legacy tables already hold rules,
and iptables-nft (Debian's default `iptables`) otherwise; accel decides the same way unless a
variant is asked for. Removal replays the exact inverse of what was loaded, so the namespace's
rule set is as before; a failed apply is rolled back the same way. iptables-nft's tables that the
apply created are deleted too. iptables-legacy's cannot be: x_tables registers a table in a
namespace on first use and keeps it, empty, until the namespace ends.
"""

from __future__ import annotations

import shlex

from ..render import IptablesRules, render_iptables
from ..spec import CaptureSpec
from . import routes
from .base import Backend, BackendError, Target
from .libnft import table_rule_counts
from .runner import Runner

VARIANTS = ("nft", "legacy")
NFT_FAMILIES = ("ip", "ip6")  # where iptables-nft keeps its tables
USERNS_LOCKFILE = "/tmp/accel-xtables-userns.lock"  # where the pod's root can create iptables-legacy's lock


def _binary(variant: str, version: int, tool: str) -> str:
    return f"ip{'6' if version == 6 else ''}tables-{variant}-{tool}"


def _blocks(restore: str) -> dict[str, list[str]]:
    """An iptables-restore input as its table blocks: table -> the lines between *table and COMMIT."""
    blocks: dict[str, list[str]] = {}
    table = None
    for line in restore.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            blocks.setdefault(table, [])
        elif line == "COMMIT":
            table = None
        elif table is not None:
            blocks[table].append(line)
    return blocks


def _merged(first: str, then: str) -> str:
    """One restore input doing `first` then `then`, table by table: each table one commit."""
    one, two = _blocks(first), _blocks(then)
    return "".join(
        f"*{table}\n" + "".join(line + "\n" for line in one.get(table, []) + two.get(table, [])) + "COMMIT\n"
        for table in dict.fromkeys([*one, *two])
    )


class IptablesBackend(Backend):
    def __init__(self, variant: str | None = None, runner: Runner | None = None):
        if variant not in (None, *VARIANTS):
            raise ValueError(f"unknown iptables variant {variant!r}")
        self.variant = variant
        self.name = "iptables" if variant is None else f"iptables-{variant}"
        self.runner = runner or Runner()
        self._applied: dict[str, tuple[str, IptablesRules, CaptureSpec, set[str]]] = {}

    def _run(self, argv: list[str], target: Target, input: str | None = None):
        """An iptables tool in the pod's network namespace, and in its user namespace if it has one
        (iptables-legacy's lock file then lives where the pod's root can create it)."""
        inside = self.runner.owned_by_other(target.netns)
        return self.runner.run(
            argv,
            input=input,
            netns=target.netns,
            userns=inside,
            env={"XTABLES_LOCKFILE": USERNS_LOCKFILE} if inside else None,
        )

    def choose_variant(self, target: Target) -> tuple[str, str]:
        if self.variant:
            return self.variant, f"iptables-{self.variant}, as asked"
        saved = self._run(["iptables-legacy-save"], target).stdout
        if any(line.startswith("-A") for line in saved.splitlines()):
            return "legacy", "iptables-legacy (legacy tables already hold rules, so istio-iptables would use them)"
        return "nft", "iptables-nft (no legacy rules here, so istio-iptables would use iptables-nft)"

    def describe(self, target: Target) -> str:
        return self.choose_variant(target)[1]

    def apply(self, target: Target, spec: CaptureSpec) -> None:
        if target.netns in self._applied:
            self._switch(target, spec)
            return
        variant, _ = self.choose_variant(target)
        present = self._istio_chains(target, variant, spec.enable_ipv6)
        if present:
            raise BackendError(
                f"{self.name}: {', '.join(present)} already present in {target.netns}; "
                "not loading Istio's rules over them"
            )
        rules = render_iptables(spec)
        tables_before = self._nft_tables(target, variant)
        loaded = []
        try:
            for version, text, undo in rules.by_family():
                result = self._run([_binary(variant, version, "restore"), "--noflush"], target, input=text)
                if result.returncode != 0:
                    raise BackendError(f"{_binary(variant, version, 'restore')}: {result.stderr.strip()}")
                loaded.append((version, undo))
            routes.add_routes(self.runner, target.netns, spec)
        except BaseException:
            for version, undo in reversed(loaded):
                self._undo(target, variant, version, undo)
            self._drop_created_tables(target, variant, tables_before)
            raise
        self._applied[target.netns] = (variant, rules, spec, tables_before)

    def _switch(self, target: Target, spec: CaptureSpec) -> None:
        """From the captured spec to `spec`: per family, one iptables-restore whose every table
        block takes the old rules out and puts the new in, so each table changes in one commit
        (restore commits table by table). A family that fails puts back the ones switched before."""
        variant, old_rules, old_spec, tables_before = self._applied[target.netns]
        rules = render_iptables(spec)
        old = {version: (text, undo) for version, text, undo in old_rules.by_family()}
        new = {version: (text, undo) for version, text, undo in rules.by_family()}
        switched: list[int] = []
        for version in sorted(old.keys() | new.keys()):
            forward = _merged(old.get(version, ("", ""))[1], new.get(version, ("", ""))[0])
            result = self._run([_binary(variant, version, "restore"), "--noflush"], target, input=forward)
            if result.returncode != 0:
                for done in reversed(switched):
                    self._run(
                        [_binary(variant, done, "restore"), "--noflush"],
                        target,
                        input=_merged(new.get(done, ("", ""))[1], old.get(done, ("", ""))[0]),
                    )
                raise BackendError(f"{_binary(variant, version, 'restore')}: {result.stderr.strip()}")
            switched.append(version)
        routes.switch_routes(self.runner, target.netns, old_spec, spec)
        self._applied[target.netns] = (variant, rules, spec, tables_before)

    def record(self, target: Target) -> dict:
        variant, _, _, tables_before = self._applied[target.netns]
        return {"variant": variant, "tables_before": sorted(tables_before)}

    def adopt(self, target: Target, spec: CaptureSpec, record: dict) -> None:
        self._applied[target.netns] = (record["variant"], render_iptables(spec), spec, set(record["tables_before"]))

    def remove(self, target: Target) -> None:
        state = self._applied.pop(target.netns, None)
        if state is None:
            return
        variant, rules, spec, tables_before = state
        routes.remove_routes(self.runner, target.netns, spec)
        for version, _, undo in reversed(rules.by_family()):
            self._undo(target, variant, version, undo)
        self._drop_created_tables(target, variant, tables_before)

    def _nft_tables(self, target: Target, variant: str) -> set[str]:
        return set(table_rule_counts(self.runner, target.netns, NFT_FAMILIES)) if variant == "nft" else set()

    def _drop_created_tables(self, target: Target, variant: str, before: set[str]) -> None:
        """iptables-nft creates its nat/mangle/raw tables on first use, and undoing the rules
        leaves them, empty. Delete those this apply created, if nothing else has put rules there."""
        if variant != "nft":
            return
        empty_new = [
            table
            for table, rules in table_rule_counts(self.runner, target.netns, NFT_FAMILIES).items()
            if table not in before and rules == 0
        ]
        if empty_new:
            self.runner.nft(target.netns, "".join(f"delete table {table}\n" for table in empty_new))

    def _undo(self, target: Target, variant: str, version: int, undo: str) -> None:
        """Remove what was loaded: atomically if the rules are all there, else rule by rule."""
        restore = self._run([_binary(variant, version, "restore"), "--noflush"], target, input=undo)
        if restore.returncode == 0:
            return
        table = None
        for line in undo.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line != "COMMIT":
                assert table is not None  # every undo begins with its *table line
                binary = f"ip{'6' if version == 6 else ''}tables-{variant}"
                self._run([binary, "-t", table, *shlex.split(line)], target)

    def _istio_chains(self, target: Target, variant: str, ipv6: bool) -> list[str]:
        found = []
        for version in (4, 6) if ipv6 else (4,):
            saved = self._run([_binary(variant, version, "save")], target).stdout
            table = None
            for line in saved.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line.startswith(":ISTIO_"):
                    found.append(f"{table}/{line[1:].split()[0]} (IPv{version})")
        return found

    def status(self, target: Target) -> dict:
        applied = self._applied.get(target.netns)
        variant = applied[0] if applied else self.choose_variant(target)[0]
        chains: dict[str, dict[str, int]] = {}
        for version in (4, 6):
            saved = self._run([_binary(variant, version, "save")], target).stdout
            table = None
            for line in saved.splitlines():
                if line.startswith("*"):
                    table = f"{'ip6' if version == 6 else 'ip'}/{line[1:]}"
                elif line.startswith(":ISTIO_"):
                    assert table is not None  # iptables-save names the table before its chains
                    chains.setdefault(table, {}).setdefault(line[1:].split()[0], 0)
                elif line.startswith("-A ISTIO_"):
                    assert table is not None  # and before its rules
                    counts = chains.setdefault(table, {})
                    chain = line.split()[1]
                    counts[chain] = counts.get(chain, 0) + 1
        return {
            "backend": self.name,
            "variant": variant,
            "applied": target.netns in self._applied,
            "istio_chains": chains,
        }
