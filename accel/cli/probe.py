"""`accel probe`: does this kernel have what the eBPF backend needs?"""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from .common import EXIT_FAILED, needs_root, print_json

EPILOG = (
    "\b\n--json prints {\"ok\": true|false, \"features\": [{\"name\": ..., \"ok\": true|false,\n"
    "  \"detail\": ...}, ...]}, one entry a feature, in the order of the table.\n"
    "\b\nExit status: 0 everything is there; 1 something is missing (or not root).\n"
)


@click.command("probe", epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print the features as JSON (see below).")
@needs_root("it loads throwaway BPF programs")
def probe_command(as_json):
    """Check that this kernel has what the eBPF backend needs, by trying each thing.

    Loads throwaway programs with each hook's attach type, creates each map type, and asks the
    verifier about helpers; attaches nothing. Needs root.
    """
    from ..ebpf.probe import probe

    features = probe()
    ok = all(f.ok for f in features)
    if as_json:
        print_json({"ok": ok, "features": [{"name": f.name, "ok": f.ok, "detail": f.detail} for f in features]})
    else:
        table = Table(title="Kernel features for the eBPF backend", title_justify="left")
        for column in ("feature", "present", "detail"):
            table.add_column(column)
        for f in features:
            table.add_row(f.name, "[green]yes[/green]" if f.ok else "[red]no[/red]", f.detail)
        Console().print(table)
    sys.exit(0 if ok else EXIT_FAILED)
