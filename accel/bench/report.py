"""The benchmark's document as a terminal table, a target check, and a plot."""

from __future__ import annotations

import contextlib
import math
import re
import statistics
from collections.abc import Callable
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
# What the project aims for: (mode, figure, against, bound, at least?). A target whose modes are not
# in the run is skipped.
TARGETS = [
    ("ebpf", "cps16", REFERENCE, 0.97, True),
    ("ebpf", "cps16", "iptables-nft", 1.15, True),
    ("ebpf", "crr1_p50_us", REFERENCE, 1.03, False),
    ("ebpf", "ka16_rps", REFERENCE, 0.97, True),
    ("ebpf", "ka1_p50_us", REFERENCE, 1.03, False),
    ("ebpf+sockmap", "cps16", REFERENCE, 0.97, True),
    ("ebpf+sockmap", "cps16", "iptables-nft", 1.15, True),
    ("ebpf+sockmap", "crr1_p50_us", REFERENCE, 1.03, False),
    ("ebpf+sockmap", "ka1_rps", REFERENCE, 1.05, True),
    ("ebpf+sockmap", "ka16_rps", REFERENCE, 1.05, True),
    ("ebpf+sockmap", "bulk_mbps", REFERENCE, 1.10, True),
    ("ebpf+sockmap", "ka1_p50_us", REFERENCE, 0.95, False),
]
MET, MISSED, NOISE = "met", "missed", "not separated from noise"
ROUNDS_CAP = 40  # more rounds than this, on this VM, is not a suggestion anyone will follow
# Student's t, two-sided 95% (the 0.975 quantile), for 1 to 30 degrees of freedom
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z_975 = 1.959964
BUDGET_TITLE = "eBPF program time per proxied connection"
BUDGET_LEGEND = "eBPF program time per proxied connection, from the kernel's run-time statistics (BPF_ENABLE_STATS)"
OPS_TITLE = "sockops calls per proxied connection, by op"
OPS_LEGEND = ("The datapath's sockops program by callback, over a crr1 run of its own: calls a connection, and "
              "ns a call measured by two programs of the benchmark's around it, less the hand-over between two "
              "programs (bpf_stats' own clock reads make its per-run figure above the higher one).")

Spread = tuple[float, float] | None


def _figure(document: dict, mode: str, figure: str, fmt: str) -> tuple[str, float | None, Spread]:
    """A main-table cell: the value as text, its ratio to explicit (None for explicit) and that
    ratio's range over the rounds."""
    value = document["modes"][mode].get(figure)
    ratio = None if mode == REFERENCE else document["ratios"][mode].get(figure)
    if value is None:
        return "-", None, None
    return fmt.format(value), ratio, None if ratio is None else ratio_range(document, mode, figure)


def round_ratios(document: dict, mode: str, figure: str, against: str = REFERENCE,
                 samples: str = "samples") -> list[float]:
    """Each round's value of `mode` divided by `against`'s from the same round (rounds interleave
    the modes, so a round's drift divides out), over the rounds where both are positive."""
    by_mode = document.get(samples) or {}
    values, references = by_mode.get(mode, {}).get(figure), by_mode.get(against, {}).get(figure)
    return [value / reference for value, reference in zip(values or (), references or ())
            if value is not None and reference is not None and value > 0 and reference > 0]


def ratio_range(document: dict, mode: str, figure: str, samples: str = "samples") -> Spread:
    """The lowest and highest ratio to explicit over the rounds, each round against explicit in
    the same round. The median ratio lies between them. None for explicit itself, or with fewer
    than two rounds."""
    if mode == REFERENCE:
        return None
    ratios = round_ratios(document, mode, figure, REFERENCE, samples)
    return (min(ratios), max(ratios)) if len(ratios) > 1 else None


def _header(mode: str) -> str:
    """A mode as a narrow column header: broken after its first - or + (iptables-/nft, ebpf+/sockmap)."""
    return re.sub(r"([-+])", "\\1\n", mode, count=1)


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


def _main_table(document: dict, modes: list[str], title: str | None) -> Table:
    table = Table(title=title, title_justify="left", show_lines=True, pad_edge=False, box=box.SIMPLE_HEAD,
                  collapse_padding=True)
    table.add_column("")
    for mode in modes:
        errors = document["modes"][mode].get("errors")
        table.add_column(_header(mode) + (f"\n[red]{errors} errors[/red]" if errors else ""), justify="right")
    for figure, label, fmt in ROWS:
        # without the ratios' spread: eight modes leave no room for it (Markdown and the plot show it)
        table.add_row(label, *(_coloured(*_figure(document, mode, figure, fmt)[:2], figure in LOWER_IS_BETTER)
                               for mode in modes))
    return table


