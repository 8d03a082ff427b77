"""The benchmark's document as a PNG: each mode's ratios to the explicit proxy, and the rule
scaling curves, with error bars over the rounds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .run import REFERENCE
from .verdicts import Spread, ratio_range

if TYPE_CHECKING:
    from matplotlib.figure import Figure


PLOTTED = [
    ("ka1_rps", "keep-alive req/s, 1 conn"),
    ("ka16_rps", "keep-alive req/s, 16 conn"),
    ("cps16", "new conn/s, 16"),
    ("crr1_p50_us", "connect+req p50 (lower is better)"),
    ("bulk_mbps", "bulk Mbit/s"),
]


def _error_bars(ratios: list[float | None], spreads: list[Spread]) -> list[list[float]]:
    """matplotlib's yerr: how far each bar's range reaches below and above it (never negative:
    the document's ratios are rounded)."""
    pairs = [
        (max(ratio - spread[0], 0), max(spread[1] - ratio, 0)) if ratio is not None and spread else (0, 0)
        for ratio, spread in zip(ratios, spreads)
    ]
    return [[below for below, _ in pairs], [above for _, above in pairs]]


def plot_figure(document: dict) -> Figure:
    """The plot as a matplotlib Figure: each mode's ratios to the explicit proxy and, when the run
    measured rule scaling, the scaling curves beside them; error bars span the rounds."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend to choose

    modes = [m for m in document["modes"] if m != "none"]
    scaled = [m for m in document["scaling_ratios"] if m != REFERENCE]
    colours = {mode: f"C{index}" for index, mode in enumerate(modes)}  # one colour a mode, in both charts
    fig = Figure(figsize=(14, 5.5) if scaled else (9, 5.5))
    if scaled:
        bars, curves = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    else:
        bars = fig.subplots()
    width = 0.8 / len(modes)
    for index, mode in enumerate(modes):
        ratios = [document["ratios"][mode].get(f) for f, _ in PLOTTED]
        spreads = [ratio_range(document, mode, f) for f, _ in PLOTTED]
        bars.bar(
            [i + index * width for i in range(len(PLOTTED))],
            [r or 0 for r in ratios],
            width,
            label=mode,
            color=colours[mode],
            yerr=_error_bars(ratios, spreads),
            capsize=2,
            error_kw={"elinewidth": 0.8},
        )
    bars.axhline(1.0, color="black", linewidth=0.8)
    bars.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(PLOTTED))])
    bars.set_xticklabels([label for _, label in PLOTTED], rotation=15, ha="right", fontsize=8)
    bars.set_ylabel("× explicit proxy")
    bars.set_title("Each mode against the explicit proxy (the floor)")
    bars.legend(loc="lower left", fontsize=7, ncol=4, framealpha=0.9)  # eight modes: two rows
    if scaled:
        for index, mode in enumerate(scaled):
            by_size = {size: r for size, r in document["scaling_ratios"][mode].items() if r is not None}
            spreads = [ratio_range(document, mode, size, "scaling_samples") for size in by_size]
            dodge = 1.08 ** (index - (len(scaled) - 1) / 2)  # apart at each N, so no error bar hides another
            curves.errorbar(
                [int(s) * dodge for s in by_size],
                list(by_size.values()),
                _error_bars(list(by_size.values()), spreads),
                marker="o",
                capsize=3,
                label=mode,
                color=colours.get(mode),
            )
        curves.axhline(1.0, color="black", linewidth=0.8)
        curves.set_xscale("log")
        curves.set_ylim(bottom=0)
        curves.set_xlabel("excluded CIDRs in the spec (none match)")
        curves.set_ylabel("new connections/s, × explicit at the same N")
        curves.set_title("Rule scaling")
        curves.legend(loc="lower left", fontsize=7, framealpha=0.9)
    env = document["env"]
    fig.suptitle(
        f"accel bench: {env['kernel']}, {env['cpus']} CPUs, medians of {env['rounds']} rounds "
        "(error bars: the lowest and highest round)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def plot(document: dict, path: Path) -> None:
    """plot_figure(document) as a PNG."""
    plot_figure(document).savefig(path, dpi=110)
