"""accel bench --quick: every figure, each from a real run (sidecar sessions, kernel entries,
conntrack), never a timing asserted."""

import json

import pytest
from click.testing import CliRunner

from accel.bench.run import FIGURES, MODES, SCALING_SIZES
from accel.cli import main

pytestmark = pytest.mark.privileged

LINEAR = ("iptables-nft", "iptables-legacy", "nftables")
NETFILTER = (*LINEAR, "nftables-sets")
CAPTURE = (*NETFILTER, "ebpf", "ebpf+sockmap")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bench")
    # --quick with 2 rounds, not 3: every figure and check, in a minute less of the suite
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--quick",
            "--rounds",
            "2",
            "--json",
            str(directory / "bench.json"),
            "--plot",
            str(directory / "bench.png"),
            "--markdown",
            str(directory / "bench.md"),
        ],
    )
    assert result.exit_code == 0, result.output
    files = {name: (directory / f"bench.{name}").read_bytes() for name in ("png", "md")}
    return result.stdout, json.loads((directory / "bench.json").read_text()), files


def test_every_figure_for_every_mode(quick):
    _, document, _ = quick
    assert list(document["modes"]) == list(MODES)
    for mode, figures in document["modes"].items():
        assert figures["errors"] == 0, mode
        for name in FIGURES:
            assert figures[name] is not None, (mode, name)
        for name in ("ka1_rps", "ka16_rps", "cps16", "bulk_mbps", "crr1_p50_us", "ka1_p50_us"):
            assert figures[name] > 0, (mode, name)
        assert figures["crr1_p99_us"] >= figures["crr1_p50_us"] and figures["ka1_p99_us"] >= figures["ka1_p50_us"]
        for name in FIGURES:
            assert len(document["samples"][mode].get(name, document["samples"][mode].get("conntrack_cps16"))) == 2
    # no proxy at all is faster than any proxy: a ratio below 1 means the modes were mixed up
    assert document["ratios"]["none"]["cps16"] > 1
    env = document["env"]
    assert env["kernel"] and env["cpus"] >= 1 and "HAProxy" in env["tools"]["haproxy"]


def test_every_connection_went_through_both_sidecars(quick):
    _, document, _ = quick
    for mode, figures in document["modes"].items():
        path = figures["path"]
        assert path["connections"] > 1000, mode
        carried = path["sidecar_sessions"]
        if mode == "none":
            assert carried == {"pod": 0, "remote": 0}
        else:
            assert min(carried.values()) >= path["connections"], mode


def test_conntrack_entries_come_from_the_runs(quick):
    _, document, _ = quick
    modes = document["modes"]
    for mode in NETFILTER:  # at least one entry per two connections of the cps16 run just made
        assert modes[mode]["conntrack_entries"] >= modes[mode]["cps16"] * 0.5, mode
        assert modes[mode]["conntrack_by_workload"]["ka16"] >= 16, mode
    for mode in ("none", "explicit", "ebpf", "ebpf+sockmap"):
        assert modes[mode]["conntrack_entries"] == 0 and not any(modes[mode]["conntrack_by_workload"].values())


def test_rule_scaling_installs_the_rules_it_claims(quick):
    _, document, _ = quick
    sizes = [str(n) for n in SCALING_SIZES]
    assert list(document["scaling"]) == ["explicit", *CAPTURE]
    for mode in CAPTURE:
        assert all(document["scaling"][mode][size] > 0 for size in sizes)
        entries = document["scaling_capture_entries"][mode]
        assert entries["10"] < 100 and entries["10000"] >= 10000, (mode, entries)


def test_table_plot_and_markdown(quick):
    output, document, files = quick
    assert "accel bench: medians" in output and "rule scaling" in output
    assert "path check: in every mode but none, both sidecars carried every connection" in " ".join(output.split())
    assert "target ebpf cps16" in output
    assert files["png"].startswith(b"\x89PNG") and len(files["png"]) > 20_000
    markdown = files["md"].decode()
    assert markdown.startswith("| figure | none | explicit |")
    assert f"| cps16 conn/s | {document['modes']['none']['cps16']:,.0f} (" in markdown
    assert "| ebpf | " in markdown and "N=10,000 vs N=10" in markdown


def test_the_program_budget_and_the_sockops_account(quick):
    """Counted by the kernel: each proxied connection is three connecting sockets (the app, its
    sidecar's upstream, the server sidecar's delivery) and three accepted ones; the app's socket
    watches its state only until the proxy's side took its record (two callbacks)."""
    output, document, files = quick
    for mode in ("ebpf", "ebpf+sockmap"):
        budget = document["budget"]["modes"][mode]
        programs, ops = budget["programs"], budget["sockops_ops"]
        assert programs["connect4"]["runs"] == pytest.approx(3, abs=0.1), mode
        assert ops["TCP_CONNECT"]["runs"] == pytest.approx(3, abs=0.1), mode
        assert ops["PASSIVE_ESTABLISHED"]["runs"] == pytest.approx(3, abs=0.1), mode
        assert ops["STATE"]["runs"] == pytest.approx(2, abs=0.1), mode
        # two runs of the same workload: the account's calls are the program's runs
        assert sum(op["runs"] for op in ops.values()) == pytest.approx(programs["sockops"]["runs"], rel=0.05), mode
        assert all(op["ns_per_run"] >= 0 for op in ops.values())
    assert "sockops calls per proxied connection, by op" in output and "| sockops op |" in files["md"].decode()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--modes", "iptables,bogus"], "unknown mode 'bogus'"),
        (["--modes", "none,ebpf"], "must include explicit"),
        (["--plot", "out.svg"], "must name a .png file"),
        (["--rounds", "0"], "0 is not in the range"),
    ],
)
def test_bad_options_change_nothing(argv, needle):
    result = CliRunner().invoke(main, ["bench", *argv])
    assert result.exit_code == 2 and needle in result.output
