"""nft commands in a pod's network namespace, through libnftables (Debian's python3-nftables).

The commands run in a thread that has entered the namespace with setns(2) and then ends, so the
namespace switch never leaks into the caller.
"""

from __future__ import annotations

import json

from ..process import in_netns
from .base import BackendError


def nft(netns: str, commands: str, *, json_output: bool = False) -> str:
    """Run nft commands in a network namespace through libnftables; returns the output."""

    def run():
        import nftables  # Debian's binding; imported here so that rendering never needs it

        context = nftables.Nftables()
        context.set_json_output(json_output)
        return context.cmd(commands)

    try:
        rc, output, error = in_netns(netns, run)
    except OSError as error:
        raise BackendError(f"nftables in {netns}: {error}") from error
    if rc != 0:
        raise BackendError(f"nft: {error.strip()}")
    return output


def tables_in(netns: str) -> set[str]:
    listing = json.loads(nft(netns, "list tables", json_output=True) or '{"nftables": []}')
    return {f"{item['table']['family']} {item['table']['name']}" for item in listing["nftables"] if "table" in item}


def table_rule_counts(netns: str, families: tuple[str, ...]) -> dict[str, int]:
    """{"family name": rule count} for the tables of these families."""
    ruleset = json.loads(nft(netns, "list ruleset", json_output=True) or '{"nftables": []}')
    counts: dict[str, int] = {}
    for item in ruleset["nftables"]:
        for kind in ("table", "rule"):
            if kind in item and item[kind]["family"] in families:
                key = f"{item[kind]['family']} {item[kind]['table' if kind == 'rule' else 'name']}"
                counts[key] = counts.get(key, 0) + (kind == "rule")
    return counts
