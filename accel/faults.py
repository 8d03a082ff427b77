"""Failpoints: named places in a node's changes where a test can make accel die as a crash or
an OOM kill would (SIGKILL: no finally, no clean-up), to prove that the next `accel up` repairs
whatever was half done. Armed only by the environment, ACCEL_FAULT=kill:<point>; unarmed, a point
is one dictionary lookup.

Each point names the step it follows. tests/integration/test_faults.py kills accel at every one."""

from __future__ import annotations

import os
import signal

POINTS = {
    "up:loaded": "up: the programs and maps loaded, nothing pinned or attached yet",
    "up:attached": "up: the cgroup links attached, not yet pinned",
    "up:pinned": "up: links, maps and programs pinned, the state not yet saved",
    "pod-add:recorded": "pod add: the pod's record saved (phase adding), nothing in the kernel yet",
    "pod-add:entries": "pod add: its lists, namespace facts and sk_lookup link in place, not its pods entry",
    "pod-add:captured": "pod add: its pods entry written (captured), the record still says adding",
    "pod-del:recorded": "pod del: the record saved (phase removing), nothing removed yet",
    "pod-del:uncaptured": "pod del: its pods entry gone (uncaptured), its lists and link still there",
    "down:pods-removed": "down: every pod removed, the links and pins still there",
    "down:unpinned": "down: links and pins gone, the state directory still there",
}
ENV = "ACCEL_FAULT"


def point(name: str) -> None:
    """Die here if ACCEL_FAULT=kill:<name>."""
    if name not in POINTS:
        raise KeyError(f"no failpoint {name}")
    if os.environ.get(ENV) == f"kill:{name}":
        os.kill(os.getpid(), signal.SIGKILL)