def _fitted(console: Console, modes: list[str], build: Callable[[list[str], bool], Table],
            repeat: str | None = None) -> list[Table]:
    """build(some modes, titled?) as one titled table when it fits the console, else as the fewest
    untitled tables that each fit (the caller prints the title above them), the modes split in
    order into groups of about the same size; `repeat` (explicit, the mode every ratio divides by)
    heads every later group too. When not even one mode a table fits, one table a mode (the
    console wraps their cells)."""
    unbounded = console.options.update(max_width=1_000_000)

    def fits(table: Table) -> bool:
        return console.measure(table, options=unbounded).maximum <= console.width

    whole = build(modes, True)
    if fits(whole) or len(modes) < 2:
        return [whole]
    for count in range(2, len(modes) + 1):
        size = -(-len(modes) // count)
        groups = [modes[start:start + size] for start in range(0, len(modes), size)]
        groups = [group if index == 0 or repeat not in modes or repeat in group else [repeat, *group]
                  for index, group in enumerate(groups)]
        tables = [build(group, False) for group in groups]
        if all(fits(table) for table in tables):
            return tables
    return [build([mode], False) for mode in modes]


def _print_fitted(console: Console, title: str, tables: list[Table]) -> None:
    if len(tables) > 1:  # split: the title once, above them all
        console.print(f"[table.title]{title}[/table.title]")
    for table in tables:
        console.print(table)


def print_report(document: dict, console: Console | None = None) -> None:
    console = console or Console()
    env = document["env"]
    title = "accel bench: medians, and × the explicit proxy (the floor for any capture)"
    tables = _fitted(console, list(document["modes"]),
                     lambda modes, titled: _main_table(document, modes, title if titled else None), REFERENCE)
    _print_fitted(console, title, tables)
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

    churn = churn_rows(document)
    if churn:
        table = Table(title="churn: short connections, the app closing first", title_justify="left", pad_edge=False,
                      box=box.SIMPLE_HEAD, collapse_padding=True)
        for number, column in enumerate(CHURN_COLUMNS):
            table.add_column(column, justify="left" if number == 0 else "right")
        for row in churn:
            table.add_row(*row)
        console.print(table)
        console.print(f"[dim]{churn_legend(document)}[/dim]")

    budgeted = list((document.get("budget") or {}).get("modes") or {})
    if budgeted:
        _print_fitted(console, BUDGET_TITLE, _fitted(console, budgeted, lambda modes, titled:
                                                     _budget_table(document, modes, titled)))
        console.print(f"[dim]{_budget_legend(document)}[/dim]")
    if _ops_modes(document):
        _print_fitted(console, OPS_TITLE, _fitted(console, _ops_modes(document), lambda modes, titled:
                                                  _ops_table(document, modes, titled)))
        console.print(f"[dim]{OPS_LEGEND}[/dim]")

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


def t_quantile(df: int) -> float:
    """Student's t 0.975 quantile (the half-width of a two-sided 95% interval, in standard errors)
    for df degrees of freedom: the table to 30, beyond it the Cornish-Fisher expansion around the
    normal quantile (within 1e-5 there; the normal value in the limit)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def _log_stats(ratios: list[float]) -> tuple[int, float, float]:
    """The number of ratios, the mean and the standard deviation of their logs (two ratios or more)."""
    logs = [math.log(r) for r in ratios]
    return len(logs), statistics.fmean(logs), statistics.stdev(logs)


def ratio_interval(ratios: list[float]) -> tuple[float, float] | None:
    """A 95% confidence interval for the typical ratio (the geometric mean of the per-round ratios):
    Student's t on the mean of the log ratios, taken back to ratios. None with fewer than two rounds."""
    if len(ratios) < 2:
        return None
    n, mean, sd = _log_stats(ratios)
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return math.exp(mean - half), math.exp(mean + half)


def rounds_needed(ratios: list[float], bound: float) -> int | None:
    """The fewest rounds whose 95% interval would probably leave `bound` out: the smallest n whose
    t half-width, with the log ratios' observed spread, is below the distance from their mean to
    the bound (on log scale). None with fewer than two rounds (no spread to go by) or when it
    would take ROUNDS_CAP rounds or more."""
    if len(ratios) < 2:
        return None
    _, mean, sd = _log_stats(ratios)
    gap = abs(mean - math.log(bound))
    return next((n for n in range(2, ROUNDS_CAP) if t_quantile(n - 1) * sd / math.sqrt(n) < gap), None)


def _verdict(interval: tuple[float, float] | None, bound: float, at_least: bool) -> str:
    """MET when the whole interval satisfies the target, MISSED when none of it does, NOISE when it
    holds the bound (or there is no interval)."""
    if interval is None:
        return NOISE
    low, high = interval
    if at_least:
        return MET if low >= bound else MISSED if high < bound else NOISE
    return MET if high <= bound else MISSED if low > bound else NOISE


def target_verdicts(document: dict) -> list[dict]:
    """Each target this run can judge (both its modes ran, both have the figure). The estimate is
    the ratio of the medians, as the table shows it; the 95% interval comes from the per-round
    ratios (each round of the mode against the same round of `against`), and the verdict from
    where it lies against the bound. rounds_needed (only when not separated from noise): how many
    rounds would probably separate it; None when one round gives no spread to go by, or past
    ROUNDS_CAP."""
    verdicts, modes = [], document["modes"]
    for mode, figure, against, bound, at_least in TARGETS:
        if mode not in modes or against not in modes:
            continue
        value, reference = modes[mode].get(figure), modes[against].get(figure)
        if not value or not reference:
            continue
        ratios = round_ratios(document, mode, figure, against)
        interval = ratio_interval(ratios)
        verdict = _verdict(interval, bound, at_least)
        verdicts.append({"mode": mode, "figure": figure, "against": against, "bound": bound, "at_least": at_least,
                         "estimate": round(value / reference, 4),
                         "ci_low": None if interval is None else round(interval[0], 4),
                         "ci_high": None if interval is None else round(interval[1], 4),
                         "rounds": len(ratios), "verdict": verdict,
                         "rounds_needed": rounds_needed(ratios, bound) if verdict == NOISE else None})
    return verdicts


def _target(verdict: dict) -> str:
    sign = "≥" if verdict["at_least"] else "≤"
    return f"{verdict['mode']} {verdict['figure']} {sign} {verdict['bound']:.2f}× {verdict['against']}"


def _interval(verdict: dict) -> str:
    rounds = verdict["rounds"]
    if verdict["ci_low"] is None:
        return f"{rounds} round{'s' if rounds != 1 else ''}, no interval"
    return f"95% CI {verdict['ci_low']:.2f}–{verdict['ci_high']:.2f}, {rounds} rounds"


def _advice(verdict: dict) -> str:
    """What would settle a verdict not separated from noise."""
    if verdict["rounds"] < 2:
        return "no spread over rounds to judge it by: run three rounds or more"
    if verdict["rounds_needed"] is None:
        return f"≥ {max(ROUNDS_CAP, verdict['rounds'] + 1)} rounds: too close to call on this VM"
    return f"about {verdict['rounds_needed']} rounds would probably separate it"


def target_lines(document: dict) -> list[str]:
    """Each target this run can judge: the measured ratio, its 95% interval and the verdict (and,
    when the rounds do not separate it from noise, what would), then the rule-scaling target."""
    lines = []
    for verdict in target_verdicts(document):
        colour = {MET: "green", MISSED: "red", NOISE: "yellow"}[verdict["verdict"]]
        lines.append(f"target {_target(verdict)}: {verdict['estimate']:.2f}× ({_interval(verdict)}) "
                     f"[{colour}]{verdict['verdict']}[/{colour}]")
        if verdict["verdict"] == NOISE:
            lines.append(f"  [dim]{_advice(verdict)}[/dim]")
    kept = scaling_kept(document, "ebpf")
    if kept is not None:
        mark = "[green]met[/green]" if kept >= 0.95 else "[red]missed[/red]"
        lines.append(f"target ebpf keeps ≥ 0.95× its connection rate from the smallest to the largest N: "
                     f"{kept:.2f}× {mark}")
    return lines


def _budget(document: dict, shown: list[str] | None = None) \
        -> tuple[list[tuple[str, str]], list[tuple[str, list[float | None]]]] | None:
    """The per-connection program budget of the `shown` modes (all by default) as columns ((mode,
    kind): kind runs, us, before or ratio, the last two only for modes the baseline has) and rows
    (program, a value per column): the programs by time, most first, then "total". None without
    a budget."""
    modes = (document.get("budget") or {}).get("modes") or {}
    modes = {mode: budget for mode, budget in modes.items() if shown is None or mode in shown}
    if not modes:
        return None
    before = (document.get("budget_baseline") or {}).get("modes") or {}
    columns = [(mode, kind) for mode in modes
               for kind in ("runs", "us", *(("before", "ratio") if mode in before else ()))]
    before = {mode: budget for mode, budget in before.items() if mode in modes}

    def most(budgets: dict, name: str) -> float:
        return max([((budget.get("programs") or {}).get(name) or {}).get("ns") or 0 for budget in budgets.values()]
                   or [0])

    # a program the optimisation took away still has a row: its time before
    names = {name for budgets in (modes, before) for budget in budgets.values()
             for name in budget.get("programs") or {}}
    names = sorted(names, key=lambda name: (-most(modes, name), -most(before, name), name))

    def entry(budgets: dict, mode: str, name: str | None) -> dict:
        """A program's figures in a mode, or with name None the total's."""
        budget = budgets.get(mode) or {}
        programs = budget.get("programs") or {}
        if name is not None:
            return programs.get(name) or {}
        total = budget.get("total_ns")
        if total is None and programs:
            total = sum(p.get("ns") or 0 for p in programs.values())
        return {"ns": total, "runs": sum(p.get("runs") or 0 for p in programs.values()) if programs else None}

    def cell(mode: str, kind: str, name: str | None) -> float | None:
        now, then = entry(modes, mode, name), entry(before, mode, name)
        if kind == "runs":
            return now.get("runs")
        if kind == "us":
            return None if now.get("ns") is None else now["ns"] / 1000
        if kind == "before":
            return None if then.get("ns") is None else then["ns"] / 1000
        return now["ns"] / then["ns"] if now.get("ns") is not None and then.get("ns") else None

    rows = [(name, [cell(mode, kind, name) for mode, kind in columns]) for name in names]
    rows.append(("total", [cell(mode, kind, None) for mode, kind in columns]))
    return columns, rows


BUDGET_FORMATS = {"runs": "{:.1f}", "us": "{:.2f}", "before": "{:.2f}", "ratio": "{:.2f}×"}
BUDGET_HEADINGS = {"runs": "runs/conn", "us": "µs/conn", "before": "before", "ratio": "×"}


def _budget_legend(document: dict) -> str:
    legend = f"{BUDGET_LEGEND} over the {document['budget'].get('workload', 'crr1')} run."
    if (document.get("budget_baseline") or {}).get("modes"):
        legend += " Before: µs/conn before the optimisation; ×: now against before."
    return legend


def _budget_table(document: dict, modes: list[str], titled: bool = True) -> Table:
    columns, rows = _budget(document, modes)
    table = Table(title=BUDGET_TITLE if titled else None, title_justify="left",
                  pad_edge=False, box=box.SIMPLE_HEAD, collapse_padding=True)
    table.add_column("program", vertical="bottom")
    for mode, kind in columns:
        heading = BUDGET_HEADINGS[kind]
        table.add_column(f"{_header(mode)}\n{heading}" if kind == "runs" else heading, justify="right",
                         vertical="bottom")
    for index, (name, values) in enumerate(rows):
        cells = [name]
        for (_, kind), value in zip(columns, values):
            text = "-" if value is None else BUDGET_FORMATS[kind].format(value)
            if kind == "ratio" and value is not None:  # less time is better
                colour = "green" if value < 1 else "red" if value > 1.03 else "default"
                text = f"[{colour}]{text}[/{colour}]"
            cells.append(text)
        table.add_row(*cells, end_section=index == len(rows) - 2)  # a rule above the total
    return table


def ops_rows(document: dict, shown: list[str] | None = None) \
        -> tuple[list[tuple[str, str]], list[tuple[str, list[float | None]]]] | None:
    """The sockops account (run.measure_sockops_ops) of the `shown` modes (all by default) as
    columns ((mode, kind): runs, ns a run, µs a connection, and "before", the baseline's runs, for
    modes the baseline has) and rows (op, a value per column), the costliest first, then "total".
    None without an account."""
    modes = {mode: budget["sockops_ops"] for mode, budget in ((document.get("budget") or {}).get("modes") or {}).items()
             if budget.get("sockops_ops") and (shown is None or mode in shown)}
    if not modes:
        return None
    before = {mode: budget["sockops_ops"] for mode, budget in
              ((document.get("budget_baseline") or {}).get("modes") or {}).items()
              if mode in modes and budget.get("sockops_ops")}
    columns = [(mode, kind) for mode in modes for kind in ("runs", "ns_per_run", "us", *(("before",) if mode in before
                                                                                         else ()))]
    names = sorted({op for ops in (*modes.values(), *before.values()) for op in ops},
                   key=lambda op: (-max((ops.get(op) or {}).get("ns") or 0 for ops in modes.values()), op))

    def cell(mode: str, kind: str, op: str | None) -> float | None:
        ops = before.get(mode, {}) if kind == "before" else modes[mode]
        if op is None:  # the total
            if kind == "ns_per_run":
                return None
            entries = list(ops.values())
            return sum(e["ns"] for e in entries) / 1000 if kind == "us" else sum(e["runs"] for e in entries)
        entry = ops.get(op)
        if entry is None:
            return None
        return entry["ns"] / 1000 if kind == "us" else entry["runs" if kind in ("runs", "before") else kind]

    rows = [(op, [cell(mode, kind, op) for mode, kind in columns]) for op in names]
    rows.append(("total", [cell(mode, kind, None) for mode, kind in columns]))
    return columns, rows


OPS_FORMATS = {"runs": "{:.1f}", "ns_per_run": "{:,.0f}", "us": "{:.2f}", "before": "{:.1f}"}
OPS_HEADINGS = {"runs": "calls/conn", "ns_per_run": "ns/call", "us": "µs/conn", "before": "calls before"}


def _ops_modes(document: dict) -> list[str]:
    return [mode for mode, budget in ((document.get("budget") or {}).get("modes") or {}).items()
            if budget.get("sockops_ops")]


def _ops_table(document: dict, modes: list[str], titled: bool = True) -> Table:
    columns, rows = ops_rows(document, modes)
    table = Table(title=OPS_TITLE if titled else None, title_justify="left", pad_edge=False, box=box.SIMPLE_HEAD, collapse_padding=True)
    table.add_column("op", vertical="bottom")
    for mode, kind in columns:
        heading = OPS_HEADINGS[kind]
        table.add_column(f"{_header(mode)}\n{heading}" if kind == "runs" else heading, justify="right",
                         vertical="bottom")
    for index, (name, values) in enumerate(rows):
        table.add_row(name, *("-" if value is None else OPS_FORMATS[kind].format(value)
                              for (_, kind), value in zip(columns, values)), end_section=index == len(rows) - 2)
    return table


CHURN_COLUMNS = ("mode", "connections", "errors", "EADDRNOTAVAIL", "rate /s", "connect p50", "connect p99")


def churn_rows(document: dict) -> list[tuple[str, ...]]:
    """The churn workload, a row a mode (CHURN_COLUMNS); none if it did not run."""
    rows = []
    for mode, run in ((document.get("churn") or {}).get("modes") or {}).items():
        rows.append((mode, f"{run['connections']:,}", f"{run['errors']:,}", f"{run['eaddrnotavail']:,}",
                     f"{run['rate']:,.0f}", f"{run['connect_p50_us']:,.0f} µs", f"{run['connect_p99_us']:,.0f} µs"))
    return rows


def churn_legend(document: dict) -> str:
    churn = document["churn"]
    sysctls = (document.get("env") or {}).get("pod_sysctls") or {}
    settings = ", ".join(f"{key.rsplit('.', 1)[-1]} {value}" for key, value in sysctls.items())
    return (f"Churn: {churn['rate']:,} short connections/s offered for {churn['seconds']} s, one at a time, "
            "round-robin over 64 services (explicit: its sidecar), the app closing first so that TIME_WAIT stays "
            "on its side; EADDRNOTAVAIL: connects that found no source port. Pod sysctls as the kernel sets them"
            + (f": {settings}." if settings else "."))


def markdown(document: dict) -> str:
    """The main and scaling tables, the program budget and the targets as Markdown, for publishing a run."""
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
    churn = churn_rows(document)
    if churn:
        lines += ["", "| " + " | ".join(CHURN_COLUMNS) + " |", "|---|" + "---:|" * (len(CHURN_COLUMNS) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in churn]
        lines += ["", churn_legend(document)]
    budget = _budget(document)
    if budget is not None:
        columns, rows = budget
        lines += ["", "| program | " + " | ".join(f"{mode} {BUDGET_HEADINGS[kind]}" for mode, kind in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for name, values in rows:
            lines.append(f"| {'**total**' if name == 'total' else name} | "
                         + " | ".join("-" if value is None else BUDGET_FORMATS[kind].format(value)
                                      for (_, kind), value in zip(columns, values)) + " |")
        lines += ["", _budget_legend(document)]
    ops = ops_rows(document)
    if ops is not None:
        columns, rows = ops
        lines += ["", "| sockops op | " + " | ".join(f"{mode} {OPS_HEADINGS[kind]}" for mode, kind in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for name, values in rows:
            lines.append(f"| {'**total**' if name == 'total' else name} | "
                         + " | ".join("-" if value is None else OPS_FORMATS[kind].format(value)
                                      for (_, kind), value in zip(columns, values)) + " |")
        lines += ["", OPS_LEGEND]
    verdicts, kept = target_verdicts(document), scaling_kept(document, "ebpf")
    if verdicts or kept is not None:
        lines += ["", "Targets:", "", "| target | × | 95% CI | rounds | verdict |", "|---|---:|---:|---:|---|"]
        for verdict in verdicts:
            interval = "-" if verdict["ci_low"] is None else f"{verdict['ci_low']:.2f}–{verdict['ci_high']:.2f}"
            outcome = verdict["verdict"] + (f" ({_advice(verdict)})" if verdict["verdict"] == NOISE else "")
            lines.append(f"| {_target(verdict)} | {verdict['estimate']:.2f}× | {interval} | {verdict['rounds']} "
                         f"| {outcome} |")
        if kept is not None:
            lines.append(f"| ebpf keeps ≥ 0.95× its connection rate from the smallest to the largest N "
                         f"| {kept:.2f}× | - | {document['env'].get('scaling_rounds', '-')} "
                         f"| {MET if kept >= 0.95 else MISSED} |")
        lines += ["", "×: the ratio of the medians. 95% CI: a confidence interval for the typical ratio (Student's "
                  "t on the logs of the per-round ratios, both modes measured in the same round). Met or missed: "
                  "the whole interval on one side of the bound."]
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
    bars.legend(loc="lower left", fontsize=7, ncol=4, framealpha=0.9)  # eight modes: two rows
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


def _bytes(value: int | None) -> str:
    return "—" if value is None else f"{value / (1 << 20):,.1f} MiB"


def print_scale_report(document: dict, console: Console | None = None) -> None:
    """accel bench --pods: a row per backend, then the maps' fill and the targets."""
    console = console or Console()
    count = document["pods"]
    table = Table(title=f"Node scale: {count} pods captured beside the benchmark's two "
                        f"({document['rounds']} rounds, {document['seconds_per_run']} s a rate run)",
                  box=box.SIMPLE_HEAVY)
    for column in ("backend", "pod add ms\np50/p90/max", f"all {count}\nadd / remove", "kernel\nmemory",
                   f"cps16\n1 / {count} pods", "ratio\n(95% CI)"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for backend, row in document["scale"].items():
        interval = row.get("rate_ratio_ci")
        p90 = row.get("pod_add_ms_p90")
        table.add_row(backend,
                      f"{row['pod_add_ms_p50']:.0f} / {'—' if p90 is None else f'{p90:.0f}'} / {row['pod_add_ms_max']:.0f}",
                      f"{row['all_pods_s']:.2f} s / {row['remove_all_s']:.2f} s",
                      _bytes(row["memory_bytes"]) + ("*" if "estimate" in row["memory_source"] else ""),
                      f"{row['rate_1']:,.0f} / {row['rate_n']:,.0f}",
                      f"{row['rate_ratio']:.3f}" + (f"\n{interval[0]:.2f}–{interval[1]:.2f}" if interval else ""))
    console.print(table)
    console.print("[dim]kernel memory: ebpf, bpftool's bytes_memlock of accel's maps and programs with every pod "
                  "captured; * nftables, the slab's growth while the pods were added (an estimate)[/dim]")
    for backend, row in document["scale"].items():
        if row.get("maps"):
            fill = ", ".join(f"{name} {m['entries']:,}/{m['capacity']:,}" for name, m in row["maps"].items()
                             if m.get("capacity") and m.get("entries") is not None)
            console.print(f"{backend} maps with {count + 2} pods (entries/capacity): {fill}", highlight=False)
    for verdict in document["verdicts"]:
        sign = "≤" if verdict["at_most"] else "≥"
        colour = {MET: "green", MISSED: "red"}.get(verdict["verdict"], "yellow")
        console.print(f"target {verdict['backend']} {verdict['figure']} {sign} {verdict['bound']:g}: "
                      f"{verdict['value']:g} [{colour}]{verdict['verdict']}[/{colour}]", highlight=False)
