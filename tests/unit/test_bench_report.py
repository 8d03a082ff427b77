"""The benchmark's report on hand-built documents: the plot draws what was measured, with the
spread over the rounds, and the tables show it too; each target's verdict rests on a confidence
interval over the rounds; the program budget table. (A real run: tests/integration/test_bench.py.)"""

from __future__ import annotations

import copy
import io
import json
import math
import statistics

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from rich.console import Console
from rich.text import Text

from accel.bench.markdown import markdown
from accel.bench.plot import plot, plot_figure
from accel.bench.report import print_report, target_lines
from accel.bench.verdicts import (
    MET,
    MISSED,
    NOISE,
    ROUNDS_CAP,
    TARGETS,
    ratio_interval,
    ratio_range,
    rounds_needed,
    t_quantile,
    target_verdicts,
)

FIGURES = ("ka1_rps", "ka16_rps", "ka1_p50_us", "ka1_p99_us", "cps16", "crr1_p50_us", "crr1_p99_us", "bulk_mbps")
# per mode, cps16 in each of three rounds; every other figure scales with it
CPS16 = {
    "none": [9000, 10000, 11000],
    "explicit": [4000, 4200, 3800],
    "iptables-nft": [3400, 3300, 3000],
    "iptables-legacy": [3000, 3100, 2900],
    "nftables": [3300, 3200, 3100],
    "nftables-sets": [3250, 3300, 3200],
    "ebpf": [3900, 4200, 3600],
    "ebpf+sockmap": [4300, 4500, 4100],
}
MODES = ("none", "explicit", "iptables-nft", "ebpf", "ebpf+sockmap")
SIZES = ("10", "1000", "10000")
# what run.py records over the crr1 run, per proxied connection
BUDGET = {
    "workload": "crr1",
    "modes": {
        "ebpf": {
            "connections": 15000,
            "total_ns": 8100.0,
            "programs": {
                "connect4": {"runs": 3.0, "ns_per_run": 900.0, "ns": 2700.0},
                "sockops": {"runs": 30.2, "ns_per_run": 100.0, "ns": 3020.0},
                "inbound (sk_lookup)": {"runs": 3.0, "ns_per_run": 400.0, "ns": 1200.0},
                "getsockopt": {"runs": 2.0, "ns_per_run": 365.0, "ns": 730.0},
                "getpeername4": {"runs": 3.0, "ns_per_run": 150.0, "ns": 450.0},
            },
        },
        "ebpf+sockmap": {
            "connections": 15000,
            "total_ns": 8810.0,
            "programs": {
                "connect4": {"runs": 3.0, "ns_per_run": 900.0, "ns": 2700.0},
                "sockops": {"runs": 30.0, "ns_per_run": 120.0, "ns": 3600.0},
                "inbound (sk_lookup)": {"runs": 3.0, "ns_per_run": 400.0, "ns": 1200.0},
                "getsockopt": {"runs": 2.0, "ns_per_run": 365.0, "ns": 730.0},
                "sk_msg": {"runs": 4.0, "ns_per_run": 145.0, "ns": 580.0},
            },
        },
    },
}


def ratio(value, reference):
    return round(value / reference, 4) if value is not None and reference else None


