"""accel bench --pods on the terminal: a row per backend (pod add times, kernel memory, the rate
with 1 and with N pods), then the maps' fill and the targets."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from .verdicts import MET, MISSED


def _bytes(value: int | None) -> str:
    return "—" if value is None else f"{value / (1 << 20):,.1f} MiB"


def print_scale_report(document: dict, console: Console | None = None) -> None:
    """accel bench --pods: a row per backend, then the maps' fill and the targets."""
    console = console or Console()
    count = document["pods"]
    table = Table(
        title=f"Node scale: {count} pods captured beside the benchmark's two "
        f"({document['rounds']} rounds, {document['seconds_per_run']} s a rate run)",
        box=box.SIMPLE_HEAVY,
    )
    for column in (
        "backend",
        "pod add ms\np50/p90/max",
        f"all {count}\nadd / remove",
        "kernel\nmemory",
        f"cps16\n1 / {count} pods",
        "ratio\n(95% CI)",
    ):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for backend, row in document["scale"].items():
        interval = row.get("rate_ratio_ci")
        p90 = row.get("pod_add_ms_p90")
        table.add_row(
            backend,
            f"{row['pod_add_ms_p50']:.0f} / {'—' if p90 is None else f'{p90:.0f}'} / {row['pod_add_ms_max']:.0f}",
            f"{row['all_pods_s']:.2f} s / {row['remove_all_s']:.2f} s",
            _bytes(row["memory_bytes"]) + ("*" if "estimate" in row["memory_source"] else ""),
            f"{row['rate_1']:,.0f} / {row['rate_n']:,.0f}",
            f"{row['rate_ratio']:.3f}" + (f"\n{interval[0]:.2f}–{interval[1]:.2f}" if interval else ""),
        )
    console.print(table)
    console.print(
        "[dim]kernel memory: ebpf, bpftool's bytes_memlock of accel's maps and programs with every pod "
        "captured; * nftables, the slab's growth while the pods were added (an estimate)[/dim]"
    )
    for backend, row in document["scale"].items():
        if row.get("maps"):
            fill = ", ".join(
                f"{name} {m['entries']:,}/{m['capacity']:,}"
                for name, m in row["maps"].items()
                if m.get("capacity") and m.get("entries") is not None
            )
            console.print(f"{backend} maps with {count + 2} pods (entries/capacity): {fill}", highlight=False)
    for verdict in document["verdicts"]:
        sign = "≤" if verdict["at_most"] else "≥"
        colour = {MET: "green", MISSED: "red"}.get(verdict["verdict"], "yellow")
        console.print(
            f"target {verdict['backend']} {verdict['figure']} {sign} {verdict['bound']:g}: "
            f"{verdict['value']:g} [{colour}]{verdict['verdict']}[/{colour}]",
            highlight=False,
        )
