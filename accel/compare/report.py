"""The comparison as tables that fit 80 columns: a row per case with the reference's outcome and, beside it,
the backends that agree and what each one that differs did; then a row per backend with its totals."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import Case, Comparison

_SERVER_NAMES = {"pod": "app", "remote": "remote", "dns": "dns"}
_PROXY_NAMES = {"outbound": "proxy-out", "inbound": "proxy-in", "dns": "proxy-dns"}
# How a request went is summed up by its path; agreement is decided on the whole outcome.
_SUMMED_UP = ("result", "path")
LEGEND = (
    "✓ the same outcome as the reference; ✗ a different one; ≠ none differs (it captures nothing). "
    "proxy-out/-in/-dns: the sidecar's outbound, inbound and DNS listeners; app, remote, dns: the server "
    "that answered (app is the pod under test); --json has every detail"
)


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


def _difference(outcome: dict, reference: dict) -> str:
    """A differing outcome: its path, and what else differs when the path is the same."""
    text = summary(outcome)
    details = [
        f"{key} {outcome.get(key)}"
        for key in sorted(set(outcome) | set(reference))
        if key not in _SUMMED_UP and outcome.get(key) != reference.get(key)
    ]
    return "; ".join([text, *details]) if summary(reference) == text else text


def _others(comparison: Comparison, case: Case, others: list[str]) -> Text:
    """The backends that agree with the reference on one line, then each that differs with what it did."""
    reference = comparison.runs[comparison.reference].outcomes[case.name]
    same = [name for name in others if comparison.agrees(name, case)]
    lines = [Text(f"✓ {' '.join(same)}", style="green")] if same else []
    for name in others:
        if name in same:
            continue
        outcome = comparison.runs[name].outcomes[case.name]
        if name == "none":
            lines.append(Text(f"≠ none: {summary(outcome)}", style="yellow"))
        else:
            lines.append(Text(f"✗ {name}: {_difference(outcome, reference)}", style="bold red"))
    return Text("\n").join(lines)


def print_table(comparison: Comparison, console: Console) -> None:
    names = list(comparison.runs)
    others = [name for name in names if name != comparison.reference]
    # Every column may fold as a last resort, so nothing is ever cut off; hops and names are
    # words, so the cells wrap between them first.
    cases = Table(
        title="Capture on real traffic, compared with " + comparison.reference,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        expand=False,
    )
    # Case names whole when they leave room for the outcomes, else folded too.
    longest = max((len(case.name) for case in comparison.cases), default=0)
    cases.add_column("case", style="bold", no_wrap=longest <= console.width // 2, overflow="fold")
    cases.add_column(f"{comparison.reference} (reference)", overflow="fold")
    if others:
        cases.add_column("the others", overflow="fold")
    for case in comparison.cases:
        row = [case.name, summary(comparison.runs[comparison.reference].outcomes[case.name])]
        cases.add_row(*row, *([_others(comparison, case, others)] if others else []))
    console.print(cases)

    totals = Table(
        title="Per backend: the cases that differ from the reference, the conntrack entries it created",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        expand=False,
    )
    totals.add_column("backend", no_wrap=True, overflow="fold")
    totals.add_column("differ", justify="right", overflow="fold")
    totals.add_column("conntrack", justify="right", overflow="fold")
    totals.add_column("what it is", overflow="fold")
    for name in names:
        differing = "reference" if name == comparison.reference else str(comparison.mismatches(name))
        totals.add_row(name, differing, str(comparison.runs[name].conntrack_entries), comparison.runs[name].description)
    console.print(totals)
    console.print(Text(LEGEND, style="dim"))
    failing = [n for n in others if n != "none" and comparison.mismatches(n)]
    if failing:
        console.print(f"[red]{', '.join(failing)} captured differently from {comparison.reference}[/red]")
    else:
        agreeing = [n for n in others if n != "none"]
        if agreeing:
            console.print(
                f"[green]{', '.join(agreeing)} captured exactly what {comparison.reference} captured, "
                f"on all {len(comparison.cases)} cases[/green]"
            )