def document(scaling: bool, modes=MODES, budget: bool = False) -> dict:
    """A document of accel bench's shape (accel.bench.run.report): three rounds of `modes`, with
    `scaling` rule scaling at three sizes over two rounds, with `budget` the program budget."""
    samples = {
        mode: {name: [v * (1 + i / 10) for v in CPS16[mode]] for i, name in enumerate(FIGURES)} for mode in modes
    }
    for mode, figures in samples.items():
        netfilter = mode not in ("none", "explicit") and "ebpf" not in mode
        figures["conntrack_cps16"] = [6000, 6100, 5900] if netfilter else [0, 0, 0]
        figures["connections"] = [5000, 5000, 5000]
    doc_modes = {}
    for mode, figures in samples.items():
        carried = 0 if mode == "none" else 15000
        doc_modes[mode] = {
            **{name: statistics.median(figures[name]) for name in FIGURES},
            "conntrack_entries": statistics.median(figures["conntrack_cps16"]),
            "errors": 0,
            "path": {"connections": 15000, "sidecar_sessions": {"pod": carried, "remote": carried}},
        }
    ratios = {
        mode: {
            name: ratio(doc_modes[mode][name], doc_modes["explicit"][name]) for name in (*FIGURES, "conntrack_entries")
        }
        for mode in doc_modes
    }
    drops = {"explicit": 0.01, "iptables-nft": 0.2, "ebpf": 0.01, "ebpf+sockmap": 0.01} if scaling else {}
    scaling_samples = {
        mode: {size: [rate * (1 - index * drop) for rate in CPS16[mode][:2]] for index, size in enumerate(SIZES)}
        for mode, drop in drops.items()
        if mode in modes
    }
    scaled = {
        mode: {size: statistics.median(values) for size, values in by_size.items()}
        for mode, by_size in scaling_samples.items()
    }
    captured = [mode for mode in scaled if mode != "explicit"]
    doc = {
        "env": {
            "kernel": "6.1.0",
            "cpus": 2,
            "cpu_model": "test CPU",
            "pinning": {"pods": [1], "runner": [0]},
            "rounds": 3,
            "seconds_per_run": 1,
            "scaling_rounds": 2 if scaling else 0,
            "tools": {
                "haproxy": "HAProxy version 2.6",
                "nginx": "nginx/1.22",
                "wrk": "wrk 4.1",
                "iptables": "iptables v1.8.9 (nf_tables)",
                "nft": "nftables v1.0.6",
                "python": "3.11",
            },
        },
        "modes": doc_modes,
        "ratios": ratios,
        "scaling": scaled,
        "scaling_ratios": {
            mode: {size: ratio(value, scaled["explicit"][size]) for size, value in by_size.items()}
            for mode, by_size in scaled.items()
        },
        "scaling_install_seconds": {mode: {size: 0.1 for size in SIZES} for mode in captured},
        "scaling_capture_entries": {mode: {size: int(size) + 10 for size in SIZES} for mode in captured},
        "samples": samples,
        "scaling_samples": scaling_samples,
    }
    if budget:
        doc["budget"] = copy.deepcopy(BUDGET)
    doc["verdicts"] = target_verdicts(doc)  # as run.py stores them
    return doc


def paired(figure: str, values: list[float], references: list[float], mode: str = "ebpf+sockmap") -> dict:
    """The least a document needs for the targets: `figure` for `mode` and explicit, round by round."""
    return {
        "modes": {mode: {figure: statistics.median(values)}, "explicit": {figure: statistics.median(references)}},
        "samples": {mode: {figure: values}, "explicit": {figure: references}},
        "scaling_ratios": {},
    }


def verdict_of(doc: dict, figure: str, against: str = "explicit") -> dict:
    [verdict] = [v for v in target_verdicts(doc) if v["figure"] == figure and v["against"] == against]
    return verdict


def plain(line: str) -> str:
    return Text.from_markup(line).plain


