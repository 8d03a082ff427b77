"""`accel demo`: the main job, end to end, on this machine."""

from __future__ import annotations

import click

from .common import NameList, needs_root

EPILOG = (
    "\b\nExamples:\n"
    "  accel demo                               # everything, about 8 minutes\n"
    "  accel demo --bench-modes explicit,ebpf   # a shorter benchmark at the end\n"
    "\b\nExit status: 0 done; 1 a step failed (or not root); 2 bad input."
)


def _bench_modes():
    from ..bench.run import MODE_CHOICES

    return NameList(MODE_CHOICES, "mode")


@click.command("demo", epilog=EPILOG)
@click.option(
    "--bench-modes",
    type=_bench_modes(),
    metavar="LIST",
    help="The modes of the closing accel bench --quick, explicit among them [default: every mode].",
)
@needs_root("it creates network namespaces, loads rules and BPF")
def demo(bench_modes):
    """Render the stock istio-init capture, load it into scratch namespaces, show the kernel's view.

    Then compares every backend on real traffic and runs accel bench --quick (about 3 minutes).
    Needs root. Everything it creates lives in namespaces it removes again.
    """
    from ..bench.run import MODES, BenchConfig
    from ..demo import run_demo
    from ..spec import SpecError

    try:
        config = BenchConfig.quick(bench_modes or MODES)
    except ValueError as error:
        raise SpecError("--bench-modes", ",".join(bench_modes), str(error)) from None
    run_demo(config)
