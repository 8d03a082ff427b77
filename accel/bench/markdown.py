"""The benchmark's document as Markdown, for publishing a run (docs/benchmarks.md)."""

from __future__ import annotations

from .program_budget import (
    BUDGET_FORMATS,
    BUDGET_HEADINGS,
    OPS_FORMATS,
    OPS_HEADINGS,
    OPS_LEGEND,
    budget_legend,
    budget_rows,
    ops_rows,
)
from .tables import CHURN_COLUMNS, ROWS, bracketed, churn_legend, churn_rows, figure_cell, scaling_rows
from .verdicts import MET, MISSED, NOISE, advice, scaling_kept, target_text, target_verdicts


def markdown(document: dict) -> str:
    """The main and scaling tables, the program budget and the targets as Markdown, for publishing a run."""
    modes = list(document["modes"])
    lines = ["| figure | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for figure, label, fmt in ROWS:
        cells = (bracketed(*figure_cell(document, mode, figure, fmt)) for mode in modes)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "In brackets: × explicit and, over two rounds or more, its lowest and highest round (each round "
        "against explicit in the same round).",
    ]
    if document["scaling"]:
        sizes, rows = scaling_rows(document)
        lines += [
            "",
            "| mode | "
            + " | ".join(f"N={int(s):,}" for s in sizes)
            + f" | N={int(sizes[-1]):,} vs N={int(sizes[0]):,} | kernel entries | install |",
            "|---|" + "---:|" * (len(sizes) + 3),
        ]
        for mode, rates, kept, entries, install in rows:
            lines.append(
                f"| {mode} | " + " | ".join(bracketed(*rate) for rate in rates) + f" | {kept} | {entries} | {install} |"
            )
    churn = churn_rows(document)
    if churn:
        lines += ["", "| " + " | ".join(CHURN_COLUMNS) + " |", "|---|" + "---:|" * (len(CHURN_COLUMNS) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in churn]
        lines += ["", churn_legend(document)]
    budget = budget_rows(document)
    if budget is not None:
        lines += ["", *_rows("program", *budget, BUDGET_HEADINGS, BUDGET_FORMATS), "", budget_legend(document)]
    ops = ops_rows(document)
    if ops is not None:
        lines += ["", *_rows("sockops op", *ops, OPS_HEADINGS, OPS_FORMATS), "", OPS_LEGEND]
    verdicts, kept = target_verdicts(document), scaling_kept(document, "ebpf")
    if verdicts or kept is not None:
        lines += ["", "Targets:", "", "| target | × | 95% CI | rounds | verdict |", "|---|---:|---:|---:|---|"]
        for verdict in verdicts:
            interval = "-" if verdict["ci_low"] is None else f"{verdict['ci_low']:.2f}–{verdict['ci_high']:.2f}"
            outcome = verdict["verdict"] + (f" ({advice(verdict)})" if verdict["verdict"] == NOISE else "")
            lines.append(
                f"| {target_text(verdict)} | {verdict['estimate']:.2f}× | {interval} | {verdict['rounds']} "
                f"| {outcome} |"
            )
        if kept is not None:
            lines.append(
                f"| ebpf keeps ≥ 0.95× its connection rate from the smallest to the largest N "
                f"| {kept:.2f}× | - | {document['env'].get('scaling_rounds', '-')} "
                f"| {MET if kept >= 0.95 else MISSED} |"
            )
        lines += [
            "",
            "×: the ratio of the medians. 95% CI: a confidence interval for the typical ratio (Student's "
            "t on the logs of the per-round ratios, both modes measured in the same round). Met or missed: "
            "the whole interval on one side of the bound.",
        ]
    return "\n".join(lines) + "\n"


def _rows(first: str, columns: list[tuple[str, str]], rows: list, headings: dict, formats: dict) -> list[str]:
    """A program_budget table (columns of (mode, kind), rows of (name, values)) as Markdown lines."""
    lines = [
        f"| {first} | " + " | ".join(f"{mode} {headings[kind]}" for mode, kind in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, values in rows:
        lines.append(
            f"| {'**total**' if name == 'total' else name} | "
            + " | ".join(
                "-" if value is None else formats[kind].format(value) for (_, kind), value in zip(columns, values)
            )
            + " |"
        )
    return lines
