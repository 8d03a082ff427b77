"""The short-circuit (ebpf+sockmap): data between an app and its sidecar goes straight into the
other end's receive queue. Every stream here is byte-exact (sha256 of what each end received
against what the other sent), run under ebpf with and without the short-circuit, and the
short-circuit's own counters prove it carried the bytes (or, for traffic it must not touch, that
it did not)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from accel import inputs
from accel.backends import get_backend
from accel.bench.mesh import CLIENT, SERVER, Mesh
from accel.lab import POD_ADDRESSES, Lab, LabPlan, SidecarConfig
from accel.lab.agent.stream import pattern
from accel.lab.wait import wait_for
from accel.netns import unique_name

pytestmark = pytest.mark.privileged

MODES = ("ebpf", "ebpf+sockmap")
APP = 1000
REMOTE_PORT, APP_PORT, LOCAL_PORT = 9000, 9001, 9002
STOCK = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS))
MiB = 1 << 20


def header(
    token: str, send: int, reply: int, *, read: str = "bulk", write: int = 65536, seed: int = 7, **extra
) -> dict:
    return {
        "token": token,
        "send": send,
        "reply": reply,
        "server_read": read,
        "client_read": read,
        "write": write,
        "seed": seed,
        **extra,
    }


def expected(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "end": "eof"}


class World:
    """A lab whose pod is captured by `mode`, with the lab's sidecar and a stream server in the
    pod (the app, for inbound) and in the remote pod (for outbound)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.lab = Lab(LabPlan(sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337)))
        self.backend = get_backend(mode)

    def __enter__(self) -> World:
        self.lab.__enter__()
        try:
            self.lab.start_agent("remote", "stream-server", "--name", "remote-stream", "--port", str(REMOTE_PORT))
            self.lab.start_agent("pod", "stream-server", "--name", "pod-stream", "--port", str(APP_PORT))
            self.lab.start_agent("pod", "stream-server", "--name", "pod-local", "--port", str(LOCAL_PORT))
            self.backend.apply(self.pod, STOCK)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self.backend.remove(self.pod)
        finally:
            self.lab.__exit__(None, None, None)

    @property
    def pod(self):
        return self.lab.pods["pod"]

    def stream(self, direction: str, spec: dict, parallel: int = 1):
        """A stream from the pod's app to the remote server (outbound), or from the remote pod to
        the pod's app (inbound, delivered by the sidecar from 127.0.0.6); the client's view."""
        role, dst, port = {
            "outbound": ("pod", POD_ADDRESSES["remote"][0], REMOTE_PORT),
            "inbound": ("remote", POD_ADDRESSES["pod"][0], APP_PORT),
            "local": ("pod", "127.0.0.1", LOCAL_PORT),
        }[direction]
        out = self.lab.agent(
            role,
            "stream-client",
            "--dst",
            dst,
            "--port",
            str(port),
            "--header",
            json.dumps(spec),
            "--parallel",
            str(parallel),
            uid=APP,
            gid=APP,
            timeout=180,
        )
        return json.loads(out)

    def server_received(self, token: str) -> dict | None:
        for event in self.lab.events(token):
            if "received" in event:
                return event["received"]
        return None

    def carried(self) -> int:
        """Bytes the short-circuit has carried for the pod so far."""
        return self.backend.status(self.pod)["counters"].get("shortcut_bytes", 0)

    def sockets_in_shortcut(self) -> int:
        return self.backend.status(self.pod).get("shortcut_sockets", 0)


@pytest.fixture(scope="module")
def worlds():
    with World("ebpf") as plain, World("ebpf+sockmap") as short:
        yield {"ebpf": plain, "ebpf+sockmap": short}


CASES = {
    "multi-megabyte": header("mm", 8 * MiB, 8 * MiB, write=MiB),
    "partial-reads": header("pr", MiB, MiB, read="small", write=50000),
    "byte-by-byte": header("bb", 20000, 20000, read="byte", write=333),
    "slow-reader": header("sr", 2 * MiB, MiB, read="slow", write=MiB),
    "half-close-server-first": header("sf", 2 * MiB, 2 * MiB, flow="server_first"),
}


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
@pytest.mark.parametrize("case", list(CASES))
def test_streams_are_byte_exact_with_and_without_the_short_circuit(worlds, case, direction):
    for mode, world in worlds.items():
        spec = {**CASES[case], "token": f"{case}-{direction}-{mode}"}
        before = world.carried()
        client = world.stream(direction, spec)
        assert client["received"] == expected(pattern(spec["seed"] + 1, spec["reply"])), (mode, client)
        assert client["sent"] == "ok", (mode, client)
        assert world.server_received(spec["token"]) == expected(pattern(spec["seed"], spec["send"])), mode
        carried = world.carried() - before
        if mode == "ebpf":
            assert carried == 0
        else:  # both ways through the short-circuited hop: the app's bytes and the reply
            assert carried >= spec["send"] + spec["reply"], (mode, carried)


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_a_reset_delivers_a_prefix_and_ends_the_stream(worlds, direction):
    """What arrives before a reset depends on timing, with or without the short-circuit; what
    must hold is that it is the start of what was sent, and that nothing hangs."""
    for mode, world in worlds.items():
        spec = header(f"rst-{direction}-{mode}", 4 * MiB, 0, end="rst", write=MiB)
        world.stream(direction, spec)
        assert wait_for(lambda: world.server_received(spec["token"]) is not None), mode
        got = world.server_received(spec["token"])
        assert got["end"] in ("eof", "ConnectionResetError"), (mode, got)
        assert got["sha256"] == hashlib.sha256(pattern(spec["seed"], spec["send"])[: got["bytes"]]).hexdigest(), mode


