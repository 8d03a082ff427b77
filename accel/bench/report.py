"""The benchmark's document as a terminal table, a target check, and a plot."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .run import LOWER_IS_BETTER, REFERENCE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROWS = [  # figure, label, format
    ("ka1_rps", "ka1 req/s", "{:,.0f}"),
    ("ka16_rps", "ka16 req/s", "{:,.0f}"),
    ("ka1_p50_us", "ka1 p50 µs", "{:,.0f}"),
    ("ka1_p99_us", "ka1 p99 µs", "{:,.0f}"),
    ("cps16", "cps16 conn/s", "{:,.0f}"),
    ("crr1_p50_us", "crr1 p50 µs", "{:,.0f}"),
    ("crr1_p99_us", "crr1 p99 µs", "{:,.0f}"),
    ("bulk_mbps", "bulk Mbit/s", "{:,.0f}"),
    ("conntrack_entries", "conntrack", "{:,.0f}"),
]
LEGEND = ("ka1/ka16: keep-alive HTTP over 1/16 connections; cps16: a new connection per request, 16 at "
          "a time; crr1: one at a time, timed from connect to close; bulk: a 16 MiB response; conntrack: "
          "entries cps16 left in the client pod. Under each figure, × explicit (green: better).")
# What the project aims for (issue 5): (mode, figure, against, bound, at least?)
TARGETS = [
    ("ebpf", "cps16", REFERENCE, 0.97, True),
    ("ebpf", "cps16", "iptables-nft", 1.15, True),
    ("ebpf", "crr1_p50_us", REFERENCE, 1.03, False),
    ("ebpf", "ka16_rps", REFERENCE, 0.97, True),
    ("ebpf", "ka1_p50_us", REFERENCE, 1.03, False),
]


Spread = tuple[float, float] | None


def _figure(document: dict, mode: str, figure: str, fmt: str) -> tuple[str, float | None, Spread]:
    """A main-table cell: the value as text, its ratio to explicit (None for explicit) and that
    ratio's range over the rounds."""
    value = document["modes"][mode].get(figure)
    ratio = None if mode == REFERENCE else document["ratios"][mode].get(figure)
    if value is None:
        return "-", None, None
    return fmt.format(value), ratio, None if ratio is None else ratio_range(document, mode, figure)


def ratio_range(document: dict, mode: str, figure: str, samples: str = "samples") -> Spread:
    """The lowest and highest ratio to explicit over the rounds, each round's value divided by
    explicit's from the same round (rounds interleave the modes, so a round's drift divides out).
    The median ratio lies between them. None for explicit itself, or with fewer than two rounds."""
    if mode == REFERENCE:
        return None
    by_mode = document[samples]
    values, references = by_mode.get(mode, {}).get(figure), by_mode.get(REFERENCE, {}).get(figure)
    ratios = [value / reference for value, reference in zip(values or (), references or ()) if reference]
    return (min(ratios), max(ratios)) if len(ratios) > 1 else None


def _scaling_rows(document: dict) -> tuple[list[str], list[tuple]]:
    """The scaling table: its sizes, and per mode (mode, [(rate, ratio to explicit, its range)] per size,
    rate kept from the smallest to the largest N, kernel entries and install time at the
    largest N), as text; a ratio is None for explicit."""
    sizes = list(next(iter(document["scaling"].values())))
    rows = []
    for mode, by_size in document["scaling"].items():
        ratios = document["scaling_ratios"][mode]
        rates = [(f"{by_size[s]:,.0f}", None if mode == REFERENCE else ratios[s],
                  ratio_range(document, mode, s, "scaling_samples")) for s in sizes]
        kept = scaling_kept(document, mode)
        entries = document["scaling_capture_entries"].get(mode, {}).get(sizes[-1])
        install = document["scaling_install_seconds"].get(mode, {}).get(sizes[-1])
        rows.append((mode, rates, "-" if mode == REFERENCE or kept is None else f"{kept:.2f}×",
                     "-" if entries is None else f"{entries:,}", "-" if install is None else f"{install:.2f} s"))
    return sizes, rows


def _coloured(text: str, ratio: float | None, lower_is_better: bool = False) -> str:
    """A terminal cell: the value, and under it the ratio, green when better, red when worse by
    more than 3%."""
    if ratio is None:
        return text
    better = ratio < 1 if lower_is_better else ratio > 1
    colour = "green" if better else "red" if abs(ratio - 1) > 0.03 else "default"
    return f"{text}\n[{colour}]{ratio:.2f}×[/{colour}]"


def _bracketed(text: str, ratio: float | None, spread: Spread) -> str:
    if ratio is None:
        return text
    return f"{text} ({ratio:.2f}×{f', {_range(spread)}' if spread else ''})"


