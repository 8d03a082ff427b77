"""Backends apply a spec to a pod's namespace, report it, and remove it without residue."""

import pytest

from accel import inputs
from accel.backends import BackendError, get_backend
from accel.netns import Netns
from accel.render import render_iptables
from tests.kernel_state import rule_state

pytestmark = pytest.mark.privileged

BACKENDS = ["iptables", "iptables-legacy", "nftables"]
SPECS = {
    "stock": (list(inputs.ISTIO_INIT_DEFAULT_ARGS), False),
    "tproxy-dns-ipv6": (
        [
            "-m",
            "TPROXY",
            "-b",
            "*",
            "-i",
            "*",
            "-x",
            "10.0.0.0/8",
            "-k",
            "eth9",
            "--redirect-dns",
            "--capture-all-dns",
            "--drop-invalid",
        ],
        True,
    ),
}


class Pod:
    def __init__(self, netns):
        self.netns = netns


def spec_for(name):
    args, ipv6 = SPECS[name]
    return inputs.from_istio_args(args, {}, enable_ipv6=ipv6)


@pytest.mark.parametrize("spec_name", SPECS)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_apply_then_remove_leaves_the_namespace_as_it_was(backend_name, spec_name):
    spec = spec_for(spec_name)
    with Netns.scratch("accel-test") as ns:
        pod, backend = Pod(ns.name), get_backend(backend_name)
        before = rule_state(ns.name)
        backend.apply(pod, spec)
        during = rule_state(ns.name)
        status = backend.status(pod)
        backend.remove(pod)
        assert rule_state(ns.name) == before
    assert during != before and status["applied"]
    if spec.tproxy:
        assert "fwmark 0x539 lookup 133" in during["ip-rules"]
        assert "local default dev lo table 133" in during["ip-routes"]
    if backend_name == "nftables":
        assert "istio-proxy-nat" in status["istio_tables"] and "istio-proxy-nat" in during["nft"]
    else:
        assert status["variant"] == ("legacy" if backend_name.endswith("legacy") else "nft")
        assert status["istio_chains"]["ip/nat"]["ISTIO_OUTPUT"] > 0
        assert ("ip6/nat" in status["istio_chains"]) == spec.enable_ipv6


def test_iptables_picks_its_variant_as_istio_iptables_does():
    with Netns.scratch("accel-test") as ns:
        backend = get_backend("iptables")
        assert backend.choose_variant(Pod(ns.name))[0] == "nft"
        ns.run(
            ["iptables-legacy", "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT"], check=True
        )
        variant, reason = backend.choose_variant(Pod(ns.name))
        assert variant == "legacy" and "legacy tables already hold rules" in reason


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_failed_apply_leaves_nothing_behind(backend_name):
    """TPROXY's route cannot be added (it exists): everything already loaded is taken back."""
    spec = spec_for("tproxy-dns-ipv6")
    with Netns.scratch("accel-test") as ns:
        ns.run(["ip", "-6", "route", "add", "local", "default", "dev", "lo", "table", "133"], check=True)
        before = rule_state(ns.name)
        backend = get_backend(backend_name)
        with pytest.raises(BackendError, match="pod routing"):
            backend.apply(Pod(ns.name), spec)
        assert rule_state(ns.name) == before
        assert not backend.status(Pod(ns.name))["applied"]


def test_bad_rules_fail_cleanly_in_every_backend():
    """A group name that does not resolve: the kernel refuses, nothing is half-applied."""
    spec = spec_for("stock").replace(owner_groups_include=("no-such-group-accel",))
    for backend_name in BACKENDS:
        with Netns.scratch("accel-test") as ns:
            before = rule_state(ns.name)
            with pytest.raises(BackendError):
                get_backend(backend_name).apply(Pod(ns.name), spec)
            assert rule_state(ns.name) == before, backend_name


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_never_applies_over_existing_istio_rules(backend_name):
    spec = spec_for("stock")
    with Netns.scratch("accel-test") as ns:
        if backend_name == "nftables":
            ns.run(["nft", "add table inet istio-proxy-nat; add chain inet istio-proxy-nat keep"], check=True)
        else:
            variant = "legacy" if backend_name.endswith("legacy") else "nft"
            ns.run([f"iptables-{variant}-restore", "--noflush"], input=render_iptables(spec).ipv4, check=True)
        before = rule_state(ns.name)
        with pytest.raises(BackendError, match="already present"):
            get_backend(backend_name).apply(Pod(ns.name), spec)
        assert rule_state(ns.name) == before


def test_remove_without_apply_is_harmless():
    with Netns.scratch("accel-test") as ns:
        before = rule_state(ns.name)
        for backend_name in BACKENDS + ["none"]:
            get_backend(backend_name).remove(Pod(ns.name))
        assert rule_state(ns.name) == before
