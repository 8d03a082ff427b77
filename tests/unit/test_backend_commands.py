"""What the rule backends run in a pod, in order, without root: each scenario gives a backend a
fake runner that records every command (argv, options, standard input) and libnftables call and
answers as scripted; the transcript must equal its golden in tests/golden/backends/
(ACCEL_UPDATE_GOLDENS=1 rewrites them). The privileged tests show the same commands do the
right thing to a kernel; these pin down which commands those are."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from accel import inputs
from accel.backends import BackendError, IptablesBackend, NftablesBackend
from accel.render import render_nftables
from tests.goldens import GOLDEN, check, updating

GOLDENS = GOLDEN / "backends"
NETNS = "accel-pod"
STOCK_ARGS = list(inputs.ISTIO_INIT_DEFAULT_ARGS)
STOCK = inputs.from_istio_args(STOCK_ARGS, {})
STOCK_V6 = inputs.from_istio_args(STOCK_ARGS, {}, enable_ipv6=True)
TPROXY = inputs.from_istio_args(["-m", "TPROXY", "-b", "*", "-i", "*"], {})
TPROXY_V6 = inputs.from_istio_args(["-m", "TPROXY", "-b", "*", "-i", "*"], {}, enable_ipv6=True)
LEGACY_RULES = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 9 -j ACCEPT\nCOMMIT\n"
ROUTE_EXISTS = "RTNETLINK answers: File exists"


@dataclass(frozen=True)
class Pod:
    netns: str = NETNS


@dataclass(frozen=True)
class Fail:
    """A scripted failure: a command's non-zero exit, or an nft error."""

    stderr: str
    returncode: int = 1


class FakeRunner:
    """The Runner interface, recording. `runs` answers commands (keyed by their shell-quoted argv)
    and `nft` libnftables calls (keyed by the commands) with stdout or a Fail, one answer a call,
    the last one repeating; anything unscripted succeeds with no output. `foreign`: network
    namespaces another user namespace owns."""

    def __init__(self, runs: dict | None = None, nft: dict | None = None, foreign: tuple[str, ...] = ()):
        self.runs = {key: list(answers) for key, answers in (runs or {}).items()}
        self.nfts = {key: list(answers) for key, answers in (nft or {}).items()}
        self.foreign = set(foreign)
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(text)

    def _record(self, head: str, text: str | None, answer) -> None:
        self.lines.append(head)
        self.lines += [f"  | {line}" for line in (text or "").splitlines()]
        if isinstance(answer, Fail):
            self.lines.append(f"  -> exit {answer.returncode}: {answer.stderr}")

    @staticmethod
    def _answer(answers: dict, key: str):
        queue = answers.get(key)
        if not queue:
            return ""
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def run(self, argv, *, input=None, netns=None, userns=False, env=None) -> subprocess.CompletedProcess:
        answer = self._answer(self.runs, shlex.join(argv))
        options = [
            f"netns={netns}",
            *(["userns"] if userns else []),
            *(f"{key}={value}" for key, value in sorted((env or {}).items())),
        ]
        self._record(f"run {' '.join(options)}: {shlex.join(argv)}", input, answer)
        if isinstance(answer, Fail):
            return subprocess.CompletedProcess(argv, answer.returncode, "", answer.stderr)
        return subprocess.CompletedProcess(argv, 0, answer, "")

    def nft(self, netns, commands, json_output=False) -> str:
        answer = self._answer(self.nfts, commands)
        self._record(f"nft netns={netns}{' json' if json_output else ''}:", commands, answer)
        if isinstance(answer, Fail):
            raise BackendError(f"nft: {answer.stderr}")
        return answer

    def owned_by_other(self, netns) -> bool:
        return netns in self.foreign


def nft_listing(*tables: tuple[str, int]) -> str:
    """`nft -j list ruleset` (or `list tables`, with no rules) for tables ("family name", rules)."""
    items: list[dict] = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
    for table, rules in tables:
        family, name = table.split()
        items.append({"table": {"family": family, "name": name, "handle": len(items)}})
        items += [{"rule": {"family": family, "table": name, "chain": "c", "handle": n}} for n in range(rules)]
    return json.dumps({"nftables": items})


def nft_tables(spec) -> list[tuple[str, int]]:
    """The tables the nftables backend's transaction for `spec` creates, as nft_listing() takes them."""
    return [(f"inet {name}", 1) for name in re.findall(r"^add table inet (\S+)$", render_nftables(spec), re.M)]


def apply(runner: FakeRunner, backend, spec) -> None:
    runner.note("== apply")
    try:
        backend.apply(Pod(), spec)
    except BackendError as error:
        runner.note(f"== refused: {error}")


