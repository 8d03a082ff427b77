"""nft commands in a pod's network namespace, through libnftables (Debian's python3-nftables).

The commands run in a thread that has entered the namespace with setns(2) and then ends, so the
namespace switch never leaks into the caller. Backends call nft() through their Runner; the
readers below take that runner too.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..process import in_netns
from .base import BackendError

if TYPE_CHECKING:
    from .runner import Runner


def nft(netns: str, commands: str, *, json_output: bool = False) -> str:
    """Run nft commands in a network namespace through libnftables; returns the output."""

    def run():
        import nftables  # Debian's binding; imported here so that rendering never needs it

        context = nftables.Nftables()
        context.set_json_output(json_output)
        return context.cmd(commands)

    try:
        rc, output, stderr = in_netns(netns, run)
    except OSError as error:
        raise BackendError(f"nftables in {netns}: {error}") from error
    if rc != 0:
        raise BackendError(f"nft: {stderr.strip()}")
    return output


def listing(runner: Runner, netns: str, what: str = "ruleset") -> list[dict]:
    """The items of `nft -j list WHAT` (ruleset, tables) in the namespace."""
    return json.loads(runner.nft(netns, f"list {what}", json_output=True) or '{"nftables": []}')["nftables"]


def tables_in(runner: Runner, netns: str) -> set[str]:
    return {
        f"{item['table']['family']} {item['table']['name']}"
        for item in listing(runner, netns, "tables")
        if "table" in item
    }


def table_rule_counts(runner: Runner, netns: str, families: tuple[str, ...]) -> dict[str, int]:
    """{"family name": rule count} for the tables of these families."""
    counts: dict[str, int] = {}
    for item in listing(runner, netns):
        for kind in ("table", "rule"):
            if kind in item and item[kind]["family"] in families:
                key = f"{item[kind]['family']} {item[kind]['table' if kind == 'rule' else 'name']}"
                counts[key] = counts.get(key, 0) + (kind == "rule")
    return counts