def test_a_blocking_reader_that_half_closed_gets_every_byte_after_retrying(worlds):
    """The kernel's short-circuited receive (tcp_bpf_recvmsg) can wake a *blocking* recv() without
    data, e.g. when the ACK of the reader's own FIN arrives, and then returns EAGAIN, which a
    blocking recv never does otherwise (docs/ebpf.md, Limits). Event-driven readers retry by nature;
    this one retries too, and must get every byte; without the short-circuit it never sees EAGAIN."""
    for mode, world in worlds.items():
        spec = header(f"blocking-{mode}", 2 * MiB, 2 * MiB, flow="server_first", io="blocking")
        client = world.stream("inbound", spec)
        server = world.server_received(spec["token"])
        assert {k: v for k, v in client["received"].items() if k != "eagain"} == expected(
            pattern(spec["seed"] + 1, spec["reply"])
        ), mode
        assert {k: v for k, v in server.items() if k != "eagain"} == expected(pattern(spec["seed"], spec["send"]))
        if mode == "ebpf":
            assert "eagain" not in server and "eagain" not in client["received"]


def test_five_hundred_concurrent_connections(worlds):
    for mode, world in worlds.items():
        spec = header(f"c500-{mode}", 64 * 1024, 64 * 1024)
        before = world.carried()
        results = world.stream("outbound", spec, parallel=500)
        assert len(results) == 500
        for index, result in enumerate(results):
            seed = spec["seed"] + 2 * index
            assert result["received"] == expected(pattern(seed + 1, spec["reply"])), (mode, index, result)
            assert world.server_received(result["token"]) == expected(pattern(seed, spec["send"])), (mode, index)
        if mode == "ebpf+sockmap":
            # a connection whose app writes before its proxy's side has joined goes by TCP, all of it
            # (its order must not mix): under 500 at once a few do; most must be short-circuited
            assert world.carried() - before >= 0.9 * 500 * 2 * 64 * 1024


def test_other_loopback_traffic_is_untouched(worlds):
    """An app talking to another process of its pod over 127.0.0.1 (never captured) stays out of
    the short-circuit, while a captured connection of the same pod is in it."""
    world = worlds["ebpf+sockmap"]
    resume = world.lab.workdir / "resume-local"
    spec = header("local", MiB, MiB, flow="pause", resume=str(resume))
    before = world.carried()
    done = {}
    thread = threading.Thread(target=lambda: done.update(result=world.stream("local", spec)))
    thread.start()
    try:
        assert wait_for(lambda: any(e.get("started") for e in world.lab.events("local")), timeout=30)
        assert world.sockets_in_shortcut() == 0
    finally:
        resume.touch()
        thread.join(60)
    assert done["result"]["received"] == expected(pattern(spec["seed"] + 1, spec["reply"]))
    assert world.carried() == before
    # the same pod's captured connection joins it: both ends of the app <-> sidecar hop
    resume = world.lab.workdir / "resume-captured"
    spec = header("captured", MiB, MiB, flow="pause", resume=str(resume))
    thread = threading.Thread(target=lambda: done.update(result=world.stream("outbound", spec)))
    thread.start()
    try:
        assert wait_for(lambda: world.sockets_in_shortcut() == 2)
    finally:
        resume.touch()
        thread.join(60)
    assert done["result"]["received"] == expected(pattern(spec["seed"] + 1, spec["reply"]))


def paused(world: World, token: str, direction: str = "outbound"):
    """A stream that stops half-way until its `resume` file exists: (thread, its result, resume)."""
    resume = world.lab.workdir / f"resume-{token}"
    spec = header(token, 2 * MiB, 2 * MiB, flow="pause", resume=str(resume))
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(world.stream(direction, spec)))
    thread.start()
    # open end to end: the server has its header (and the first half follows without a pause)
    assert wait_for(lambda: any(e.get("started") for e in world.lab.events(token)), timeout=30)
    assert thread.is_alive()
    return thread, result, resume, spec


