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

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Required, TypedDict

from .. import inputs
from ..netns import Netns, existing_names, unique_name
from ..node import lifecycle
from ..node.metrics import scrape
from ..node.paths import NodePaths, unmount_bpffs_at
from .agent.stream import pattern
from .lab import Lab
from .plan import POD_ADDRESSES, LabError, LabPlan, SidecarConfig
from .wait import free_port, wait_for

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


class _ChurnPod(TypedDict, total=False):
    """One churn pod's record: how long its add and its del took, what went wrong if anything."""

    number: Required[int]
    add_ms: float
    del_ms: float
    problem: str


@dataclass
class _Samples:
    """What the sampler saw, every couple of seconds."""

    rss: dict[str, list[int]] = field(default_factory=lambda: {"follow": [], "metrics": []})
    map_max: dict[str, int] = field(default_factory=dict)
    scrapes: int = 0
    scrape_failures: int = 0


class Soak:
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
        self.samples = _Samples()
        self.churn: list[_ChurnPod] = []
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
        path = self.lab.workdir / f"soak-{name}.json"
        path.write_text(json.dumps(targets))
        try:
            out = self.lab.agent(
                role,
                "burst",
                "--targets",
                str(path),
                "--concurrency",
                str(self.config.concurrency),
                "--timeout",
                "5",
                "--until",
                str(stop_file),
                uid=APP,
                gid=APP,
                timeout=self.config.duration + 120,
            )
            self.bursts[name] = json.loads(out)
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
            entry: _ChurnPod = {"number": number}
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

    # -- the verdict ------------------------------------------------------------------------

    def _report(
        self,
        lab: Lab,
        elapsed: float,
        baseline_maps: dict,
        baseline_pins: list,
        fds_before: dict,
        fds_after: dict,
        exited: list,
    ) -> dict:
        problems = list(self.problems)
        problems += [f"accel {' '.join(d.args[3:4])} exited ({d.returncode}): {d.stderr.read()[-200:]}" for d in exited]
        events: dict[str | None, list[dict]] = {}  # by token; None: events of no request
        for event in lab.events():
            events.setdefault(event.get("token"), []).append(event)
        traffic = {}
        for name in ("outbound", "inbound", "dns"):
            results = self.bursts.get(name, [])
            failed = [r for r in results if r["result"] != "ok"]
            misrouted = [
                r["token"] for r in results if r["result"] == "ok" and not _routed(name, r, events.get(r["token"], []))
            ]
            traffic[name] = {
                "requests": len(results),
                "failed": len(failed),
                "misrouted": len(misrouted),
                "per_second": round(len(results) / elapsed, 1),
            }
            if failed:
                problems.append(f"{name}: {len(failed)} of {len(results)} failed, e.g. {failed[0]}")
            if misrouted:
                problems.append(
                    f"{name}: {len(misrouted)} reached another destination than their own, e.g. {misrouted[0]}"
                )
            if not results:
                problems.append(f"{name}: no traffic")
        bad_streams = [s for s in self.streams if not _stream_exact(s, events)]
        traffic["streams"] = {
            "streams": len(self.streams),
            "bytes_checked": 2 * STREAM_BYTES * len(self.streams),
            "not_exact": len(bad_streams),
        }
        if bad_streams:
            problems.append(
                f"streams: {len(bad_streams)} not byte-exact, e.g. {bad_streams[0]['header']['token']}: "
                f"{bad_streams[0]['client']}"
            )
        churn_problems = [c for c in self.churn if "problem" in c]
        problems += [f"churn pod {c['number']}: {c['problem']}" for c in churn_problems[:3]]
        add_ms = [c["add_ms"] for c in self.churn if "add_ms" in c]
        del_ms = [c["del_ms"] for c in self.churn if "del_ms" in c]
        churn = {
            "pods": len(self.churn),
            "problems": len(churn_problems),
            "add_ms_p50": _round(statistics.median(add_ms)) if add_ms else None,
            "add_ms_max": _round(max(add_ms)) if add_ms else None,
            "del_ms_p50": _round(statistics.median(del_ms)) if del_ms else None,
            "del_ms_max": _round(max(del_ms)) if del_ms else None,
        }
        if len(self.churn) < 2:
            problems.append(f"churn: only {len(self.churn)} pods added and removed")

        status = self._status()
        final_maps = self._map_entries()
        pod = next((p for p in status["pods"] if p["id"] == POD_ID), None)
        counters = (pod or {}).get("counters") or {}
        errors = {kind: counters.get(kind, 0) for kind in ERROR_COUNTERS}
        maps = {
            "baseline": {m: baseline_maps.get(m) for m in POD_MAPS + CONNECTION_MAPS if m in baseline_maps},
            "max": {m: self.samples.map_max.get(m) for m in CONNECTION_MAPS if m in self.samples.map_max},
            "final": {m: final_maps.get(m) for m in POD_MAPS + CONNECTION_MAPS if m in final_maps},
        }
        changed = {
            m: (baseline_maps.get(m), final_maps.get(m)) for m in POD_MAPS if final_maps.get(m) != baseline_maps.get(m)
        }
        if changed:
            problems.append(f"maps: pod entries not back where they were (before, after): {changed}")
        if self.samples.map_max.get("handoffs", 0) > HANDOFF_BOUND:
            problems.append(
                f"maps: {self.samples.map_max['handoffs']} handoffs in flight at once (bound {HANDOFF_BOUND})"
            )
        if self.samples.map_max.get("lost", 0) or final_maps.get("lost", 0):
            problems.append("maps: a handoff was lost (an original destination could not be recorded)")
        if any(errors.values()):
            problems.append(f"datapath errors counted for {POD_ID}: {errors}")
        if [p["id"] for p in status["pods"]] != [POD_ID]:
            problems.append(f"pods left in the state: {[p['id'] for p in status['pods']]}")
        pins_after = self._pins()
        if pins_after != baseline_pins:
            problems.append(f"pins: {sorted(set(pins_after) ^ set(baseline_pins))} differ from the start")
        if fds_after != fds_before:
            problems.append(f"file descriptors of the agents: {fds_before} at the start, {fds_after} at the end")
        memory = {}
        for name, series in self.samples.rss.items():
            if not series:
                continue
            first_half = max(series[: max(1, len(series) // 2)])
            memory[name] = {"rss_first": series[0], "rss_first_half_max": first_half, "rss_last": series[-1]}
            if series[-1] > first_half + MEMORY_SLACK:
                problems.append(f"memory: accel {name} grew from {first_half >> 10} KiB to {series[-1] >> 10} KiB")
        if self.samples.scrape_failures:
            problems.append(f"metrics: {self.samples.scrape_failures} of {self.samples.scrapes} scrapes failed")
        leftover = sorted(n for n in existing_names() if n.startswith(f"accel-soak-{os.getpid()}-"))
        if leftover:
            problems.append(f"churn namespaces left: {leftover}")
        return {
            "ok": not problems,
            "pid": os.getpid(),
            "seconds": round(elapsed, 1),
            "sockmap": self.config.sockmap,
            "traffic": traffic,
            "churn": churn,
            "maps": maps,
            "datapath_errors": errors,
            "agents": {
                "memory_bytes": memory,
                "fds": {"start": fds_before, "end": fds_after},
                "scrapes": self.samples.scrapes,
            },
            "pins": {"start": len(baseline_pins), "end": len(pins_after)},
            "leftover_namespaces": leftover,
            "problems": problems,
        }


def _routed(name: str, result: dict, events: list[dict]) -> bool:
    """The request reached its own destination, through the sidecar."""
    sidecar = [e for e in events if e.get("role") == "sidecar"]
    if name == "dns":
        return any(e.get("listener") == "dns" for e in sidecar) and any(e.get("agent") == "dns" for e in events)
    reply = result.get("reply") or {}
    if name == "outbound":
        return reply.get("agent") == "remote" and any(
            e.get("so_original_dst") == f"{SERVICE}:{SERVICE_PORT}" for e in sidecar
        )
    return reply.get("agent") == "pod" and any(e.get("listener") == "inbound" for e in sidecar)


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


def _expected(seed: int, size: int) -> dict:
    data = pattern(seed, size)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "end": "eof"}


def _stream_exact(stream: dict, events: dict[str | None, list[dict]]) -> bool:
    header, client = stream["header"], stream["client"]
    server = next((e["received"] for e in events.get(header["token"], []) if "received" in e), None)
    return (
        client.get("sent") == "ok"
        and client.get("received") == _expected(header["seed"] + 1, header["reply"])
        and server == _expected(header["seed"], header["send"])
    )


def _round(value: float) -> float:
    return round(value, 1)


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
