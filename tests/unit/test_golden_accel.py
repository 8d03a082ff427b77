"""accel's own goldens, for what Istio has none for: the nftables rendering with sets (--nft-sets)
and the eBPF dry run, for every case of Istio's case table, in tests/golden/render/{nft-sets,ebpf}.

ACCEL_UPDATE_GOLDENS=1 rewrites them (and removes those of cases that are gone); review each
diff (git diff tests/golden) before committing it: a golden holds what was rendered, not what is
right. An eBPF golden holds the pod's map entries (the program table and the notes around them
are the same for every spec, checked below), or the backend's refusal.
"""

from __future__ import annotations

import types

import pytest

from accel.ebpf import maps
from accel.render import render_ebpf, render_ebpf_text, render_nftables
from tests.goldens import GOLDEN, check, updating
from tests.reference import CASE_GROUPS, GoldenCase, golden_cases

RENDERED = GOLDEN / "render"
KINDS = ("nft-sets", "ebpf")


def case_table() -> dict[str, GoldenCase]:
    """Golden name -> case. The iptables and nftables suites are one case table (the nftables
    suite has one case more), so a name has one golden; istio-cni's cases are prefixed cni-."""
    table: dict[str, GoldenCase] = {}
    for case in golden_cases():
        table[f"cni-{case.name}" if case.suite == "cni-sidecar" else case.name] = case
    return table


CASES = case_table()


@pytest.fixture(autouse=True)
def case_groups(monkeypatch):
    """Owner groups resolve as where the integration tests load rules (CASE_GROUPS), not as on this
    machine, whose /etc/group would otherwise decide between entries and a refusal."""

    def getgrnam(name):
        if name not in CASE_GROUPS:
            raise KeyError(name)
        return types.SimpleNamespace(gr_gid=CASE_GROUPS[name])

    monkeypatch.setattr(maps, "grp", types.SimpleNamespace(getgrnam=getgrnam))


def rendered(kind: str, case: GoldenCase) -> str:
    if kind == "nft-sets":
        return render_nftables(case.spec, sets=True)
    try:
        text = render_ebpf_text(case.spec)
    except maps.UnsupportedSpec as error:
        return f"refused: {error}\n"
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", CASES)
def test_renders_golden(kind, name):
    check(RENDERED / kind / f"{name}.golden", rendered(kind, CASES[name]))


@pytest.mark.parametrize("kind", KINDS)
def test_no_golden_without_a_case(kind):
    stale = sorted(set((RENDERED / kind).glob("*.golden")) - {RENDERED / kind / f"{name}.golden" for name in CASES})
    if updating():
        for path in stale:
            path.unlink()
    else:
        assert stale == []


def test_the_suites_share_their_cases():
    """One golden per name is sound only if a name means the same spec in both suites."""
    for case in golden_cases():
        if case.suite == "iptables":
            assert case.spec == CASES[case.name].spec, case.name
    assert sum(case.suite != "cni-sidecar" for case in CASES.values()) == 28


def test_the_ebpf_dry_run_is_the_same_for_every_render(monkeypatch):
    """Deterministic for a spec: configuration id 0 (the backend draws a new one at each apply),
    and nothing but the entries depends on the spec."""
    configs, real = [], maps.pod_entries

    def pod_entries(spec, config, *args):
        configs.append(config)
        return real(spec, config, *args)

    monkeypatch.setattr(maps, "pod_entries", pod_entries)
    comments = set()
    for case in CASES.values():
        try:
            assert render_ebpf(case.spec) == render_ebpf(case.spec)
        except maps.UnsupportedSpec:
            continue
        comments.add(tuple(line for line in render_ebpf_text(case.spec).splitlines() if line.startswith("#")))
    assert configs and set(configs) == {0}
    assert len(comments) == 1


def test_a_difference_fails_with_a_diff(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCEL_UPDATE_GOLDENS", raising=False)
    path = tmp_path / "case.golden"
    path.write_text("ports inbound-include 8080\n")
    with pytest.raises(pytest.fail.Exception, match=r"(?s)-ports inbound-include 8080\n\+ports inbound-include 9090"):
        check(path, "ports inbound-include 9090\n")
    with pytest.raises(pytest.fail.Exception, match="missing"):
        check(tmp_path / "new.golden", "x\n")
    monkeypatch.setenv("ACCEL_UPDATE_GOLDENS", "1")
    check(path, "ports inbound-include 9090\n")
    assert path.read_text() == "ports inbound-include 9090\n"
