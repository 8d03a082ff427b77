"""The benchmark's report on hand-built documents: the plot draws what was measured, with the
spread over the rounds, and the tables show it too. (A real run: tests/integration/test_bench.py.)"""

from __future__ import annotations

import io
import statistics

import pytest
from matplotlib.container import BarContainer
from rich.console import Console

from accel.bench.report import markdown, plot, plot_figure, print_report, ratio_range

FIGURES = ("ka1_rps", "ka16_rps", "ka1_p50_us", "ka1_p99_us", "cps16", "crr1_p50_us", "crr1_p99_us", "bulk_mbps")
# per mode, cps16 in each of three rounds; every other figure scales with it
CPS16 = {"none": [9000, 10000, 11000], "explicit": [4000, 4200, 3800], "iptables-nft": [3400, 3300, 3000],
         "ebpf": [3900, 4200, 3600]}
SIZES = ("10", "1000", "10000")


def ratio(value, reference):
    return round(value / reference, 4) if value is not None and reference else None


def document(scaling: bool) -> dict:
    """A document of accel bench's shape (accel.bench.run.report): three rounds of four modes,
    and with `scaling`, rule scaling at three sizes over two rounds."""
    samples = {mode: {name: [v * (1 + i / 10) for v in rounds] for i, name in enumerate(FIGURES)}
               for mode, rounds in CPS16.items()}
    for mode, figures in samples.items():
        figures["conntrack_cps16"] = [0, 0, 0] if mode in ("none", "explicit", "ebpf") else [6000, 6100, 5900]
        figures["connections"] = [5000, 5000, 5000]
    modes = {}
    for mode, figures in samples.items():
        carried = 0 if mode == "none" else 15000
        modes[mode] = {**{name: statistics.median(figures[name]) for name in FIGURES},
                       "conntrack_entries": statistics.median(figures["conntrack_cps16"]), "errors": 0,
                       "path": {"connections": 15000, "sidecar_sessions": {"pod": carried, "remote": carried}}}
    ratios = {mode: {name: ratio(modes[mode][name], modes["explicit"][name])
                     for name in (*FIGURES, "conntrack_entries")} for mode in modes}
    drops = {"explicit": 0.01, "iptables-nft": 0.2, "ebpf": 0.01} if scaling else {}  # per size step
    scaling_samples = {mode: {size: [rate * (1 - index * drop) for rate in CPS16[mode][:2]]
                              for index, size in enumerate(SIZES)} for mode, drop in drops.items()}
    scaled = {mode: {size: statistics.median(values) for size, values in by_size.items()}
              for mode, by_size in scaling_samples.items()}
    captured = [mode for mode in scaled if mode != "explicit"]
    return {"env": {"kernel": "6.1.0", "cpus": 2, "cpu_model": "test CPU", "pinning": {"pods": [1], "runner": [0]},
                    "rounds": 3, "seconds_per_run": 1, "scaling_rounds": 2 if scaling else 0,
                    "tools": {"haproxy": "HAProxy version 2.6", "nginx": "nginx/1.22", "wrk": "wrk 4.1",
                              "iptables": "iptables v1.8.9 (nf_tables)", "nft": "nftables v1.0.6", "python": "3.11"}},
            "modes": modes, "ratios": ratios, "scaling": scaled,
            "scaling_ratios": {mode: {size: ratio(value, scaled["explicit"][size]) for size, value in by_size.items()}
                               for mode, by_size in scaled.items()},
            "scaling_install_seconds": {mode: {size: 0.1 for size in SIZES} for mode in captured},
            "scaling_capture_entries": {mode: {size: int(size) + 10 for size in SIZES} for mode in captured},
            "samples": samples, "scaling_samples": scaling_samples}


def test_ratio_range_pairs_each_round_with_explicit_in_the_same_round():
    doc = document(scaling=True)
    low, high = ratio_range(doc, "iptables-nft", "cps16")
    assert (low, high) == pytest.approx((3300 / 4200, 3400 / 4000))  # not 3000 / 4200: rounds are paired
    assert low <= doc["ratios"]["iptables-nft"]["cps16"] <= high
    assert ratio_range(doc, "explicit", "cps16") is None  # explicit against itself: no spread
    assert ratio_range(doc, "ebpf", "10000", "scaling_samples") == pytest.approx((3900 / 4000, 4200 / 4200))


def error_bars(axes) -> list[tuple[float, float]]:
    """Per bar of every mode, the (bottom, top) of its error bar."""
    return [(segment[0][1], segment[1][1])
            for container in axes.containers if isinstance(container, BarContainer) and container.errorbar
            for collection in container.errorbar.lines[2] for segment in collection.get_segments()]


@pytest.mark.parametrize("scaling", [True, False], ids=["with-scaling", "no-scaling"])
def test_plot_draws_what_was_measured(scaling, tmp_path, recwarn):
    doc = document(scaling)
    fig = plot_figure(doc)
    assert len(fig.axes) == (2 if scaling else 1)
    bars = fig.axes[0]
    spread = error_bars(bars)
    assert len(spread) == 5 * 3  # five figures, for every mode but none
    # cps16 (the third figure) of iptables-nft (the second mode): its lowest and highest round
    assert spread[5 + 2] == pytest.approx(ratio_range(doc, "iptables-nft", "cps16"), abs=1e-4)
    assert sum(top - bottom for bottom, top in spread) > 0.1
    if scaling:
        curves = fig.axes[1]
        assert [container.get_label() for container in curves.containers] == ["iptables-nft", "ebpf"]
        low, high = ratio_range(doc, "iptables-nft", "10000", "scaling_samples")
        assert curves.containers[0].lines[2][0].get_segments()[2][:, 1] == pytest.approx([low, high], abs=1e-4)
    path = tmp_path / "bench.png"
    plot(doc, path)
    assert path.read_bytes().startswith(b"\x89PNG")
    assert [str(w.message) for w in recwarn] == []


@pytest.mark.parametrize("scaling", [True, False], ids=["with-scaling", "no-scaling"])
def test_tables_show_the_spread(scaling):
    doc = document(scaling)
    text = markdown(doc)
    assert text.startswith("| figure | none | explicit | iptables-nft | ebpf |")
    low, high = ratio_range(doc, "iptables-nft", "cps16")
    assert f"| cps16 conn/s | {doc['modes']['none']['cps16']:,.0f} (" in text
    assert f"({doc['ratios']['iptables-nft']['cps16']:.2f}×, {low:.2f}–{high:.2f})" in text
    assert ("N=10,000 vs N=10" in text) == scaling
    console = Console(width=80, record=True, file=io.StringIO())
    print_report(doc, console)
    output = console.export_text()
    assert "accel bench: medians" in output and ("rule scaling" in output) == scaling
    if scaling:  # the main table has no room for the spread in 80 columns; the scaling table has
        low, high = ratio_range(doc, "ebpf", "10000", "scaling_samples")
        assert f"{low:.2f}–{high:.2f}" in output
        assert f"({doc['scaling_ratios']['ebpf']['10000']:.2f}×, {low:.2f}–{high:.2f})" in text
