"""accel compare's case selection (--cases, --list-cases): pure, no lab."""

import json

import pytest
from click.testing import CliRunner

from accel import inputs
from accel.cli import main
from accel.compare import lab_spec
from accel.compare.cases import derive, select

CASES = derive(lab_spec(inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS), {})))[0]


def test_patterns_choose_cases_in_their_order():
    chosen = select(CASES, ("dns-*", "outbound-service"))
    names = [c.name for c in chosen]
    assert names[0] == "outbound-service" and len(names) > 2
    assert all(n == "outbound-service" or n.startswith("dns-") for n in names)
    assert names == [c.name for c in CASES if c.name in names]


def test_a_chosen_case_meets_the_pod_as_in_the_full_run():
    """The proxy's case to an address added after apply relies on the setup of the case before it."""
    full = [c.name for c in CASES]
    added = CASES[full.index("outbound-address-added-after-apply")]
    assert added.setup and not CASES[full.index("proxy-to-address-added-after-apply")].setup
    (alone,) = select(CASES, ("proxy-to-address-added-after-apply",))
    assert alone.setup == added.setup
    # chosen after both setup cases without either: it gets both setups, in order
    later = next(c for c in CASES[full.index("outbound-address-removed-after-apply") + 1 :] if not c.setup)
    (after_both,) = select(CASES, (later.name,))
    assert after_both.setup == added.setup + CASES[full.index("outbound-address-removed-after-apply")].setup
    # one already run is not run again
    both = select(CASES, ("outbound-address-added-after-apply", "proxy-to-address-added-after-apply"))
    assert both[0].setup == added.setup and both[1].setup == ()


def test_a_pattern_that_matches_nothing_is_named():
    with pytest.raises(ValueError, match="'nope-\\*' matches no case"):
        select(CASES, ("outbound-*", "nope-*"))


def test_list_cases_needs_no_root_and_prints_json():
    run = CliRunner().invoke(main, ["compare", "--list-cases", "--json", "--", "-i", "*", "-b", "*"])
    assert run.exit_code == 0, run.output
    listed = json.loads(run.stdout)
    assert {"name", "from", "proto", "dst", "port", "uid", "description"} <= set(listed[0])
    assert "outbound-service" in [c["name"] for c in listed]
    table = CliRunner().invoke(main, ["compare", "--list-cases"])
    assert table.exit_code == 0 and "outbound-service" in table.stdout


@pytest.mark.parametrize(
    "patterns, needle",
    [
        ("nope-*", "--cases: 'nope-*' matches no case"),
        ("dns-*,", "--cases: empty pattern"),
        ("", "--cases: empty pattern"),
    ],
)
def test_bad_patterns_exit_2_before_anything_runs(patterns, needle):
    run = CliRunner().invoke(main, ["compare", "--cases", patterns])
    assert run.exit_code == 2 and needle in run.stderr
