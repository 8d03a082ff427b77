"""The eBPF decision against the rules it replaces, without a lab: every spec the eBPF backend
takes, flows that meet each of its rules, and the verdict of iptables, nftables and
nftables-sets (the packet tracer walking accel's own renderings) beside the eBPF decision
(bpf/decide.h under BPF_PROG_RUN, on maps the datapath's own code filled). Hypothesis picks the
specs; a disagreement is shrunk to the smallest spec and flow that show it, and printed. The lab
(test_compare.py) stays the final word: each kind of disagreement found here gets a lab case."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accel import inputs
from accel.ebpf.maps import UnsupportedSpec, check_supported
from accel.spec import WILDCARD, CaptureSpec
from tests.ebpf_decision import Decisions
from tests.flows import POD, grid, tracers
from tests.reference import CASE_GROUPS
from tests.strategies import capture_specs

pytestmark = pytest.mark.privileged

# The pod the flows are about: its own addresses, loopback and ::6 (the IPv6 inbound passthrough
# source, which istio-iptables puts on lo) are local (reached over lo).
LOCAL = [f"{POD[4]}/32", f"{POD[6]}/128", "127.0.0.0/8", "::1/128", "::6/128"]
ADDRESSES = [POD[4], POD[6]]
FLOWS_PER_SPEC = 60


@pytest.fixture(scope="module")
def decisions():
    loaded = Decisions()
    yield loaded
    loaded.close()


def numeric_groups(spec: CaptureSpec) -> CaptureSpec:
    """Owner groups as gids: the tracer resolves the case table's names, the datapath this node's
    group database, which need not have them."""

    def gids(groups):
        return groups if groups == WILDCARD else tuple(str(CASE_GROUPS.get(g, g)) for g in groups)

    return dataclasses.replace(
        spec, owner_groups_include=gids(spec.owner_groups_include), owner_groups_exclude=gids(spec.owner_groups_exclude)
    )


def supported(spec: CaptureSpec) -> bool:
    try:
        check_supported(spec)
        return True
    except UnsupportedSpec:
        return False


def disagreements(decisions: Decisions, spec: CaptureSpec, flows) -> list[tuple]:
    """(flow, the renderings' verdict, the eBPF decision) wherever they differ in kind or port."""
    named = tracers(spec)
    found = []
    with decisions.pod(spec, LOCAL, ADDRESSES) as pod:
        for flow in flows:
            if flow.direction == "inbound" and flow.lo:
                continue  # the second half of a local connection: the datapath decided it at connect()
            verdicts = {name: tracer.trace(flow) for name, tracer in named.items()}
            reference = verdicts["iptables"]
            assert all(v == reference for v in verdicts.values()), (flow, verdicts)  # test_trace.py's job
            decided = pod.verdict(flow)
            if (decided.kind, decided.port) != (reference.kind, reference.port):
                found.append((flow, str(reference), str(decided)))
    return found


NAMED = {
    "istio-init": [],
    "ipv6-dns": ["--redirect-dns"],
    "tproxy": ["-m", "TPROXY"],
    "lists": ["-i", "10.0.0.0/8,fd00::/16", "-x", "10.96.0.0/12", "-o", "9000", "-q", "7777", "-b", "8080,9091,15008"],
    "ids": ["-u", "3,1337", "-g", "1337,4"],
    "dns-all": ["--redirect-dns", "--capture-all-dns"],
    "loopback-include": ["-i", "127.1.2.3/32"],
}


@pytest.mark.parametrize("name", NAMED)
def test_the_decision_agrees_with_the_rules_on_every_flow_of_a_grid(decisions, name):
    spec = inputs.from_istio_args([*inputs.ISTIO_INIT_DEFAULT_ARGS, *NAMED[name]], enable_ipv6=name.startswith("ipv6"))
    flows = grid(spec)
    assert len(flows) > 100
    assert disagreements(decisions, spec, flows) == []


def test_a_wrong_decision_is_caught(decisions, monkeypatch):
    """The comparison can fail: the same pod with its excluded outbound ports left out of its
    entries must disagree with the rules on exactly the flows to those ports."""
    import accel.ebpf.maps as maps

    spec = inputs.from_istio_args([*inputs.ISTIO_INIT_DEFAULT_ARGS, "-o", "9000"])
    real = maps.pod_entries

    def without_port_exclusions(*args, **kwargs):
        entries = real(*args, **kwargs)
        entries.ports = [key for key in entries.ports if key.kind != maps.PORT_OUT_EXCLUDE]
        return entries

    monkeypatch.setattr("tests.ebpf_decision.pod_entries", without_port_exclusions)
    found = disagreements(decisions, spec, grid(spec))
    assert found and all(flow.dport == 9000 for flow, _, _ in found)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=False,
)
@given(capture_specs.map(numeric_groups).filter(supported), st.integers(0, 2**32))
def test_the_decision_agrees_with_the_rules_for_any_spec(decisions, spec, seed):
    """100 specs of hypothesis' choosing, 60 flows each: about 6,000 cases a run."""
    flows = grid(spec)
    sample = random.Random(seed).sample(flows, min(len(flows), FLOWS_PER_SPEC))
    found = disagreements(decisions, spec, sample)
    assert found == [], f"{len(found)} of {len(sample)} flows: {found[:3]}"
