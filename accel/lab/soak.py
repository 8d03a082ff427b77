"""accel soak: mixed traffic through an eBPF-captured pod while other pods come and go.

One lab pod, captured by a node of its own (`accel up`, `accel pod add`, `accel follow` and
`accel metrics` run as the real commands, against the lab's cgroup and the soak's own bpffs and
state directory), carries without pause:

    outbound   new TCP connections from the app to a service address (through the sidecar)
    inbound    new TCP connections from the remote pod to the app (through the sidecar)
    dns        UDP queries from the app to its resolver (through the sidecar's DNS port)
    streams    1 MiB each way, sha256 of both ends checked, outbound and inbound

while churn pods are added and removed, each with a spec of its own: lab pods with an idle
HAProxy sidecar (whose listeners get registered), and one in three a bare namespace that goes
away before its `pod del`. At the end every connection must have
succeeded at its own destination, every removed pod's entries be gone from the maps, the
connection maps be bounded, and the agents' descriptors, pins and memory be where they started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .. import inputs
from ..netns import Netns, unique_name
from ..node import lifecycle
from ..node.metrics import scrape
from ..node.paths import NodePaths, unmount_bpffs_at
from .lab import Lab
from .plan import POD_ADDRESSES, LabError, LabPlan, SidecarConfig
from .soak_config import (
    APP,
    CHURN_PODS,
    FOLLOW_TIMEOUT,
    POD_ID,
    POD_MAPS,
    SERVICE,
    SERVICE_PORT,
    SPEC_ARGS,
    STREAM_BYTES,
    STREAM_PORT,
    ChurnPod,
    Samples,
    SoakConfig,
)
from .soak_verdict import SoakVerdict
from .wait import free_port, wait_for


class Soak(SoakVerdict):
    def __init__(self, config: SoakConfig, progress: Callable[[str], None] = lambda line: None):
        self.config = config
        self.progress = progress
        self.plan = LabPlan(
            service_addresses=(SERVICE,),
            pod_tcp_ports=(SERVICE_PORT,),
            remote_tcp_ports=(SERVICE_PORT,),
            scale_pods=CHURN_PODS,
            sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337),
        )
        self.problems: list[str] = []
        self.samples = Samples()
        self.churn: list[ChurnPod] = []
        self.streams: list[dict] = []
        self.bursts: dict[str, list[dict]] = {}
        self._stop = threading.Event()
        self.paths: NodePaths | None = None

    # -- the node ---------------------------------------------------------------------------

    def _accel(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "accel", *args], capture_output=True, text=True, env=self.env, timeout=120
        )
        if check and result.returncode != 0:
            raise LabError(f"accel {' '.join(args[:2])}: {result.stderr.strip()[-300:]}")
        return result

    def _daemon(self, *args: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "accel", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _status(self) -> dict:
        assert self.paths is not None  # run() sets them before it starts the node
        return lifecycle.status(self.paths)[0]

    def _map_entries(self) -> dict[str, int]:
        return {m["name"]: m["entries"] for m in self._status().get("maps", []) if m["entries"] is not None}

    def _pins(self) -> list[str]:
        assert self.paths is not None  # run() sets them before it starts the node
        return sorted(str(p.relative_to(self.paths.bpffs)) for p in self.paths.bpffs.rglob("*"))

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> dict:
        self.root = Path("/tmp") / unique_name("accel-soak")
        self.root.mkdir(mode=0o700)
        daemons: list[subprocess.Popen] = []
        try:
            with Lab(self.plan) as lab:
                self.lab = lab
                assert lab.cgroup is not None  # a built lab has its cgroup
                self.paths = NodePaths(lab.cgroup.path, self.root / "bpffs", self.root / "state")
                self.env = {
                    **os.environ,
                    "ACCEL_CGROUP": str(self.paths.cgroup),
                    "ACCEL_BPFFS": str(self.paths.bpffs),
                    "ACCEL_STATE_DIR": str(self.paths.state),
                    "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                }
                try:
                    return self._run(lab, daemons)
                finally:
                    for daemon in daemons:
                        daemon.terminate()
                    for daemon in daemons:
                        try:
                            daemon.wait(timeout=5)
                        except subprocess.TimeoutExpired:
                            daemon.kill()
                            daemon.wait()
                    self._accel("down", check=False)
        finally:
            if self.paths:
                unmount_bpffs_at(self.paths.bpffs)
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, lab: Lab, daemons: list[subprocess.Popen]) -> dict:
        config = self.config
        self._accel("up", "--backend", "ebpf")
        self._accel(
            "pod",
            "add",
            "--netns",
            lab.pods["pod"].netns,
            "--id",
            POD_ID,
            "--dns-servers",
            POD_ADDRESSES["dns"][0],
            *(["--sockmap"] if config.sockmap else []),
            "--",
            *SPEC_ARGS,
        )
        lab.start_agent("remote", "stream-server", "--name", "remote-stream", "--port", str(STREAM_PORT))
        lab.start_agent("pod", "stream-server", "--name", "pod-stream", "--port", str(STREAM_PORT))
        port = free_port()
        daemons += [
            self._daemon("follow", stdout=subprocess.PIPE),
            self._daemon("metrics", "--listen", f"127.0.0.1:{port}"),
        ]
        follow, metrics = daemons
        assert follow.stdout is not None and metrics.stderr is not None  # the pipes _daemon() made
        following = LastLine(follow.stdout)
        if not wait_for(lambda: _scrape(port) is not None, timeout=20):
            raise LabError(f"accel metrics did not answer on 127.0.0.1:{port}: {metrics.stderr.read()[-300:]}")
        if not following.wait_for(f"following: {POD_ID}", FOLLOW_TIMEOUT):  # its first pass over the pod
            raise LabError(f"accel follow did not follow {POD_ID}: it said {following.last!r}")
        baseline_maps = self._map_entries()
        baseline_pins = self._pins()
        fds_before = {"follow": _fds(follow.pid), "metrics": _fds(metrics.pid)}

        stop_file = lab.workdir / "soak-stop"
        pod_v4 = POD_ADDRESSES["pod"][0]
        classes = {  # class: (pod the client runs in, its targets)
            "outbound": ("pod", [{"dst": SERVICE, "port": SERVICE_PORT, "token": f"out{i}"} for i in range(16)]),
            "inbound": ("remote", [{"dst": pod_v4, "port": SERVICE_PORT, "token": f"in{i}"} for i in range(16)]),
            "dns": (
                "pod",
                [{"dst": POD_ADDRESSES["dns"][0], "port": 53, "token": f"dns{i}", "proto": "dns"} for i in range(16)],
            ),
        }
        threads = [
            threading.Thread(target=self._burst, args=(name, role, targets, stop_file), daemon=True)
            for name, (role, targets) in classes.items()
        ]
        threads += [
            threading.Thread(target=self._streams, args=(direction,), daemon=True)
            for direction in ("outbound", "inbound")
        ]
        threads += [
            threading.Thread(target=self._churn, args=(baseline_maps,), daemon=True),
            threading.Thread(target=self._sample, args=(port, {"follow": follow, "metrics": metrics}), daemon=True),
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            while (elapsed := time.monotonic() - started) < config.duration:
                self._stop.wait(min(10.0, config.duration - elapsed))
                if self._stop.is_set():
                    break
                self.progress(
                    f"soak: {time.monotonic() - started:.0f}/{config.duration:.0f} s, "
                    f"{len(self.churn)} churn pods, {len(self.streams)} streams"
                )
        finally:
            self._stop.set()
            stop_file.touch()
            for thread in threads:
                thread.join(timeout=60)
        elapsed = time.monotonic() - started
        if not following.wait_for(f"following: {POD_ID}", FOLLOW_TIMEOUT):  # the last churn pod is gone
            self.problems.append(f"accel follow still follows more than {POD_ID}: {following.last!r}")
        return self._report(
            lab,
            elapsed,
            baseline_maps,
            baseline_pins,
            fds_before,
            {"follow": _fds(follow.pid), "metrics": _fds(metrics.pid)},
            [d for d in daemons if d.poll() is not None],
        )

    # -- the workers ------------------------------------------------------------------------

    def _burst(self, name: str, role: str, targets: list[dict], stop_file: Path) -> None:
        try:
            self.bursts[name] = self.lab.burst(
                role,
                targets,
                concurrency=self.config.concurrency,
                request_timeout=5,
                until=stop_file,
                uid=APP,
                gid=APP,
                timeout=self.config.duration + 120,
                name=f"soak-{name}",
            )
        except (LabError, subprocess.TimeoutExpired) as error:
            self.problems.append(f"{name} traffic: {error}")

    def _streams(self, direction: str) -> None:
        role, dst = (
            ("pod", POD_ADDRESSES["remote"][0]) if direction == "outbound" else ("remote", POD_ADDRESSES["pod"][0])
        )
        number = 0
        while not self._stop.is_set():
            number += 1
            header = {
                "token": f"stream-{direction}-{number}",
                "send": STREAM_BYTES,
                "reply": STREAM_BYTES,
                "server_read": "bulk",
                "client_read": "bulk",
                "write": 65536,
                "seed": number * 2,
            }
            try:
                client = json.loads(
                    self.lab.agent(
                        role,
                        "stream-client",
                        "--dst",
                        dst,
                        "--port",
                        str(STREAM_PORT),
                        "--header",
                        json.dumps(header),
                        uid=APP,
                        gid=APP,
                        timeout=60,
                    )
                )
            except (LabError, subprocess.TimeoutExpired, ValueError) as error:
                client = {"error": str(error)[-200:]}
            self.streams.append({"direction": direction, "header": header, "client": client})

    def _churn(self, baseline_maps: dict[str, int]) -> None:
        """Pod after pod added and removed: two in three are lab pods with a sidecar listening (so
        their listeners are registered too), each with a spec of its own; the third a bare
        namespace that goes away while registered."""
        number = 0
        while not self._stop.is_set():
            number += 1
            pod_id = f"churn-{number}"
            entry: ChurnPod = {"number": number}
            extra = ["-o", str(20000 + number % 5000)] if number % 2 else ["-x", f"10.{number % 250}.0.0/16"]
            bare = Netns.scratch("accel-soak").create() if number % 3 == 0 else None
            netns = bare.name if bare else self.lab.pods[f"scale-{number % CHURN_PODS + 1}"].netns
            try:
                began = time.monotonic()
                added = self._accel(
                    "pod",
                    "add",
                    "--netns",
                    netns,
                    "--id",
                    pod_id,
                    "--",
                    *inputs.ISTIO_INIT_DEFAULT_ARGS,
                    *extra,
                    check=False,
                )
                entry["add_ms"] = (time.monotonic() - began) * 1000
                if added.returncode != 0:
                    entry["problem"] = f"pod add: {added.stderr.strip()[-200:]}"
                self._stop.wait(self.config.churn_pause)
                if bare:  # its namespace goes away while it is registered
                    bare.remove()
                began = time.monotonic()
                removed = self._accel("pod", "del", "--id", pod_id, check=False)
                entry["del_ms"] = (time.monotonic() - began) * 1000
                if removed.returncode != 0:
                    entry.setdefault("problem", f"pod del: {removed.stderr.strip()[-200:]}")
                now = self._map_entries()
                left = {
                    m: now.get(m, 0) - baseline_maps.get(m, 0)
                    for m in POD_MAPS
                    if now.get(m, 0) != baseline_maps.get(m, 0)
                }
                if left:
                    entry.setdefault("problem", f"entries left after pod del: {left}")
            finally:
                if bare:
                    bare.remove()
            self.churn.append(entry)

    def _sample(self, port: int, daemons: dict[str, subprocess.Popen]) -> None:
        while not self._stop.wait(1.0):
            samples = self.samples
            for name, daemon in daemons.items():
                rss = _rss(daemon.pid)
                if rss is not None:
                    samples.rss[name].append(rss)
            samples.scrapes += 1
            if _scrape(port) is None:
                samples.scrape_failures += 1
            for name, entries in self._map_entries().items():
                samples.map_max[name] = max(samples.map_max.get(name, 0), entries)


class LastLine:
    """The last line a process printed, read from its pipe by a thread, and a wait for a line
    that is woken by each new one."""

    def __init__(self, pipe: IO[str]) -> None:
        self.last: str | None = None
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            with self._changed:
                self.last = line.rstrip("\n")
                self._changed.notify_all()

    def wait_for(self, line: str, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.last == line, timeout)


def _scrape(port: int) -> str | None:
    try:
        return scrape(port)
    except OSError:
        return None


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
