"""accel follow: keep every captured pod's local routes and addresses in the node's datapath in step
with its namespace, as they change (see accel/ebpf/follow.py for why the datapath needs them).

A long-running process beside `accel up`; traffic does not depend on it: without it, the
datapath decides by each pod's addresses and routes as they were when the pod was added (or when
the follower last ran). On start, and whenever the state names a new pod, it writes that pod's
facts as they are now, then follows them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from ..ebpf.datapath import Datapath
from ..ebpf.follow import Follower, NamespaceFacts
from ..ebpf.maps import namespace_entries
from . import pinned
from . import state as node_state
from .paths import NodePaths
from .state import PodRecord


class NodeFollower:
    def __init__(self, paths: NodePaths, on_change: Callable[[list[str]], None] | None = None):
        self.paths, self.on_change = paths, on_change  # on_change(ids): the pods it follows changed
        self.followers: dict[str, Follower] = {}
        self._datapath: Datapath | None = None
        self._up_at: float | None = None

    def sync_once(self) -> None:
        """Follow the pods the state names now, and stop following those it no longer names."""
        current = node_state.load(self.paths.state)
        wanted: dict[str, PodRecord] = (
            {}
            if current is None or current.backend != "ebpf"
            else {r.id: r for r in current.pods.values() if r.phase == "ready"}
        )
        if current is not None and current.up_at != self._up_at:  # `up` may have made maps anew: reopen
            self.close_datapath()
            self._up_at = current.up_at
        followed = set(self.followers)
        for pod_id in set(self.followers) - set(wanted):
            self.followers.pop(pod_id).stop()
        for pod_id, record in wanted.items():
            if pod_id in self.followers:
                continue
            try:
                follower = Follower(record.netns, functools.partial(self._write, pod_id))
            except OSError:
                continue  # the namespace is gone: accel up cleans the pod
            self._write(pod_id, follower.facts)
            follower.start()
            self.followers[pod_id] = follower
        if self.on_change is not None and set(self.followers) != followed:
            self.on_change(sorted(self.followers))

    def _write(self, pod_id: str, facts: NamespaceFacts) -> None:
        with node_state.locked(self.paths.state):
            current = node_state.load(self.paths.state)
            record = current.pods.get(pod_id) if current else None
            if record is None or record.phase != "ready" or record.cookie is None:
                return  # removed meanwhile: writing now would leave entries nobody removes
            if self._datapath is None:
                self._datapath = pinned.open_for_pods(self.paths)
            old = self._datapath.namespace_in_maps(record.cookie)
            self._datapath.write_namespace(
                old, namespace_entries(record.cookie, list(facts.local), list(facts.sources))
            )

    def close_datapath(self) -> None:
        if self._datapath is not None:
            self._datapath.close()
            self._datapath = None

    def run(self, interval: float = 1.0, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        try:
            while not stop.is_set():
                self.sync_once()
                stop.wait(interval)
        finally:
            for follower in self.followers.values():
                follower.stop()
            self.close_datapath()
