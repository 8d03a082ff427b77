"""`accel probe`: does this kernel have what the eBPF backend needs?"""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from .common import EXIT_FAILED, needs_root, print_json

EPILOG = (
    '\b\n--json prints {"ok": true|false, "short_circuit": true|false, "features": [{"name": ...,\n'
    '  "ok": true|false, "detail": ..., "needed_for": "capture"|"short-circuit"}, ...]}, one entry\n'
    "  a feature, in the order of the table.\n"
    "\b\nExit status: 0 everything capture needs is there (the short-circuit may still be missing:\n"
    "  see short_circuit); 1 something capture needs is missing (or not root).\n"
)


@click.command("probe", epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print the features as JSON (see below).")
@needs_root("it loads throwaway BPF programs")
def probe_command(as_json):
    """Check that this kernel has what the eBPF backend needs, by trying each thing.

    Loads throwaway programs with each hook's attach type, creates each map type, and asks the
    verifier about helpers; attaches nothing. Needs root.
    """
    from ..ebpf.probe import CAPTURE, probe

    features = probe()
    ok = all(f.ok for f in features if f.needed_for == CAPTURE)
    short_circuit = all(f.ok for f in features if f.needed_for != CAPTURE)
    if as_json:
        print_json(
            {
                "ok": ok,
                "short_circuit": short_circuit,
                "features": [
                    {"name": f.name, "ok": f.ok, "detail": f.detail, "needed_for": f.needed_for} for f in features
                ],
            }
        )
    else:
        table = Table(title="Kernel features for the eBPF backend", title_justify="left")
        for column in ("feature", "present", "detail"):
            table.add_column(column)
        for f in features:
            if f.needed_for != CAPTURE and f is next(g for g in features if g.needed_for != CAPTURE):
                table.add_section()
                table.add_row("[bold]the short-circuit (--sockmap) also needs[/bold]", "", "")
            table.add_row(f.name, "[green]yes[/green]" if f.ok else "[red]no[/red]", f.detail)
        Console().print(table)
        if ok and not short_circuit:
            click.echo("capture: yes; the short-circuit (--sockmap): no, see above")
    sys.exit(0 if ok else EXIT_FAILED)
