"""The `accel` command line: one module per command group, listed in `accel --help` under what a
user does with them."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import click

from . import bench, cni, compare, demo, lab, node, probe, render, soak
from .common import Main


def _version() -> str:
    try:
        return version("accel")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


@click.group(
    "accel",
    cls=Main,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="\b\nExit status: 0 done (compare: every backend agrees); 1 a run failed, a\n"
    "  backend differed, or a command that needs root ran without it; 2 bad\n"
    "  input. Every error is one line on stderr: accel: error: <what>.\n"
    '\b\nShell completion (bash): eval "$(_ACCEL_COMPLETE=bash_source accel)"\n'
    "  (zsh: zsh_source, fish: fish_source)",
)
@click.version_option(_version(), "--version", prog_name="accel", message="%(prog)s %(version)s")
def main():
    """accel: Istio sidecar traffic capture with iptables, nftables or eBPF, proven equivalent.

    Start with `accel render --help`; `accel COMMAND --help` explains each command, with examples.
    """


# Help headings in this order, each listing its commands in this order; a heading with no
# command is not shown.
COMMANDS = {
    "See": (render.render, probe.probe_command),
    "Prove": (compare.compare_command, soak.soak, lab.lab),
    "Measure": (bench.bench,),
    "Try": (demo.demo,),
    "Run on a node": node.COMMANDS + cni.COMMANDS,
}
for section, commands in COMMANDS.items():
    for command in commands:
        main.add_command(command, section=section)

__all__ = ["main"]