def remove(runner: FakeRunner, backend) -> None:
    runner.note("== remove")
    backend.remove(Pod())


SCENARIOS = {}


def scenario(function):
    SCENARIOS[function.__name__.replace("_", "-")] = function
    return function


@scenario
def iptables_legacy_rules_present():
    """The legacy tables hold rules: iptables-legacy, as istio-iptables would pick; apply, then
    remove by replaying the inverse. No nft tables to look at."""
    runner = FakeRunner(runs={"iptables-legacy-save": [LEGACY_RULES]})
    backend = IptablesBackend(runner=runner)
    apply(runner, backend, STOCK)
    remove(runner, backend)
    return runner


@scenario
def iptables_nft_apply_remove():
    """No legacy rules: iptables-nft, both families. Removal drops the nft tables the apply
    created (ip nat, ip6 nat) and keeps the one that was there (ip filter) and the one someone
    else has put rules in meanwhile (ip mangle)."""
    before = nft_listing(("ip filter", 1))
    after = nft_listing(("ip filter", 1), ("ip nat", 0), ("ip6 nat", 0), ("ip mangle", 2))
    runner = FakeRunner(nft={"list ruleset": [before, after]})
    backend = IptablesBackend(runner=runner)
    apply(runner, backend, STOCK_V6)
    remove(runner, backend)
    return runner


@scenario
def iptables_failed_ipv6_restore():
    """ip6tables-restore refuses the IPv6 rules: the IPv4 rules already loaded are taken back and
    the nft table they created is dropped; a remove afterwards has nothing to do."""
    runner = FakeRunner(
        runs={"ip6tables-nft-restore --noflush": [Fail("ip6tables-restore v1.8.9 (nf_tables): line 5 failed")]},
        nft={"list ruleset": [nft_listing(), nft_listing(("ip nat", 0))]},
    )
    backend = IptablesBackend(runner=runner)
    apply(runner, backend, STOCK_V6)
    remove(runner, backend)
    return runner


@scenario
def iptables_tproxy_routes():
    """TPROXY on an IPv6 pod: the policy routes of both families are added after the rules and
    removed, in reverse, before them."""
    runner = FakeRunner()
    backend = IptablesBackend("legacy", runner=runner)
    apply(runner, backend, TPROXY_V6)
    remove(runner, backend)
    return runner


@scenario
def iptables_failed_tproxy_route_undone_rule_by_rule():
    """TPROXY's route exists already: the rule added before it is deleted, then the rules are
    taken back; the inverse restore fails (as when the rules were changed meanwhile), so each
    line of it runs on its own; the nft tables the apply created are dropped."""
    runner = FakeRunner(
        runs={
            "ip -4 route add local default dev lo table 133": [Fail(ROUTE_EXISTS, 2)],
            "iptables-nft-restore --noflush": ["", Fail("iptables-restore: line 2 failed")],
        },
        nft={"list ruleset": [nft_listing(), nft_listing(("ip mangle", 0), ("ip nat", 0))]},
    )
    backend = IptablesBackend("nft", runner=runner)
    apply(runner, backend, TPROXY)
    return runner


@scenario
def iptables_pod_with_its_own_user_namespace():
    """hostUsers: false: every iptables tool runs inside the pod's user namespace, with a lock
    file its root can create; libnftables runs from a thread in the pod's network namespace."""
    runner = FakeRunner(foreign=(NETNS,))
    backend = IptablesBackend(runner=runner)
    apply(runner, backend, STOCK)
    remove(runner, backend)
    return runner


@scenario
def nftables_apply_remove():
    """One transaction, after checking none of its tables exists; removal deletes exactly the
    tables it created, found present."""
    runner = FakeRunner(
        nft={"list tables": [nft_listing(("ip filter", 0)), nft_listing(("ip filter", 0), *nft_tables(STOCK))]}
    )
    backend = NftablesBackend(runner=runner)
    apply(runner, backend, STOCK)
    remove(runner, backend)
    return runner


@scenario
def nftables_table_clash():
    """A table of the transaction exists already (the transaction would flush it): refused before
    anything is loaded."""
    runner = FakeRunner(nft={"list tables": [nft_listing(("inet istio-proxy-nat", 0))]})
    apply(runner, NftablesBackend(runner=runner), STOCK)
    return runner


@scenario
def nftables_failed_tproxy_route():
    """TPROXY's IPv6 route exists already: the routes added before it are deleted in reverse, and
    the transaction's tables are deleted."""
    runner = FakeRunner(
        runs={"ip -6 route add local default dev lo table 133": [Fail(ROUTE_EXISTS, 2)]},
        nft={"list tables": [nft_listing(), nft_listing(*nft_tables(TPROXY_V6))]},
    )
    backend = NftablesBackend(runner=runner)
    apply(runner, backend, TPROXY_V6)
    remove(runner, backend)
    return runner


