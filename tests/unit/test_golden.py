"""Every Istio golden case renders identical to its golden file (after trimming whitespace)."""

import pytest

from accel import inputs
from accel.render import render_iptables, render_nftables, render_text
from tests.reference import REFERENCE, default_sidecar, golden_cases

CASES = golden_cases()


def test_reference_has_all_64_cases():
    suites = [case.suite for case in CASES]
    assert (suites.count("iptables"), suites.count("nftables"), suites.count("cni-sidecar")) == (27, 28, 9)
    assert len({case.raw["golden"] for case in CASES if case.suite == "cni-sidecar"}) == 8


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_renders_golden(case):
    assert render_text(case.spec, case.backend).strip() == case.expected


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4-pod", "dual-stack-pod"])
def test_stock_istio_init_args(ipv6):
    """The default injected sidecar, straight from istio-init's argv."""
    argv = default_sidecar()["argv"][1:]
    spec = inputs.from_istio_args(argv, env={}, enable_ipv6=ipv6)
    rules = render_iptables(spec)
    assert rules.ipv4 == (REFERENCE / "derived/default-sidecar.v4.restore").read_text()
    if ipv6:
        assert rules.ipv6 == (REFERENCE / "derived/default-sidecar.v6.restore").read_text()
    else:
        assert rules.ipv6 is None
    nft = (REFERENCE / f"derived/default-sidecar{'-ipv6' if ipv6 else ''}.nft").read_text()
    assert render_nftables(spec).strip() == nft.strip()


def test_golden_comparison_can_fail():
    """A one-port change must change the output: the golden tests are not vacuous."""
    case = next(c for c in CASES if c.name == "inbound-ports-include" and c.suite == "iptables")
    changed = case.spec.replace(inbound_ports_include=(32000, 31001))
    assert render_iptables(changed).text.strip() != case.expected


def test_nft_names_are_bare_as_istio_writes_them_unless_nft_would_misread_them():
    from accel.render.nftables import nft_name
    from accel.spec import SpecError

    for name in ("eth0", "not-istio-nic", "java", "veth.10", "lo"):
        assert nft_name(name, "f") == name
    for name in ("1abc", "counter", "eth@0", "ip6", "123"):
        assert nft_name(name, "f") == f'"{name}"'
    assert nft_name("202", "f", numeric=True) == "202"  # a gid, not a group called "202"
    with pytest.raises(SpecError, match="double quote"):
        nft_name('a"b', "exclude_interfaces")


def test_nft_declares_chains_it_jumps_to():
    """DNS capture with only IPv6 nameservers on a pod without IPv6: the jumps stay, the
    IPv6 rules go, and the jumped-to chains must still exist (Istio's nft builder drops them)."""
    from accel.spec import CaptureSpec

    spec = CaptureSpec(redirect_dns=True, dns_servers_v6=("fd00::10",))
    text = render_nftables(spec)
    assert "counter jump istio-output-dns" in text
    assert "add chain inet istio-proxy-nat istio-output-dns\n" in text
    assert "add chain inet istio-proxy-raw istio-inbound\n" in text
    assert any("IPv6 nameservers are not captured" in w for w in spec.warnings())