def _range(spread: tuple[float, float]) -> str:
    return f"{spread[0]:.2f}–{spread[1]:.2f}"


@contextlib.contextmanager
def progress_bar(console: Console, total: int):
    """A progress bar for run_bench: yields its progress callback. Without a terminal (a log, CI),
    a line at each new phase instead."""
    if not console.is_terminal:
        done, phase = [0], [None]

        def log(what: str, measured: bool):
            done[0] += measured
            if what and what.split(":")[0] != phase[0]:
                phase[0] = what.split(":")[0]
                console.print(f"accel bench: {phase[0]} ({done[0]}/{total} runs done)", highlight=False)

        yield log
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("building the modes' pods", total=total)

        def step(what: str, measured: bool):
            if measured:
                progress.advance(task)
            else:
                progress.update(task, description=what)

        yield step


def print_report(document: dict, console: Console | None = None) -> None:
    console = console or Console()
    env = document["env"]
    table = Table(title="accel bench: medians, and × the explicit proxy (the floor for any capture)",
                  title_justify="left", show_lines=True, pad_edge=False, box=box.SIMPLE_HEAD, collapse_padding=True)
    modes = list(document["modes"])
    table.add_column("")
    for mode in modes:
        errors = document["modes"][mode].get("errors")
        table.add_column(mode.replace("-", "-\n", 1) + (f"\n[red]{errors} errors[/red]" if errors else ""),
                         justify="right")
    for figure, label, fmt in ROWS:
        # without the ratios' spread: seven modes leave no room for it in 80 columns (Markdown and the plot show it)
        table.add_row(label, *(_coloured(*_figure(document, mode, figure, fmt)[:2], figure in LOWER_IS_BETTER)
                               for mode in modes))
    console.print(table)
    console.print(f"[dim]{LEGEND}[/dim]")

    if document["scaling"]:
        sizes, rows = _scaling_rows(document)
        first, last = sizes[0], sizes[-1]
        scaling = Table(title="rule scaling: new connections/s with N excluded CIDRs (none match), and × explicit "
                              "at the same N", title_justify="left", pad_edge=False, box=box.SIMPLE_HEAD,
                        collapse_padding=True)
        scaling.add_column("mode")
        for size in sizes:
            scaling.add_column(f"N={int(size):,}", justify="right")
        scaling.add_column(f"N={int(last):,}\nvs N={int(first):,}", justify="right")
        scaling.add_column("kernel\nentries", justify="right")
        scaling.add_column("install", justify="right")
        for mode, rates, kept, entries, install in rows:
            # no colour here: every capture mode sits below explicit; the trend is the point
            scaling.add_row(mode, *(text if ratio is None else f"{text}\n{ratio:.2f}×"
                                    + (f"\n[dim]{_range(spread)}[/dim]" if spread else "")
                                    for text, ratio, spread in rates), kept, entries, install)
        console.print(scaling)
        console.print(f"[dim]N={int(last):,} vs N={int(first):,}: the rate kept at the largest N, each measured "
                      "against explicit in the same rounds (the VM's drift divided out). Under a ratio, its lowest "
                      "and highest round. Kernel entries (at the largest N): rules, set elements or trie entries "
                      "read back from the client pod.[/dim]")

    for line in path_lines(document) + target_lines(document):
        console.print(line)
    tools = env["tools"]
    console.print(f"[dim]{env['kernel']}, {env['cpus']} CPUs ({env['cpu_model']}); pods on CPU "
                  f"{env['pinning']['pods']}, runner on {env['pinning']['runner']}; {env['rounds']} rounds of "
                  f"{env['seconds_per_run']} s, mode order rotated; {tools['haproxy']}; {tools['nginx']}; "
                  f"{tools['wrk']}; {tools['iptables']}; {tools['nft']}.[/dim]")


def path_lines(document: dict) -> list[str]:
    """Whether every connection went through both sidecars (and none in mode none)."""
    wrong = []
    for mode, figures in document["modes"].items():
        path = figures.get("path")
        if not path:
            continue
        carried = min(path["sidecar_sessions"].values())
        if (carried != 0) if mode == "none" else (carried < path["connections"]):
            wrong.append(f"{mode} (sidecars {path['sidecar_sessions']}, connections {path['connections']})")
    if wrong:
        return [f"[red]path check failed: {'; '.join(wrong)}[/red]"]
    return ["path check: in every mode but none, both sidecars carried every connection the clients made"]


def scaling_kept(document: dict, mode: str) -> float | None:
    """The rate a mode keeps at the largest N against the smallest, each × explicit at that N."""
    by_size = document["scaling_ratios"].get(mode)
    if not by_size:
        return None
    sizes = list(by_size)
    first, last = by_size[sizes[0]], by_size[sizes[-1]]
    return last / first if first and last else None


