"""The eBPF datapath's follower (accel/ebpf/follow.py) keeps a pod's local routes and addresses in
the maps as the namespace changes. Here the follower is held where a stalled machine would hold
it, its netlink queue overruns, the namespace changes while it is busy, and its writes fail: each
time it must end with the maps holding the namespace as it is, and the wait for that must end as
soon as they do (woken by the follower, not by a clock)."""

import contextlib
import threading
import time

import pytest

from accel import inputs, process
from accel.backends import get_backend
from accel.ebpf.follow import read_facts
from accel.ebpf.maps import namespace_entries
from accel.lab import Lab, LabPlan, SidecarConfig

pytestmark = pytest.mark.privileged

STOCK = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS), {})
SIDECAR = SidecarConfig(15001, 15006, 15053, 1337, 1337)
OVERRUN = 1000  # addresses added at once: two events each, several times what a netlink socket queues


@pytest.fixture(scope="module")
def lab():
    with Lab(LabPlan(sidecar=SIDECAR, recording_agents=False)) as shared:
        yield shared


@pytest.fixture
def captured(lab):
    """The pod captured by the ebpf backend: (backend, pod, datapath, follower)."""
    backend, pod = get_backend("ebpf"), lab.pods["pod"]
    backend.apply(pod, STOCK)
    try:
        datapath = backend._pods[pod.netns]
        yield backend, pod, datapath, datapath.pods[pod.netns].follower
    finally:
        backend.remove(pod)
        process.run(["ip", "address", "flush", "dev", "lo", "to", "198.18.128.0/17"], netns=pod.netns)


def ip_batch(pod, lines: list[str]) -> None:
    process.run(["ip", "-batch", "-"], input="".join(line + "\n" for line in lines), netns=pod.netns, check=True)


def maps_match_namespace(datapath, pod) -> bool:
    """The pod's entries in the maps are the namespace's facts now, key for key."""
    handle = datapath.pods[pod.netns]
    facts = read_facts(pod.netns)
    want = namespace_entries(handle.cookie, list(facts.local), list(facts.sources))
    held = datapath.namespace_in_maps(handle.cookie)
    return {bytes(key) for key in held.local} == {bytes(key) for key in want.local} and bytes(held.sources) == bytes(
        want.sources
    )


class Gate:
    """The datapath's lock, held by the test: a follower that comes to write blocks on it, as on
    a machine that does not schedule it, and `arrived` tells when one has."""

    def __init__(self):
        self.lock, self.arrived = threading.Lock(), threading.Event()
        self.lock.acquire()

    def __enter__(self):
        self.arrived.set()
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()


@contextlib.contextmanager
def follower_held(datapath):
    """The follower stalls at its next write until the block ends (or the gate opens)."""
    lock, gate = datapath._lock, Gate()
    datapath._lock = gate
    try:
        yield gate
    finally:
        if gate.lock.locked():
            gate.lock.release()
        datapath._lock = lock


def test_a_follower_stalled_longer_than_a_clock_wait_is_waited_for(captured):
    """A change the follower can write only 3 s later (a 2 s wait on the clock failed a CI run):
    the wait ends when the follower has written it, however long that takes."""
    backend, pod, datapath, follower = captured
    with follower_held(datapath) as gate:
        process.run(["ip", "address", "add", "198.18.128.1/32", "dev", "lo"], netns=pod.netns, check=True)
        assert gate.arrived.wait(30)
        threading.Timer(3.0, gate.lock.release).start()
        started = time.monotonic()
        assert not maps_match_namespace(datapath, pod)
        assert backend.wait_synced(pod, 30)
        assert time.monotonic() - started >= 2.9 and maps_match_namespace(datapath, pod)


def test_a_netlink_overrun_is_followed_by_a_full_read(captured):
    """More events than the follower's socket queues while it is stalled: the kernel drops some
    and says so (ENOBUFS); the follower reads everything anew and goes on following."""
    backend, pod, datapath, follower = captured
    resyncs = follower.resyncs
    with follower_held(datapath) as gate:
        process.run(["ip", "address", "add", "198.18.128.1/32", "dev", "lo"], netns=pod.netns, check=True)
        assert gate.arrived.wait(30)  # it read that change and waits to write it: it drains nothing now
        ip_batch(pod, [f"address add 198.18.{129 + n // 250}.{1 + n % 250}/32 dev lo" for n in range(OVERRUN)])
    assert backend.wait_synced(pod, 30), backend.status(pod)["follower"]
    assert follower.resyncs > resyncs, "no overrun happened: the test needs more events"
    assert maps_match_namespace(datapath, pod)
    assert len(datapath.namespace_in_maps(datapath.pods[pod.netns].cookie).local) > OVERRUN
    # and it still follows, by events
    process.run(["ip", "address", "del", "198.18.128.1/32", "dev", "lo"], netns=pod.netns, check=True)
    assert backend.wait_synced(pod, 30) and maps_match_namespace(datapath, pod)
    assert backend.status(pod)["follower"] == {"following": True, "error": None, "resyncs": follower.resyncs}


def test_a_change_while_the_follower_writes_the_one_before(captured):
    """The namespace changes after the follower read it and before its write is done: it has
    subscribed before it read, so the change is queued for it and followed next."""
    backend, pod, datapath, follower = captured
    with follower_held(datapath) as gate:
        process.run(["ip", "address", "add", "198.18.128.1/32", "dev", "lo"], netns=pod.netns, check=True)
        assert gate.arrived.wait(30)  # read, and blocked in writing it
        process.run(["ip", "address", "del", "198.18.128.1/32", "dev", "lo"], netns=pod.netns, check=True)
        process.run(["ip", "address", "add", "198.18.128.2/32", "dev", "lo"], netns=pod.netns, check=True)
    assert backend.wait_synced(pod, 30) and maps_match_namespace(datapath, pod)
    assert "198.18.128.2/32" in follower.facts.local and "198.18.128.1/32" not in follower.facts.local


def test_a_write_that_fails_is_tried_again_and_said(captured, monkeypatch):
    """A write the maps refuse (here: made to fail) does not end the following: status names the
    error while it lasts, and once writes succeed the follower catches up by itself."""
    backend, pod, datapath, follower = captured
    written = datapath.write_facts

    def refuse(handle, facts):
        raise OSError(28, "no space left in the map")

    monkeypatch.setattr(datapath, "write_facts", refuse)
    process.run(["ip", "address", "add", "198.18.128.1/32", "dev", "lo"], netns=pod.netns, check=True)
    assert follower.wait_until(lambda: follower.resyncs >= 2, 30)  # failed, and failed again on its retry
    status = backend.status(pod)["follower"]
    assert status["following"] and "no space left in the map" in status["error"]
    assert not maps_match_namespace(datapath, pod)
    monkeypatch.setattr(datapath, "write_facts", written)  # the next retry, within 2 s, succeeds
    assert backend.wait_synced(pod, 30) and maps_match_namespace(datapath, pod)
    assert backend.status(pod)["follower"]["error"] is None
