"""`accel lab`: the lab of network-namespace pods that compare and bench build (and always remove)."""

from __future__ import annotations

import click

from .common import Group, needs_root, print_json


@click.group("lab", cls=Group)
def lab():
    """The lab of network-namespace pods that compare and bench build (and always remove)."""


@lab.command("cleanup", epilog="\b\nExit status: 0 cleaned up (or nothing to); 1 not root.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
@needs_root("it removes network namespaces, cgroups and processes")
def cleanup(as_json):
    """Remove what a crashed run left: its processes, namespaces, cgroups and files.

    Touches only objects named by accel runs (accel-lab-, accel-bench-, accel-scratch-, then the
    PID of the run) whose run is no longer alive: labs of live runs, on this machine or in other
    sessions, are left alone.
    """
    from ..lab import cleanup_leftovers

    removed = cleanup_leftovers()
    if as_json:
        print_json(removed)
        return
    if not any(removed.values()):
        click.echo("nothing to clean up")
    singular = {"namespaces": "namespace", "cgroups": "cgroup", "directories": "directory"}
    for kind, items in removed.items():
        for item in items:
            click.echo(f"removed {singular[kind]}: {item}")
