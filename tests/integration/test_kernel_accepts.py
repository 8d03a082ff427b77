"""The kernel accepts every rendering, and loading it yields the state Istio's rules yield.

Each case runs in its own scratch network namespace (never the host's), with an /etc/group
that resolves the group names Istio's owner-group cases use.
"""

import pytest
from hypothesis import HealthCheck, given, settings

from accel import inputs
from accel.netns import Netns, group_file_with
from accel.render import render_iptables, render_nftables
from tests.reference import CASE_GROUPS, REFERENCE, default_sidecar, golden_cases
from tests.strategies import capture_specs

pytestmark = pytest.mark.privileged

CASES = golden_cases()
IPTABLES_CASES = [c for c in CASES if c.backend == "iptables"]
NFT_CASES = [c for c in CASES if c.backend == "nftables"]
VARIANTS = ("nft", "legacy")  # iptables 1.8 on Debian: the nf_tables and the legacy x_tables binary


def scratch():
    return Netns.scratch("accel-test", etc_files={"group": group_file_with(CASE_GROUPS)})


def restore_commands(rules, variant, *extra):
    commands = [([f"iptables-{variant}-restore", "--noflush", *extra], rules.ipv4)]
    if rules.ipv6 is not None:
        commands.append(([f"ip6tables-{variant}-restore", "--noflush", *extra], rules.ipv6))
    return commands


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", IPTABLES_CASES, ids=[c.id for c in IPTABLES_CASES])
def test_iptables_restore_test_accepts(case, variant):
    with scratch() as ns:
        for argv, text in restore_commands(render_iptables(case.spec), variant, "--test"):
            result = ns.run(argv, input=text)
            assert result.returncode == 0, f"{argv[0]}: {result.stderr}"


@pytest.mark.parametrize("sets", [False, True], ids=["rules", "sets"])
@pytest.mark.parametrize("case", NFT_CASES, ids=[c.id for c in NFT_CASES])
def test_nft_check_accepts(case, sets):
    with scratch() as ns:
        result = ns.run(["nft", "-c", "-f", "-"], input=render_nftables(case.spec, sets=sets))
        assert result.returncode == 0, result.stderr


def test_checks_can_fail():
    """The same checks reject a broken rendering, so the tests above are not vacuous."""
    case = next(c for c in NFT_CASES if c.name == "ipnets")
    broken_nft = render_nftables(case.spec).replace("10.0.0.0/8", "10.0.0.0/33")
    broken_ipt = render_iptables(case.spec).ipv4.replace("-N ISTIO_REDIRECT\n", "")
    with Netns.scratch("accel-test") as ns:
        assert ns.run(["nft", "-c", "-f", "-"], input=broken_nft).returncode != 0
        assert ns.run(["iptables-legacy-restore", "--noflush", "--test"], input=broken_ipt).returncode != 0
        groups = render_nftables(case.spec.replace(owner_groups_include=("java",)))
        assert ns.run(["nft", "-c", "-f", "-"], input=groups).returncode != 0  # no such group


def iptables_state(ns, variant, ipv6) -> str:
    """iptables-save output normalized as the reference's: comments dropped, tables sorted."""
    text = ""
    for save in [f"iptables-{variant}-save"] + ([f"ip6tables-{variant}-save"] if ipv6 else []):
        blocks, block = [], []
        for line in ns.run([save], check=True).stdout.splitlines():
            if line.startswith("#"):
                continue
            block.append(line)
            if line == "COMMIT":
                blocks.append(block)
                block = []
        text += "".join("\n".join(b) + "\n" for b in sorted(blocks, key=lambda b: b[0]))
    return text


ROUNDTRIP_IPT = [c for c in IPTABLES_CASES if c.derived("iptables-save") is not None]
ROUNDTRIP_NFT = [c for c in NFT_CASES if c.derived("nft-list-ruleset") is not None]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", ROUNDTRIP_IPT, ids=[c.id for c in ROUNDTRIP_IPT])
def test_iptables_kernel_state_matches_istio(case, variant):
    rules = render_iptables(case.spec)
    with scratch() as ns:
        for argv, text in restore_commands(rules, variant):
            ns.run(argv, input=text, check=True)
        assert iptables_state(ns, variant, rules.ipv6 is not None) == case.derived("iptables-save")


@pytest.mark.parametrize("case", ROUNDTRIP_NFT, ids=[c.id for c in ROUNDTRIP_NFT])
def test_nft_kernel_state_matches_istio(case):
    with scratch() as ns:
        ns.run(["nft", "-f", "-"], input=render_nftables(case.spec), check=True)
        assert ns.run(["nft", "list", "ruleset"], check=True).stdout == case.derived("nft-list-ruleset")


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4-pod", "dual-stack-pod"])
def test_stock_sidecar_kernel_state(ipv6):
    spec = inputs.from_istio_args(default_sidecar()["argv"][1:], env={}, enable_ipv6=ipv6)
    suffix = "-ipv6" if ipv6 else ""
    with scratch() as ns:
        for argv, text in restore_commands(render_iptables(spec), "nft"):
            ns.run(argv, input=text, check=True)
        assert (
            iptables_state(ns, "nft", ipv6)
            == (REFERENCE / f"derived/default-sidecar{suffix}.iptables-save").read_text()
        )
    with scratch() as ns:
        ns.run(["nft", "-f", "-"], input=render_nftables(spec), check=True)
        assert (
            ns.run(["nft", "list", "ruleset"], check=True).stdout
            == (REFERENCE / f"derived/default-sidecar{suffix}.nft-list-ruleset").read_text()
        )


def test_scratch_namespaces_are_removed_even_on_failure():
    with pytest.raises(RuntimeError):
        with scratch() as ns:
            name = ns.name
            raise RuntimeError("boom")
    assert not ns.exists()
    from accel.netns import ETC_NETNS

    assert not (ETC_NETNS / name).exists()


@pytest.fixture(scope="module")
def check_namespace():
    with scratch() as ns:
        yield ns


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=capture_specs)
def test_any_spec_renders_rules_the_kernel_accepts(check_namespace, spec):
    """Beyond the goldens: odd names, ports, CIDRs and option mixes still load."""
    ns = check_namespace
    rules = render_iptables(spec)
    for variant in VARIANTS:
        for argv, text in restore_commands(rules, variant, "--test"):
            result = ns.run(argv, input=text)
            assert result.returncode == 0, f"{argv[0]}: {result.stderr}\n{text}"
    for sets in (False, True):
        nft = render_nftables(spec, sets=sets)
        result = ns.run(["nft", "-c", "-f", "-"], input=nft)
        assert result.returncode == 0, f"{result.stderr}\n{nft}"
