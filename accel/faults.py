"""Failpoints: named places where a test makes accel die as a crash or an OOM kill would
(kill: SIGKILL, no finally, no clean-up), to prove that the next `accel up` repairs whatever was
half done; or where it makes accel receive SIGTERM (term), to prove that it stops there and
removes what it made. Armed only by the environment, ACCEL_FAULT=ACTION:<point>, or
ACTION:<point>@N for the Nth time the point is reached; unarmed, a point is one lookup.

Each point names the step it follows. tests/integration/test_faults.py kills accel at every node
step, tests/integration/test_lab.py terminates it at every lab and compare step."""

from __future__ import annotations

import os
import signal
import threading

POINTS = {  # a node's changes
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
LAB_POINTS = {
    "lab:workdir": "lab: its directory, event log and agent archive made, no cgroup or namespace yet",
    "lab:namespace": "lab: a namespace made (the node's first), others not yet",
    "lab:wired": "lab: a pod's veth on the bridge, its addresses and routes set",
    "lab:network": "lab: every namespace, link and route in place, no process started",
    "lab:agent": "lab: an agent started, not known to be ready",
    "lab:ready": "lab: built, every agent ready",
    "compare:applied": "compare: the backend applied to the pods, no case run",
    "compare:case": "compare: a case's client about to start, in a worker thread, other cases' clients running",
}
ENV = "ACCEL_FAULT"
ACTIONS = {"kill": signal.SIGKILL, "term": signal.SIGTERM}
_reached: dict[str, int] = {}
_lock = threading.Lock()


def point(name: str) -> None:
    """Die here if ACCEL_FAULT=kill:<name>, receive SIGTERM if term:<name> (@N: the Nth time)."""
    if name not in POINTS and name not in LAB_POINTS:
        raise KeyError(f"no failpoint {name}")
    armed = os.environ.get(ENV)
    if not armed:
        return
    action, _, target = armed.partition(":")
    target, _, nth = target.partition("@")
    if target != name or action not in ACTIONS:
        return
    with _lock:
        _reached[name] = _reached.get(name, 0) + 1
        if _reached[name] != int(nth or 1):
            return
    os.kill(os.getpid(), ACTIONS[action])
