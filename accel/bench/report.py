"""The benchmark's document on the terminal: the main, scaling, churn and program-budget
tables, the path check, the targets, and a progress bar (the node-scale report:
scale_report.py)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .program_budget import (
    BUDGET_FORMATS,
    BUDGET_HEADINGS,
    BUDGET_TITLE,
    OPS_FORMATS,
    OPS_HEADINGS,
    OPS_LEGEND,
    OPS_TITLE,
    budget_legend,
    budget_rows,
    ops_modes,
    ops_rows,
)
from .run import LOWER_IS_BETTER, REFERENCE
from .tables import CHURN_COLUMNS, ROWS, churn_legend, churn_rows, figure_cell, range_text, scaling_rows
from .verdicts import (
    MET,
    MISSED,
    NOISE,
    advice,
    interval_text,
    scaling_kept,
    target_text,
    target_verdicts,
)

# every table of the report: its title flush left, a rule under the header, no padding at the edges
TABLE_STYLE: dict = {"title_justify": "left", "pad_edge": False, "box": box.SIMPLE_HEAD, "collapse_padding": True}

LEGEND = (
    "ka1/ka16: keep-alive HTTP over 1/16 connections; cps16: a new connection per request, 16 at "
    "a time; crr1: one at a time, timed from connect to close; bulk: a 16 MiB response; conntrack: "
    "entries cps16 left in the client pod. Under each figure, × explicit (green: better)."
)


def column_header(mode: str) -> str:
    """A mode as a narrow column header: broken after its first - or + (iptables-/nft, ebpf+/sockmap)."""
    return re.sub(r"([-+])", "\\1\n", mode, count=1)


def _coloured(text: str, ratio: float | None, lower_is_better: bool = False) -> str:
    """A terminal cell: the value, and under it the ratio, green when better, red when worse by
    more than 3%."""
    if ratio is None:
        return text
    better = ratio < 1 if lower_is_better else ratio > 1
    colour = "green" if better else "red" if abs(ratio - 1) > 0.03 else "default"
    return f"{text}\n[{colour}]{ratio:.2f}×[/{colour}]"


@contextlib.contextmanager
def progress_bar(console: Console, total: int):
    """A progress bar for run_bench: yields its progress callback. Without a terminal (a log, CI),
    a line at each new phase instead."""
    if not console.is_terminal:
        done = [0]
        phase: list[str | None] = [None]

        def log(what: str, measured: bool):
            done[0] += measured
            if what and what.split(":")[0] != phase[0]:
                phase[0] = what.split(":")[0]
                console.print(f"accel bench: {phase[0]} ({done[0]}/{total} runs done)", highlight=False)

        yield log
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("building the modes' pods", total=total)

        def step(what: str, measured: bool):
            if measured:
                progress.advance(task)
            else:
                progress.update(task, description=what)

        yield step


def _main_table(document: dict, modes: list[str], title: str | None) -> Table:
    table = Table(title=title, show_lines=True, **TABLE_STYLE)
    table.add_column("")
    for mode in modes:
        errors = document["modes"][mode].get("errors")
        table.add_column(column_header(mode) + (f"\n[red]{errors} errors[/red]" if errors else ""), justify="right")
    for figure, label, fmt in ROWS:
        # without the ratios' spread: eight modes leave no room for it (Markdown and the plot show it)
        table.add_row(
            label,
            *(_coloured(*figure_cell(document, mode, figure, fmt)[:2], figure in LOWER_IS_BETTER) for mode in modes),
        )
    return table


def _fitted(
    console: Console, modes: list[str], build: Callable[[list[str], bool], Table], repeat: str | None = None
) -> list[Table]:
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
        groups = [modes[start : start + size] for start in range(0, len(modes), size)]
        groups = [
            group if index == 0 or repeat not in modes or repeat in group else [repeat, *group]
            for index, group in enumerate(groups)
        ]
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
    tables = _fitted(
        console,
        list(document["modes"]),
        lambda modes, titled: _main_table(document, modes, title if titled else None),
        REFERENCE,
    )
    _print_fitted(console, title, tables)
    console.print(f"[dim]{LEGEND}[/dim]")

    if document["scaling"]:
        sizes, rows = scaling_rows(document)
        first, last = sizes[0], sizes[-1]
        scaling = Table(
            title="rule scaling: new connections/s with N excluded CIDRs (none match), and × explicit at the same N",
            **TABLE_STYLE,
        )
        scaling.add_column("mode")
        for size in sizes:
            scaling.add_column(f"N={int(size):,}", justify="right")
        scaling.add_column(f"N={int(last):,}\nvs N={int(first):,}", justify="right")
        scaling.add_column("kernel\nentries", justify="right")
        scaling.add_column("install", justify="right")
        for mode, rates, kept, entries, install in rows:
            # no colour here: every capture mode sits below explicit; the trend is the point
            scaling.add_row(
                mode,
                *(
                    text
                    if ratio is None
                    else f"{text}\n{ratio:.2f}×" + (f"\n[dim]{range_text(spread)}[/dim]" if spread else "")
                    for text, ratio, spread in rates
                ),
                kept,
                entries,
                install,
            )
        console.print(scaling)
        console.print(
            f"[dim]N={int(last):,} vs N={int(first):,}: the rate kept at the largest N, each measured "
            "against explicit in the same rounds (the VM's drift divided out). Under a ratio, its lowest "
            "and highest round. Kernel entries (at the largest N): rules, set elements or trie entries "
            "read back from the client pod.[/dim]"
        )

    churn = churn_rows(document)
    if churn:
        table = Table(title="churn: short connections, the app closing first", **TABLE_STYLE)
        for number, column in enumerate(CHURN_COLUMNS):
            table.add_column(column, justify="left" if number == 0 else "right")
        for row in churn:
            table.add_row(*row)
        console.print(table)
        console.print(f"[dim]{churn_legend(document)}[/dim]")

    budgeted = list((document.get("budget") or {}).get("modes") or {})
    if budgeted:
        _print_fitted(
            console,
            BUDGET_TITLE,
            _fitted(console, budgeted, lambda modes, titled: _budget_table(document, modes, titled)),
        )
        console.print(f"[dim]{budget_legend(document)}[/dim]")
    accounted = ops_modes(document)
    if accounted:
        _print_fitted(
            console, OPS_TITLE, _fitted(console, accounted, lambda modes, titled: _ops_table(document, modes, titled))
        )
        console.print(f"[dim]{OPS_LEGEND}[/dim]")

    for line in path_lines(document) + target_lines(document):
        console.print(line)
    tools = env["tools"]
    console.print(
        f"[dim]{env['kernel']}, {env['cpus']} CPUs ({env['cpu_model']}); pods on CPU "
        f"{env['pinning']['pods']}, runner on {env['pinning']['runner']}; {env['rounds']} rounds of "
        f"{env['seconds_per_run']} s, mode order rotated; {tools['haproxy']}; {tools['nginx']}; "
        f"{tools['wrk']}; {tools['iptables']}; {tools['nft']}.[/dim]"
    )


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


def target_lines(document: dict) -> list[str]:
    """Each target this run can judge: the measured ratio, its 95% interval and the verdict (and,
    when the rounds do not separate it from noise, what would), then the rule-scaling target."""
    lines = []
    for verdict in target_verdicts(document):
        colour = {MET: "green", MISSED: "red", NOISE: "yellow"}[verdict["verdict"]]
        lines.append(
            f"target {target_text(verdict)}: {verdict['estimate']:.2f}× ({interval_text(verdict)}) "
            f"[{colour}]{verdict['verdict']}[/{colour}]"
        )
        if verdict["verdict"] == NOISE:
            lines.append(f"  [dim]{advice(verdict)}[/dim]")
    kept = scaling_kept(document, "ebpf")
    if kept is not None:
        mark = "[green]met[/green]" if kept >= 0.95 else "[red]missed[/red]"
        lines.append(
            f"target ebpf keeps ≥ 0.95× its connection rate from the smallest to the largest N: {kept:.2f}× {mark}"
        )
    return lines


def _budget_table(document: dict, modes: list[str], titled: bool = True) -> Table:
    budget = budget_rows(document, modes)
    assert budget is not None  # the modes are the budget's own
    return _rows_table(BUDGET_TITLE if titled else None, "program", *budget, BUDGET_HEADINGS, BUDGET_FORMATS)


def _ops_table(document: dict, modes: list[str], titled: bool = True) -> Table:
    ops = ops_rows(document, modes)
    assert ops is not None  # the modes are those with an account (ops_modes)
    return _rows_table(OPS_TITLE if titled else None, "op", *ops, OPS_HEADINGS, OPS_FORMATS)


def _rows_table(
    title: str | None, first: str, columns: list[tuple[str, str]], rows: list, headings: dict, formats: dict
) -> Table:
    """A program_budget table (columns of (mode, kind), rows of (name, values), the last the
    total) for the terminal: the mode heads its first column, a ratio is coloured."""
    table = Table(title=title, **TABLE_STYLE)
    table.add_column(first, vertical="bottom")
    for mode, kind in columns:
        heading = headings[kind]
        table.add_column(
            f"{column_header(mode)}\n{heading}" if kind == "runs" else heading, justify="right", vertical="bottom"
        )
    for index, (name, values) in enumerate(rows):
        cells = [name]
        for (_, kind), value in zip(columns, values):
            text = "-" if value is None else formats[kind].format(value)
            if kind == "ratio" and value is not None:  # less time is better
                colour = "green" if value < 1 else "red" if value > 1.03 else "default"
                text = f"[{colour}]{text}[/{colour}]"
            cells.append(text)
        table.add_row(*cells, end_section=index == len(rows) - 2)  # a rule above the total
    return table