@scenario
def iptables_switch_to_another_spec():
    """A captured pod switched to another spec (IPv4 only to IPv6 too, TPROXY to REDIRECT): per
    family one restore whose table blocks take the old rules out and put the new ones in (each
    table one commit); the routes only TPROXY needed go; a later remove takes the new rules out."""
    runner = FakeRunner()
    backend = IptablesBackend("nft", runner=runner)
    apply(runner, backend, TPROXY)
    apply(runner, backend, STOCK_V6)
    remove(runner, backend)
    return runner


@scenario
def iptables_switch_fails_and_puts_back():
    """The switch's IPv6 restore fails: the IPv4 family, switched already, is put back (old rules
    in, new out) and the old capture stays applied."""
    runner = FakeRunner(runs={"ip6tables-nft-restore --noflush": [Fail("ip6tables-restore: line 3 failed")]})
    backend = IptablesBackend("nft", runner=runner)
    apply(runner, backend, STOCK)
    apply(runner, backend, STOCK_V6)
    remove(runner, backend)
    return runner


@scenario
def nftables_switch_in_one_transaction():
    """A captured pod switched from TPROXY to REDIRECT: one transaction deletes the table the new
    spec has no use for (mangle) and refills the others; then the TPROXY routes go."""
    runner = FakeRunner(
        nft={"list tables": [nft_listing(), nft_listing(*nft_tables(TPROXY)), nft_listing(*nft_tables(STOCK))]}
    )
    backend = NftablesBackend(runner=runner)
    apply(runner, backend, TPROXY)
    apply(runner, backend, STOCK)
    remove(runner, backend)
    return runner


@scenario
def nftables_adopted_then_removed():
    """Another process applied the capture (a node's pod): adopted from its record, then removed."""
    runner = FakeRunner(nft={"list tables": [nft_listing(*nft_tables(STOCK))]})
    backend = NftablesBackend(runner=runner)
    backend.adopt(Pod(), STOCK, {"tables": [table.split()[1] for table, _ in nft_tables(STOCK)]})
    remove(runner, backend)
    return runner


def transcript(name: str) -> str:
    function = SCENARIOS[name]
    header = [f"# {line.strip()}" for line in function.__doc__.splitlines()]
    return "\n".join([*header, *function().lines]) + "\n"


@pytest.mark.parametrize("name", SCENARIOS)
def test_backend_commands_golden(name):
    check(GOLDENS / f"{name}.golden", transcript(name))


def test_no_golden_without_a_scenario():
    stale = sorted(set(GOLDENS.glob("*.golden")) - {GOLDENS / f"{name}.golden" for name in SCENARIOS})
    if updating():
        for path in stale:
            path.unlink()
    else:
        assert stale == []


def test_a_different_command_fails(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("ACCEL_UPDATE_GOLDENS", raising=False)
    golden, recorded = tmp_path / "x.golden", transcript("iptables-legacy-rules-present")
    golden.write_text(recorded)
    check(golden, recorded)
    changed = recorded.replace("iptables-legacy-save", "iptables-nft-save", 1)
    with pytest.raises(
        pytest.fail.Exception,
        match=r"(?s)-run netns=accel-pod: iptables-legacy-save\n"
        r"\+run netns=accel-pod: iptables-nft-save",
    ):
        check(golden, changed)


REFUSALS = {
    "iptables-failed-ipv6-restore": "ip6tables-nft-restore: ip6tables-restore v1.8.9 (nf_tables): line 5 failed",
    "iptables-failed-tproxy-route-undone-rule-by-rule": (
        f"pod routing: ip -4 route add local default dev lo table 133: {ROUTE_EXISTS}"
    ),
    "nftables-table-clash": f"nftables: table inet istio-proxy-nat already present in {NETNS}",
    "nftables-failed-tproxy-route": f"pod routing: ip -6 route add local default dev lo table 133: {ROUTE_EXISTS}",
    "iptables-switch-fails-and-puts-back": "ip6tables-nft-restore: ip6tables-restore: line 3 failed",
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_only_the_failure_scenarios_are_refused(name):
    refusals = [line for line in transcript(name).splitlines() if line.startswith("== refused: ")]
    assert refusals == ([f"== refused: {REFUSALS[name]}"] if name in REFUSALS else [])


def test_the_variant_is_chosen_as_istio_iptables_does():
    assert "run netns=accel-pod: iptables-legacy-restore --noflush" in transcript("iptables-legacy-rules-present")
    assert "run netns=accel-pod: iptables-nft-restore --noflush" in transcript("iptables-nft-apply-remove")