def target_lines(document: dict) -> list[str]:
    """Each target this run can judge, met or missed, with the measured ratio."""
    lines = []
    for mode, figure, against, bound, at_least in TARGETS:
        modes = document["modes"]
        if mode not in modes or against not in modes:
            continue
        value, reference = modes[mode].get(figure), modes[against].get(figure)
        if not value or not reference:
            continue
        ratio = value / reference
        met = ratio >= bound if at_least else ratio <= bound
        sign = "≥" if at_least else "≤"
        mark = "[green]met[/green]" if met else "[red]missed[/red]"
        lines.append(f"target {mode} {figure} {sign} {bound}× {against}: {ratio:.2f}× {mark}")
    kept = scaling_kept(document, "ebpf")
    if kept is not None:
        mark = "[green]met[/green]" if kept >= 0.95 else "[red]missed[/red]"
        lines.append(f"target ebpf keeps ≥ 0.95× its connection rate from the smallest to the largest N: "
                     f"{kept:.2f}× {mark}")
    return lines


def markdown(document: dict) -> str:
    """The main and scaling tables as Markdown, for publishing a run."""
    modes = list(document["modes"])
    lines = ["| figure | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for figure, label, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(_bracketed(*_figure(document, mode, figure, fmt)) for mode in modes)
                     + " |")
    lines += ["", "In brackets: × explicit and, over two rounds or more, its lowest and highest round (each round "
              "against explicit in the same round)."]
    if document["scaling"]:
        sizes, rows = _scaling_rows(document)
        lines += ["", "| mode | " + " | ".join(f"N={int(s):,}" for s in sizes)
                  + f" | N={int(sizes[-1]):,} vs N={int(sizes[0]):,} | kernel entries | install |",
                  "|---|" + "---:|" * (len(sizes) + 3)]
        for mode, rates, kept, entries, install in rows:
            lines.append(f"| {mode} | " + " | ".join(_bracketed(*rate) for rate in rates)
                         + f" | {kept} | {entries} | {install} |")
    return "\n".join(lines) + "\n"


PLOTTED = [("ka1_rps", "keep-alive req/s, 1 conn"), ("ka16_rps", "keep-alive req/s, 16 conn"),
           ("cps16", "new conn/s, 16"), ("crr1_p50_us", "connect+req p50 (lower is better)"),
           ("bulk_mbps", "bulk Mbit/s")]


def _error_bars(ratios: list[float | None], spreads: list[Spread]) -> list[list[float]]:
    """matplotlib's yerr: how far each bar's range reaches below and above it (never negative:
    the document's ratios are rounded)."""
    pairs = [(max(ratio - spread[0], 0), max(spread[1] - ratio, 0)) if ratio is not None and spread else (0, 0)
             for ratio, spread in zip(ratios, spreads)]
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
        bars.bar([i + index * width for i in range(len(PLOTTED))], [r or 0 for r in ratios], width, label=mode,
                 color=colours[mode], yerr=_error_bars(ratios, spreads), capsize=2, error_kw={"elinewidth": 0.8})
    bars.axhline(1.0, color="black", linewidth=0.8)
    bars.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(PLOTTED))])
    bars.set_xticklabels([label for _, label in PLOTTED], rotation=15, ha="right", fontsize=8)
    bars.set_ylabel("× explicit proxy")
    bars.set_title("Each mode against the explicit proxy (the floor)")
    bars.legend(loc="lower left", fontsize=7, ncol=3, framealpha=0.9)
    if scaled:
        for index, mode in enumerate(scaled):
            by_size = {size: r for size, r in document["scaling_ratios"][mode].items() if r is not None}
            spreads = [ratio_range(document, mode, size, "scaling_samples") for size in by_size]
            dodge = 1.08 ** (index - (len(scaled) - 1) / 2)  # apart at each N, so no error bar hides another
            curves.errorbar([int(s) * dodge for s in by_size], list(by_size.values()),
                            _error_bars(list(by_size.values()), spreads), marker="o", capsize=3, label=mode,
                            color=colours.get(mode))
        curves.axhline(1.0, color="black", linewidth=0.8)
        curves.set_xscale("log")
        curves.set_ylim(bottom=0)
        curves.set_xlabel("excluded CIDRs in the spec (none match)")
        curves.set_ylabel("new connections/s, × explicit at the same N")
        curves.set_title("Rule scaling")
        curves.legend(loc="lower left", fontsize=7, framealpha=0.9)
    env = document["env"]
    fig.suptitle(f"accel bench: {env['kernel']}, {env['cpus']} CPUs, medians of {env['rounds']} rounds "
                 "(error bars: the lowest and highest round)", fontsize=10)
    fig.tight_layout()
    return fig


def plot(document: dict, path: Path) -> None:
    """plot_figure(document) as a PNG."""
    plot_figure(document).savefig(path, dpi=110)
