"""What a soak is made of: its configuration, the addresses, ports and ids it uses, the maps and
counters it watches with their bounds, and the records its workers keep (soak.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Required, TypedDict

from .. import inputs

APP = 1000  # the app's uid and gid: not the proxy's
SERVICE, SERVICE_PORT = "203.0.113.10", 8080  # answered by the remote pod
STREAM_PORT = 9000
POD_ID = "soak-pod"
FOLLOW_TIMEOUT = 30.0  # s: accel follow reads the state each second; this bounds a stalled machine
SPEC_ARGS = [*inputs.ISTIO_INIT_DEFAULT_ARGS, "--redirect-dns"]
# Maps with one set of entries a pod (or a pod's configuration): back where they were after each
# churn pod's removal. The others hold one entry a connection in flight.
POD_MAPS = ("pods", "ports", "groups", "prefixes", "sources", "counters", "shortcut_counters", "listeners")
CONNECTION_MAPS = ("handoffs", "lost", "shortcuts")
HANDOFF_BOUND = 256  # in-flight handshakes: a few per concurrent client, never the run's total
MEMORY_SLACK = 4 << 20  # an agent's RSS may end this much above its first-half peak and be flat
ERROR_COUNTERS = ("refused", "no_memory", "handoff_failed", "lost", "foreign_listener")
STREAM_BYTES = 1 << 20
CHURN_PODS = 6  # lab pods with a sidecar, added and removed in turn


@dataclass
class SoakConfig:
    duration: float = 60.0
    sockmap: bool = False  # the stable pod's app <-> sidecar hops short-circuited
    churn_pause: float = 0.3  # how long a churn pod stays captured
    concurrency: int = 4  # clients at once per traffic class


class ChurnPod(TypedDict, total=False):
    """One churn pod's record: how long its add and its del took, what went wrong if anything."""

    number: Required[int]
    add_ms: float
    del_ms: float
    problem: str


@dataclass
class Samples:
    """What the sampler saw, about once a second (a second between samples, plus the scrape)."""

    rss: dict[str, list[int]] = field(default_factory=lambda: {"follow": [], "metrics": []})
    map_max: dict[str, int] = field(default_factory=dict)
    scrapes: int = 0
    scrape_failures: int = 0
