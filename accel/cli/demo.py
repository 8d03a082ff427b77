"""`accel demo`: the main job, end to end, on this machine."""

from __future__ import annotations

import click

from .common import needs_root


@click.command("demo", epilog="\b\nExit status: 0 done; 1 a step failed (or not root).")
@needs_root("it creates network namespaces, loads rules and BPF")
def demo():
    """Render the stock istio-init capture, load it into scratch namespaces, show the kernel's view.

    Then compares every backend on real traffic and runs accel bench --quick (about 3 minutes).
    Needs root. Everything it creates lives in namespaces it removes again.
    """
    from ..demo import run_demo

    run_demo()
