"""Snapshots of what a namespace (or the host) holds, for before/after comparisons."""

import re

from accel import process

_COUNTERS = re.compile(r"\[\d+:\d+\]")


def _saved(text: str, drop_empty_tables: bool) -> str:
    """iptables-save output without comments and counters; optionally without tables that hold
    nothing but empty built-in chains (iptables-legacy cannot unregister those, see the backend)."""
    blocks, block = [], []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        block.append(_COUNTERS.sub("[0:0]", line))
        if line == "COMMIT":
            blocks.append(block)
            block = []
    if drop_empty_tables:
        blocks = [
            b
            for b in blocks
            if any(not (line.startswith((":", "*")) or line == "COMMIT") for line in b)
            or any(line.startswith(":") and " - " in line for line in b)
        ]
    return "\n".join("\n".join(b) for b in sorted(blocks))


def rule_state(netns: str | None) -> dict[str, str]:
    """Every kind of rule a backend could leave: iptables (both variants, both families), nftables,
    policy routing. netns None means the host (read only)."""

    def out(*argv):
        return process.run(list(argv), netns=netns).stdout

    return {
        "iptables-nft": _saved(out("iptables-nft-save") + out("ip6tables-nft-save"), False),
        "iptables-legacy": _saved(out("iptables-legacy-save") + out("ip6tables-legacy-save"), True),
        "nft": out("nft", "list", "ruleset"),
        "ip-rules": out("ip", "-4", "rule") + out("ip", "-6", "rule"),
        "ip-routes": out("ip", "-4", "route", "show", "table", "all")
        + out("ip", "-6", "route", "show", "table", "all"),
    }


def host_links() -> set[str]:
    return {line.split(":")[1].strip().split("@")[0] for line in process.run(["ip", "-o", "link"]).stdout.splitlines()}
