"""The comparison as a table: a row per case, a column per backend, marks where a backend differs."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from . import Comparison

_SERVER_NAMES = {"pod": "app", "remote": "remote", "dns": "dns"}
_PROXY_NAMES = {"outbound": "proxy-out", "inbound": "proxy-in", "dns": "proxy-dns"}
LEGEND = ("proxy-out/-in/-dns: the sidecar's outbound, inbound and DNS listeners; app, remote, dns: "
          "the server that answered (app is the pod under test); --json has every detail")


def _hop(hop: str) -> str:
    agent, listener = hop.split(" ", 1)
    if agent == "sidecar":
        return _PROXY_NAMES.get(listener, f"proxy-{listener}")
    return f"{_SERVER_NAMES.get(agent, agent)}:{listener.split(':')[-1]}"


def summary(outcome: dict) -> str:
    """One short line: the listeners the request passed through, and how it ended if not well."""
    text = " → ".join(_hop(hop) for hop in outcome["path"]) or "nothing received"
    if outcome["result"] != "ok":
        text += f" ({outcome['result']})"
    return text


def print_table(comparison: Comparison, console: Console) -> None:
    names = list(comparison.runs)
    table = Table(title="Capture on real traffic, compared with " + comparison.reference, title_justify="left",
                  show_lines=False, expand=False)
    table.add_column("case", style="bold", no_wrap=True)
    for name in names:
        table.add_column(name)
    for case in comparison.cases:
        cells = []
        for name in names:
            text = summary(comparison.runs[name].outcomes[case.name])
            if name == comparison.reference:
                cells.append(text)
            elif comparison.agrees(name, case):
                cells.append(f"[green]✓[/green] {text}" if name != "none" else f"[dim]= {text}[/dim]")
            else:
                cells.append(f"[red]✗ {text}[/red]" if name != "none" else f"[yellow]≠ {text}[/yellow]")
        table.add_row(case.name, *cells)
    table.add_section()
    table.add_row("differs from reference", "",
                  *[str(comparison.mismatches(n)) for n in names if n != comparison.reference])
    table.add_row("conntrack entries", *[str(comparison.runs[n].conntrack_entries) for n in names])
    console.print(table)
    console.print(f"[dim]{LEGEND}[/dim]")
    for name in names:
        console.print(f"[dim]{name}: {comparison.runs[name].description}[/dim]")
    failing = [n for n in names if n != "none" and comparison.mismatches(n)]
    if failing:
        console.print(f"[red]{', '.join(failing)} captured differently from {comparison.reference}[/red]")
    else:
        others = [n for n in names if n not in (comparison.reference, "none")]
        if others:
            console.print(f"[green]{', '.join(others)} captured exactly what {comparison.reference} captured, "
                          f"on all {len(comparison.cases)} cases[/green]")
