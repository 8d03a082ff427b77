"""What BPF objects the kernel holds now, as bpftool lists them: for the demo's read-back and
the tests' before/after comparisons."""

from __future__ import annotations

import json
import os

from .. import process


def _listing(kind: str) -> list[dict]:
    return json.loads(process.run(["bpftool", "-j", kind, "show"]).stdout or "[]")


def bpf_objects() -> dict[str, set[tuple[int, str]]]:
    """The BPF programs, maps and links in the kernel now, by id and name."""
    return {kind: {(item["id"], item.get("name", "")) for item in _listing(kind)} for kind in ("prog", "map", "link")}


def sk_lookup_links(netns: str) -> list[dict]:
    """The sk_lookup links attached to a named network namespace (`bpftool net show` does not
    list sk_lookup; `bpftool link show` does, with the namespace's inode)."""
    inode = os.stat(f"/run/netns/{netns}").st_ino
    return [
        link for link in _listing("link") if link.get("attach_type") == "sk_lookup" and link.get("netns_ino") == inode
    ]