def rendered(doc: dict, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    print_report(doc, console)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def test_ratio_range_pairs_each_round_with_explicit_in_the_same_round():
    doc = document(scaling=True)
    low, high = ratio_range(doc, "iptables-nft", "cps16")
    assert (low, high) == pytest.approx((3300 / 4200, 3400 / 4000))  # not 3000 / 4200: rounds are paired
    assert low <= doc["ratios"]["iptables-nft"]["cps16"] <= high
    assert ratio_range(doc, "explicit", "cps16") is None  # explicit against itself: no spread
    assert ratio_range(doc, "ebpf", "10000", "scaling_samples") == pytest.approx((3900 / 4000, 4200 / 4200))


def error_bars(axes) -> list[tuple[float, float]]:
    """Per bar of every mode, the (bottom, top) of its error bar."""
    return [
        (segment[0][1], segment[1][1])
        for container in axes.containers
        if isinstance(container, BarContainer) and container.errorbar
        for collection in container.errorbar.lines[2]
        for segment in collection.get_segments()
    ]


@pytest.mark.parametrize("scaling", [True, False], ids=["with-scaling", "no-scaling"])
def test_plot_draws_what_was_measured(scaling, tmp_path, recwarn):
    doc = document(scaling)
    fig = plot_figure(doc)
    assert len(fig.axes) == (2 if scaling else 1)
    bars = fig.axes[0]
    spread = error_bars(bars)
    assert len(spread) == 5 * 4  # five figures, for every mode but none
    # cps16 (the third figure) of iptables-nft (the second mode): its lowest and highest round
    assert spread[5 + 2] == pytest.approx(ratio_range(doc, "iptables-nft", "cps16"), abs=1e-4)
    assert sum(top - bottom for bottom, top in spread) > 0.1
    if scaling:
        curves = fig.axes[1]
        assert [container.get_label() for container in curves.containers] == ["iptables-nft", "ebpf", "ebpf+sockmap"]
        low, high = ratio_range(doc, "iptables-nft", "10000", "scaling_samples")
        assert curves.containers[0].lines[2][0].get_segments()[2][:, 1] == pytest.approx([low, high], abs=1e-4)
    path = tmp_path / "bench.png"
    plot(doc, path)
    assert path.read_bytes().startswith(b"\x89PNG")
    assert [str(w.message) for w in recwarn] == []


def test_plot_tells_eight_modes_apart(recwarn):
    doc = document(scaling=True, modes=tuple(CPS16))
    bars, curves = plot_figure(doc).axes
    containers = [c for c in bars.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in containers] == list(CPS16)[1:]  # a bar a mode, none left out
    colours = [c.patches[0].get_facecolor() for c in containers]
    assert len(set(colours)) == 7
    assert [t.get_text() for t in bars.get_legend().get_texts()] == list(CPS16)[1:]
    canvas = FigureCanvasAgg(bars.figure)
    canvas.draw()
    legend_top = bars.transData.inverted().transform(bars.get_legend().get_window_extent().get_points())[1, 1]
    lowest = min(bottom for bottom, _ in error_bars(bars))
    assert 0 < legend_top < lowest  # under every bar's top and error bar
    for line in curves.containers:  # the same colour for a mode in both charts
        assert line.lines[0].get_color() in {"C%d" % i for i in range(7)}
        assert line.lines[0].get_color() == "C%d" % list(CPS16)[1:].index(line.get_label())
    assert [str(w.message) for w in recwarn] == []


@pytest.mark.parametrize("scaling", [True, False], ids=["with-scaling", "no-scaling"])
def test_tables_show_the_spread(scaling):
    doc = document(scaling)
    text = markdown(doc)
    assert text.startswith("| figure | none | explicit | iptables-nft | ebpf | ebpf+sockmap |")
    low, high = ratio_range(doc, "iptables-nft", "cps16")
    assert f"| cps16 conn/s | {doc['modes']['none']['cps16']:,.0f} (" in text
    assert f"({doc['ratios']['iptables-nft']['cps16']:.2f}×, {low:.2f}–{high:.2f})" in text
    assert ("N=10,000 vs N=10" in text) == scaling
    output = rendered(doc, 80)
    assert "accel bench: medians" in output and ("rule scaling" in output) == scaling
    if scaling:  # the main table has no room for the spread in 80 columns; the scaling table has
        low, high = ratio_range(doc, "ebpf", "10000", "scaling_samples")
        assert f"{low:.2f}–{high:.2f}" in output
        assert f"({doc['scaling_ratios']['ebpf']['10000']:.2f}×, {low:.2f}–{high:.2f})" in text


def main_table_lines(output: str) -> list[str]:
    """The main table's lines, without its title."""
    return [line for line in output[: output.index("ka1/ka16:")].splitlines() if "accel bench: medians" not in line]


@pytest.mark.parametrize("width, tables", [(100, 1), (80, 2)])
def test_eight_modes_fit_the_terminal(width, tables):
    """Eight modes: one table in 100 columns; in 80, two tables, explicit heading both, and
    nothing cut short."""
    doc = document(scaling=True, modes=tuple(CPS16), budget=True)
    doc["modes"]["nftables"]["errors"] = 12
    output = rendered(doc, width)
    lines = main_table_lines(output)
    assert "…" not in output
    assert max(len(line) for line in output.splitlines()) <= width
    assert sum("explicit" in line for line in lines) == tables
    assert sum(line.lstrip().startswith("cps16 conn/s") for line in lines) == tables  # the label, never wrapped
    assert output.count("accel bench: medians") == 1
    assert not any("ebpf+sockmap" in line for line in lines)  # its header on two lines, as iptables-nft's
    headers = " ".join(line for line in lines if "conn/s" not in line)
    for piece in ("none", "iptables-", "nft", "legacy", "nftables", "sets", "ebpf+", "sockmap", "12 errors"):
        assert piece in headers, piece
    cells = " ".join(lines)
    for mode in CPS16:
        assert f"{doc['modes'][mode]['cps16']:,.0f}" in cells, mode
        if mode not in ("none", "explicit"):
            assert f"{doc['ratios'][mode]['ka1_rps']:.2f}×" in cells, mode
    if tables == 2:  # explicit first in both, the later modes after it
        second = lines[[i for i, line in enumerate(lines) if "explicit" in line][1]]
        assert second.split()[:2] == ["explicit", "12"]
    assert markdown(doc).startswith("| figure | " + " | ".join(CPS16) + " |")


# Student's t


def test_t_quantile_from_the_table_and_beyond():
    assert [t_quantile(df) for df in (1, 2, 4, 8, 30)] == [12.706, 4.303, 2.776, 2.306, 2.042]
    # beyond the table: 40, 60 and 120 degrees of freedom from printed tables, then the normal value
    assert [t_quantile(df) for df in (40, 60, 120)] == pytest.approx([2.021, 2.000, 1.980], abs=6e-4)
    assert t_quantile(10**7) == pytest.approx(1.95996, abs=1e-5)
    assert all(t_quantile(df + 1) < t_quantile(df) for df in range(1, 500))  # no step at 30
    with pytest.raises(ValueError):
        t_quantile(0)


def test_equal_ratios_give_a_zero_width_interval():
    assert ratio_interval([1.08] * 5) == pytest.approx((1.08, 1.08), abs=1e-12)
    assert ratio_interval([1.08]) is None  # one round: no interval
    assert ratio_interval([]) is None


def test_interval_checked_by_hand():
    # log ratios 0.1, 0 and -0.1: mean 0, sd 0.1; t(2) = 4.303; half-width 4.303 × 0.1 / √3 = 0.248434
    assert ratio_interval([math.exp(0.1), 1.0, math.exp(-0.1)]) == pytest.approx((0.780021, 1.282016), abs=1e-6)
    # ratios 1.0, 1.1, 1.2, 1.3: logs 0, 0.095310, 0.182322, 0.262364; mean 0.134999, sd 0.112933;
    # t(3) = 3.182; half-width 3.182 × 0.112933 / 2 = 0.179676; exp(0.134999 ∓ 0.179676)
    assert ratio_interval([1.0, 1.1, 1.2, 1.3]) == pytest.approx((0.956307, 1.369814), abs=1e-5)


def test_rounds_needed_by_hand():
    ratios = [math.exp(0.1), 1.0, math.exp(-0.1)]  # log mean 0, sd 0.1
    # bound 1.05: log 0.048790; t(17) × 0.1 / √18 = 0.049733 (not yet), t(18) × 0.1 / √19 = 0.048200
    assert rounds_needed(ratios, 1.05) == 19
    assert rounds_needed(ratios, 0.95) == 18  # log 0.95 = -0.051293: t(16) 2.120 × 0.1 / √17 = 0.051418 > it
    assert rounds_needed(ratios, 1.02) is None  # about 100 rounds: past the cap
    assert rounds_needed(ratios, 1.3) == 3  # log 1.3 = 0.262364 > 0.248434: these three rounds do
    assert rounds_needed([1.08], 1.05) is None  # one round: no spread to go by
    assert rounds_needed([1.05] * 4, 1.05) is None  # exactly on the bound: no number of rounds


# Verdicts


def test_met_missed_and_not_separated():
    explicit = [1000.0, 1020.0, 980.0, 1010.0, 990.0]
    met = verdict_of(
        paired("ka1_rps", [e * r for e, r in zip(explicit, [1.10, 1.11, 1.09, 1.10, 1.12])], explicit), "ka1_rps"
    )
    assert met["verdict"] == MET and met["ci_low"] > 1.05 and met["rounds_needed"] is None
    missed = verdict_of(
        paired("ka1_rps", [e * r for e, r in zip(explicit, [1.00, 1.01, 0.99, 1.00, 1.02])], explicit), "ka1_rps"
    )
    assert missed["verdict"] == MISSED and missed["ci_high"] < 1.05 and missed["rounds_needed"] is None
    ratios = [1.02, 1.15, 1.08, 1.16, 1.00]
    noise = verdict_of(paired("ka1_rps", [e * r for e, r in zip(explicit, ratios)], explicit), "ka1_rps")
    assert noise["verdict"] == NOISE and noise["ci_low"] < 1.05 < noise["ci_high"]
    assert noise["rounds_needed"] == rounds_needed(ratios, 1.05) and 5 < noise["rounds_needed"] < ROUNDS_CAP
    assert (noise["ci_low"], noise["ci_high"]) == pytest.approx(ratio_interval(ratios), abs=1e-4)
    assert set(noise) == {
        "mode",
        "figure",
        "against",
        "bound",
        "at_least",
        "estimate",
        "ci_low",
        "ci_high",
        "rounds",
        "verdict",
        "rounds_needed",
    }
    assert (noise["mode"], noise["against"], noise["bound"], noise["at_least"], noise["rounds"]) == (
        "ebpf+sockmap",
        "explicit",
        1.05,
        True,
        5,
    )


def test_lower_is_better_targets_turn_the_interval_round():
    explicit = [74.0, 76.0, 75.0]
    assert verdict_of(paired("ka1_p50_us", [e * 0.90 for e in explicit], explicit), "ka1_p50_us")["verdict"] == MET
    assert verdict_of(paired("ka1_p50_us", [e * 1.00 for e in explicit], explicit), "ka1_p50_us")["verdict"] == MISSED
    noise = verdict_of(
        paired("ka1_p50_us", [e * r for e, r in zip(explicit, [0.90, 0.99, 0.94])], explicit), "ka1_p50_us"
    )
    assert noise["ci_low"] < 0.95 < noise["ci_high"] and noise["verdict"] == NOISE
    # ebpf's own bound is 1.03: equal to explicit meets it
    ebpf = paired("ka1_p50_us", [e * 1.00 for e in explicit], explicit, mode="ebpf")
    assert verdict_of(ebpf, "ka1_p50_us")["verdict"] == MET


def test_the_interval_pairs_rounds_and_the_estimate_is_the_ratio_of_medians():
    # explicit drifts down over the rounds and the mode with it: every round 1.10×; unpaired, the
    # values would overlap
    explicit, mode = [1200.0, 1000.0, 800.0], [1320.0, 1100.0, 880.0]
    verdict = verdict_of(paired("ka1_rps", mode, explicit), "ka1_rps")
    assert (verdict["ci_low"], verdict["ci_high"]) == pytest.approx((1.10, 1.10))
    assert verdict["verdict"] == MET
    # rounds of 1.2×, 1.0× and 1.0×: the median round is 1.0×, but the table shows the medians'
    # ratio, 1200 / 1000, and so does the target
    verdict = verdict_of(paired("ka1_rps", [1200.0, 1500.0, 900.0], [1000.0, 1500.0, 900.0]), "ka1_rps")
    assert verdict["estimate"] == 1.2
    assert (verdict["ci_low"], verdict["ci_high"]) == pytest.approx(ratio_interval([1.2, 1.0, 1.0]), abs=1e-4)


def test_one_round_is_not_separated_from_noise():
    verdict = verdict_of(paired("ka1_rps", [1300.0], [1000.0]), "ka1_rps")
    assert verdict == {
        "mode": "ebpf+sockmap",
        "figure": "ka1_rps",
        "against": "explicit",
        "bound": 1.05,
        "at_least": True,
        "estimate": 1.3,
        "ci_low": None,
        "ci_high": None,
        "rounds": 1,
        "verdict": NOISE,
        "rounds_needed": None,
    }
    lines = [plain(line) for line in target_lines(paired("ka1_rps", [1300.0], [1000.0]))]
    assert lines == [
        "target ebpf+sockmap ka1_rps ≥ 1.05× explicit: 1.30× (1 round, no interval) not separated from noise",
        "  no spread over rounds to judge it by: run three rounds or more",
    ]


def test_targets_whose_modes_did_not_run_are_skipped():
    doc = document(scaling=False, modes=("none", "explicit", "ebpf"))
    judged = {(v["mode"], v["figure"], v["against"]) for v in target_verdicts(doc)}
    assert judged == {
        ("ebpf", "cps16", "explicit"),
        ("ebpf", "crr1_p50_us", "explicit"),
        ("ebpf", "ka16_rps", "explicit"),
        ("ebpf", "ka1_p50_us", "explicit"),
    }
    assert not any("sockmap" in line or "iptables-nft" in line for line in target_lines(doc))
    doc["modes"]["ebpf"]["cps16"] = None  # a figure not measured: no verdict either
    assert ("ebpf", "cps16", "explicit") not in {(v["mode"], v["figure"], v["against"]) for v in target_verdicts(doc)}
    every = document(scaling=False, modes=tuple(CPS16))
    assert len(target_verdicts(every)) == len(TARGETS) == 12


def test_target_lines_say_the_verdict_and_what_would_settle_it():
    explicit = [1000.0, 1020.0, 980.0, 1010.0, 990.0]
    noise = paired("ka1_rps", [e * r for e, r in zip(explicit, [1.02, 1.15, 1.08, 1.16, 1.00])], explicit)
    verdict = verdict_of(noise, "ka1_rps")
    first, advice = target_lines(noise)
    assert first == (
        f"target ebpf+sockmap ka1_rps ≥ 1.05× explicit: {verdict['estimate']:.2f}× (95% CI "
        f"{verdict['ci_low']:.2f}–{verdict['ci_high']:.2f}, 5 rounds) [yellow]not separated from "
        "noise[/yellow]"
    )
    assert plain(advice) == f"  about {verdict['rounds_needed']} rounds would probably separate it"
    close = paired("ka1_rps", [e * r for e, r in zip(explicit, [1.00, 1.12, 1.06, 1.13, 0.99])], explicit)
    assert plain(target_lines(close)[1]) == "  ≥ 40 rounds: too close to call on this VM"
    met = paired("ka1_rps", [e * 1.10 for e in explicit], explicit)
    assert target_lines(met) == [
        "target ebpf+sockmap ka1_rps ≥ 1.05× explicit: 1.10× (95% CI 1.10–1.10, 5 rounds) [green]met[/green]"
    ]
    assert target_lines(paired("ka1_rps", explicit, explicit))[0].endswith("[red]missed[/red]")


def test_every_target_line_stays_short():
    doc = document(scaling=True, modes=tuple(CPS16))
    lines = [plain(line) for line in target_lines(doc)]
    assert len([line for line in lines if line.startswith("target ")]) == len(TARGETS) + 1  # and rule scaling
    assert max(len(line) for line in lines if "N:" not in line) <= 110


def test_verdicts_go_into_the_document_and_the_markdown():
    doc = document(scaling=True, modes=tuple(CPS16))
    json.dumps(doc["verdicts"])  # run.py stores them as they are
    text = markdown(doc)
    head = "Targets:\n\n| target | × | 95% CI | rounds | verdict |\n|---|---:|---:|---:|---|\n"
    assert head in text
    rows = text[text.index(head) + len(head) :].split("\n\n")[0].splitlines()
    assert len(rows) == len(TARGETS) + 1
    for verdict, row in zip(doc["verdicts"], rows):
        sign = "≥" if verdict["at_least"] else "≤"
        interval = f"{verdict['ci_low']:.2f}–{verdict['ci_high']:.2f}"
        assert row.startswith(
            f"| {verdict['mode']} {verdict['figure']} {sign} {verdict['bound']:.2f}× "
            f"{verdict['against']} | {verdict['estimate']:.2f}× | {interval} | 3 | "
            f"{verdict['verdict']}"
        )
    assert rows[-1].startswith("| ebpf keeps ≥ 0.95× its connection rate") and rows[-1].endswith("| 2 | met |")


# The program budget


def budget_rows(text: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith("| program |")
        or (
            line.startswith("| ")
            and line.split(" | ")[0][2:] in (*BUDGET["modes"]["ebpf"]["programs"], "sk_msg", "**total**")
        )
    ]


def test_budget_table():
    doc = document(scaling=False, modes=tuple(CPS16), budget=True)
    assert budget_rows(markdown(doc)) == [
        "| program | ebpf runs/conn | ebpf µs/conn | ebpf+sockmap runs/conn | ebpf+sockmap µs/conn |",
        "| sockops | 30.2 | 3.02 | 30.0 | 3.60 |",  # by time, most first, over both modes
        "| connect4 | 3.0 | 2.70 | 3.0 | 2.70 |",
        "| inbound (sk_lookup) | 3.0 | 1.20 | 3.0 | 1.20 |",
        "| getsockopt | 2.0 | 0.73 | 2.0 | 0.73 |",
        "| sk_msg | - | - | 4.0 | 0.58 |",
        "| getpeername4 | 3.0 | 0.45 | - | - |",
        "| **total** | 41.2 | 8.10 | 42.0 | 8.81 |",
    ]
    legend = (
        "eBPF program time per proxied connection, from the kernel's run-time statistics (BPF_ENABLE_STATS) "
        "over the crr1 run."
    )
    assert f"\n{legend}\n" in markdown(doc)
    output = rendered(doc, 100)
    # from the title to the legend
    table = output[output.index("eBPF program time per proxied connection\n") : output.index(legend[:41])]
    rows = [line.split() for line in table.splitlines()]
    assert ["program", "runs/conn", "µs/conn", "runs/conn", "µs/conn"] in rows
    assert ["sockops", "30.2", "3.02", "30.0", "3.60"] in rows
    assert ["total", "41.2", "8.10", "42.0", "8.81"] in rows
    names = [
        row[0]
        for row in rows
        if row and row[0] in ("sockops", "connect4", "inbound", "getsockopt", "sk_msg", "getpeername4", "total")
    ]
    assert names == ["sockops", "connect4", "inbound", "getsockopt", "sk_msg", "getpeername4", "total"]
    assert "before" not in table
    assert " ".join(output.split()).count(legend) == 1


def test_budget_against_a_baseline():
    doc = document(scaling=False, modes=tuple(CPS16), budget=True)
    baseline = copy.deepcopy(BUDGET)
    del baseline["modes"]["ebpf+sockmap"]  # before the optimisation there was no such mode
    baseline["modes"]["ebpf"]["total_ns"] = 12000.0
    baseline["modes"]["ebpf"]["programs"]["sockops"]["ns"] = 6040.0
    baseline["modes"]["ebpf"]["programs"]["getpeername5"] = {"runs": 1.0, "ns_per_run": 300.0, "ns": 300.0}
    doc["budget_baseline"] = baseline
    text = markdown(doc)
    assert budget_rows(text)[:3] == [
        "| program | ebpf runs/conn | ebpf µs/conn | ebpf before | ebpf × | ebpf+sockmap runs/conn "
        "| ebpf+sockmap µs/conn |",
        "| sockops | 30.2 | 3.02 | 6.04 | 0.50× | 30.0 | 3.60 |",
        "| connect4 | 3.0 | 2.70 | 2.70 | 1.00× | 3.0 | 2.70 |",
    ]
    assert "| **total** | 41.2 | 8.10 | 12.00 | 0.68× | 42.0 | 8.81 |" in text
    assert "| getpeername5 | - | - | 0.30 | - | - | - |" in text  # gone since: still shown, with its time before
    assert "Before: µs/conn before the optimisation; ×: now against before." in text
    for width in (100, 80):
        output = rendered(doc, width)
        assert "…" not in output
        rows = [line.split() for line in output.splitlines()]
        assert ["program", "runs/conn", "µs/conn", "before", "×", "runs/conn", "µs/conn"] in rows
        assert ["total", "41.2", "8.10", "12.00", "0.68×", "42.0", "8.81"] in rows
    both = copy.deepcopy(BUDGET)
    both["modes"]["ebpf+sockmap"]["total_ns"] = 9810.0
    doc["budget_baseline"] = both
    assert "| **total** | 41.2 | 8.10 | 8.10 | 1.00× | 42.0 | 8.81 | 9.81 | 0.90× |" in markdown(doc)
    output = rendered(doc, 80)  # four columns a mode do not fit 80 together: a table a mode
    assert "…" not in output and output.count("eBPF program time per proxied connection\n") == 1
    rows = [line.split() for line in output.splitlines()]
    assert ["total", "41.2", "8.10", "8.10", "1.00×"] in rows and ["total", "42.0", "8.81", "9.81", "0.90×"] in rows


def test_an_older_document_still_renders():
    """Before the program budget and the verdicts, and before ebpf+sockmap: every table as before,
    the verdicts computed from its samples."""
    doc = document(scaling=True, modes=("none", "explicit", "iptables-nft", "ebpf"))
    del doc["verdicts"]
    assert "budget" not in doc
    output = rendered(doc, 80)
    assert "accel bench: medians" in output and "rule scaling" in output
    assert "eBPF program time" not in output and "BPF_ENABLE_STATS" not in output
    assert "target ebpf cps16 ≥ 0.97× explicit:" in output and "95% CI" in output
    text = markdown(doc)
    assert text.startswith("| figure | none | explicit | iptables-nft | ebpf |")
    assert "| program |" not in text and "Targets:" in text
    doc["budget"] = {"workload": "crr1", "modes": {}}  # a run with no ebpf mode
    assert "eBPF program time" not in rendered(doc, 80) and "| program |" not in markdown(doc)


def test_churn_is_a_table_in_print_and_markdown_with_the_pods_sysctls():
    doc = document(scaling=False)
    doc["env"]["pod_sysctls"] = {"net.ipv4.ip_local_port_range": "32768 60999", "net.ipv4.tcp_tw_reuse": "2"}
    run = {
        "connections": 70000,
        "errors": 0,
        "eaddrnotavail": 0,
        "rate": 999.6,
        "connect_p50_us": 41.0,
        "connect_p99_us": 95.0,
    }
    doc["churn"] = {
        "seconds": 70,
        "rate": 1000,
        "modes": {
            "iptables-nft": run,
            "ebpf": {**run, "errors": 41583, "eaddrnotavail": 41583, "connect_p99_us": 15800.0},
        },
    }
    text = markdown(doc)
    assert "| mode | connections | errors | EADDRNOTAVAIL | rate /s | connect p50 | connect p99 |" in text
    assert "| ebpf | 70,000 | 41,583 | 41,583 | 1,000 | 41 µs | 15,800 µs |" in text
    assert "ip_local_port_range 32768 60999, tcp_tw_reuse 2." in text
    console = Console(file=io.StringIO(), width=200, color_system=None)
    print_report(doc, console)
    printed = console.file.getvalue()
    assert "churn: short connections" in printed and "41,583" in printed
    del doc["churn"]
    assert "EADDRNOTAVAIL" not in markdown(doc)


def test_churn_runs_once_a_mode_unless_quick_and_refuses_a_negative_length():
    from accel.bench.run import BenchConfig

    full, quick = BenchConfig(modes=("explicit", "ebpf")), BenchConfig.quick(("explicit", "ebpf"))
    assert full.churn_seconds == 70 and quick.churn_seconds == 0
    assert full.measurements() - BenchConfig(modes=("explicit", "ebpf"), churn_seconds=0).measurements() == 2
    with pytest.raises(ValueError, match="churn seconds"):
        BenchConfig(modes=("explicit",), churn_seconds=-1)
