"""The eBPF program budget of a run as rows: each program's runs and time per proxied
connection (bpf_stats), and the sockops program's calls by op (op_account), each beside a
baseline run's when there is one. The terminal and Markdown reports lay them out."""

from __future__ import annotations

BUDGET_TITLE = "eBPF program time per proxied connection"

BUDGET_LEGEND = "eBPF program time per proxied connection, from the kernel's run-time statistics (BPF_ENABLE_STATS)"

OPS_TITLE = "sockops calls per proxied connection, by op"

OPS_LEGEND = (
    "The datapath's sockops program by callback, over a crr1 run of its own: calls a connection, and "
    "ns a call measured by two programs of the benchmark's around it, less the hand-over between two "
    "programs (bpf_stats' own clock reads make its per-run figure above the higher one)."
)


def budget_rows(
    document: dict, shown: list[str] | None = None
) -> tuple[list[tuple[str, str]], list[tuple[str, list[float | None]]]] | None:
    """The per-connection program budget of the `shown` modes (all by default) as columns ((mode,
    kind): kind runs, us, before or ratio, the last two only for modes the baseline has) and rows
    (program, a value per column): the programs by time, most first, then "total". None without
    a budget."""
    modes = (document.get("budget") or {}).get("modes") or {}
    modes = {mode: budget for mode, budget in modes.items() if shown is None or mode in shown}
    if not modes:
        return None
    before = (document.get("budget_baseline") or {}).get("modes") or {}
    columns = [
        (mode, kind) for mode in modes for kind in ("runs", "us", *(("before", "ratio") if mode in before else ()))
    ]
    before = {mode: budget for mode, budget in before.items() if mode in modes}

    def most(budgets: dict, name: str) -> float:
        return max(
            [((budget.get("programs") or {}).get(name) or {}).get("ns") or 0 for budget in budgets.values()] or [0]
        )

    # a program the optimisation took away still has a row: its time before
    names = sorted(
        {name for budgets in (modes, before) for budget in budgets.values() for name in budget.get("programs") or {}},
        key=lambda name: (-most(modes, name), -most(before, name), name),
    )

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


def budget_legend(document: dict) -> str:
    legend = f"{BUDGET_LEGEND} over the {document['budget'].get('workload', 'crr1')} run."
    if (document.get("budget_baseline") or {}).get("modes"):
        legend += " Before: µs/conn before the optimisation; ×: now against before."
    return legend


def ops_rows(
    document: dict, shown: list[str] | None = None
) -> tuple[list[tuple[str, str]], list[tuple[str, list[float | None]]]] | None:
    """The sockops account (run.measure_sockops_ops) of the `shown` modes (all by default) as
    columns ((mode, kind): runs, ns a run, µs a connection, and "before", the baseline's runs, for
    modes the baseline has) and rows (op, a value per column), the costliest first, then "total".
    None without an account."""
    budgets = (document.get("budget") or {}).get("modes") or {}
    modes = {mode: budgets[mode]["sockops_ops"] for mode in ops_modes(document) if shown is None or mode in shown}
    if not modes:
        return None
    before = {
        mode: budget["sockops_ops"]
        for mode, budget in ((document.get("budget_baseline") or {}).get("modes") or {}).items()
        if mode in modes and budget.get("sockops_ops")
    }
    columns = [
        (mode, kind)
        for mode in modes
        for kind in ("runs", "ns_per_run", "us", *(("before",) if mode in before else ()))
    ]
    names = sorted(
        {op for ops in (*modes.values(), *before.values()) for op in ops},
        key=lambda op: (-max((ops.get(op) or {}).get("ns") or 0 for ops in modes.values()), op),
    )

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


def ops_modes(document: dict) -> list[str]:
    """The modes whose budget has a sockops account."""
    return [
        mode
        for mode, budget in ((document.get("budget") or {}).get("modes") or {}).items()
        if budget.get("sockops_ops")
    ]