@pytest.mark.parametrize("mode", MODES)
def test_connections_open_before_the_programs_were_attached(mode):
    world = World(mode)
    world.backend = get_backend("none")  # the lab without capture first
    with world:
        thread, result, resume, spec = paused(world, f"before-{mode}")
        capture = get_backend(mode)
        capture.apply(world.pod, STOCK)
        try:
            resume.touch()
            thread.join(60)
            assert result["received"] == expected(pattern(spec["seed"] + 1, spec["reply"]))
            assert world.server_received(spec["token"]) == expected(pattern(spec["seed"], spec["send"]))
            assert world.lab.events(spec["token"])[0]["agent"] == "remote-stream"  # it was never captured
            outbound = capture.status(world.pod)["counters"]["outbound"]
            after = header(f"after-{mode}", MiB, MiB)
            assert world.stream("outbound", after)["received"] == expected(pattern(after["seed"] + 1, MiB))
            assert capture.status(world.pod)["counters"]["outbound"] == outbound + 1  # a new one is captured
        finally:
            capture.remove(world.pod)


@pytest.mark.parametrize("mode", MODES)
def test_the_sidecar_restarting(mode):
    with World(mode) as world:
        thread, result, resume, spec = paused(world, f"restart-{mode}")
        world.lab.restart_sidecar("pod")
        resume.touch()
        thread.join(60)
        assert not thread.is_alive()
        received = result.get("received", {})
        assert received.get("end") != "eof" or received.get("bytes", 0) < spec["reply"], result  # it was cut
        got = world.server_received(spec["token"])
        if got is not None:  # what reached the server is the start of what was sent
            assert got["sha256"] == hashlib.sha256(pattern(spec["seed"], spec["send"])[: got["bytes"]]).hexdigest()
        fresh = header(f"restarted-{mode}", 2 * MiB, 2 * MiB)
        before = world.carried()
        assert world.stream("outbound", fresh)["received"] == expected(pattern(fresh["seed"] + 1, fresh["reply"]))
        assert world.server_received(fresh["token"]) == expected(pattern(fresh["seed"], fresh["send"]))
        assert (world.carried() > before) == (mode == "ebpf+sockmap")


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
@pytest.mark.parametrize("mode", MODES)
def test_the_pod_removed_while_connections_are_open(mode, direction):
    with World(mode) as world:
        thread, result, resume, spec = paused(world, f"removed-{mode}-{direction}", direction)
        world.backend.remove(world.pod)
        resume.touch()
        thread.join(60)
        assert result["received"] == expected(pattern(spec["seed"] + 1, spec["reply"]))
        assert world.server_received(spec["token"]) == expected(pattern(spec["seed"], spec["send"]))
        world.backend.apply(world.pod, STOCK)  # for the World's own removal


@pytest.fixture
def public_dir():
    """A directory nginx (user nobody) can read: pytest's tmp_path is private to root."""
    path = Path("/tmp") / unique_name("accel-test")
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("mode", MODES)
def test_haproxy_and_nginx_with_sendfile(mode, public_dir):
    """epoll-driven peers on both short-circuited hops: HAProxy as both sidecars, nginx (sendfile
    on) as the server pod's app; every response byte-exact, 50 connections at once."""
    body = os.urandom(3 * MiB + 12345)
    bulk = public_dir / "bulk.bin"
    bulk.write_bytes(body)
    bulk.chmod(0o644)
    want = hashlib.sha256(body).hexdigest()
    script = """
import hashlib, json, socket, sys, threading
results = []
def fetch():
    s = socket.create_connection(sys.argv[1:3] and (sys.argv[1], int(sys.argv[2])), 30)
    s.sendall(b"GET /bulk HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    data = b"".join(iter(lambda: s.recv(65536), b""))
    head, _, payload = data.partition(b"\\r\\n\\r\\n")
    results.append(hashlib.sha256(payload).hexdigest())
threads = [threading.Thread(target=fetch) for _ in range(50)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps(results))
"""
    with Mesh(mode, STOCK, bulk, None) as mesh:
        mesh.check_path()
        address, port = mesh.target()
        hashes = json.loads(
            mesh.run_client(["/usr/bin/python3", "-I", "-S", "-c", script, address, str(port)], timeout=120)
        )
        assert hashes == [want] * 50
        carried = {
            role: mesh.backend.status(mesh.lab.pods[role])["counters"].get("shortcut_bytes", 0)
            for role in (CLIENT, SERVER)
        }
        if mode == "ebpf":
            assert carried == {CLIENT: 0, SERVER: 0}
        else:  # nginx's sendfile went through the server pod's hop, HAProxy's writes through the client's
            assert carried[SERVER] >= 50 * len(body) and carried[CLIENT] >= 50 * len(body)
