"""accel bench --pods N: a node's scale. Per backend (ebpf, nftables), one lab holds the benchmark's
client and server pods (mesh.py) and N more pods, each with an idle HAProxy sidecar; a node of
the bench's own (its own bpffs and state directory, the lab's cgroup) captures them all through
the node agent's own code (accel.node: up, pod add, pod del), in this process, as `accel pod add`
and accel-cni run it after they start.

Each round: the client pod's new-connection rate (cps16) with only the benchmark's two pods
captured, then every one of the N pods added (each add timed), the rate again with all of them
captured, then all N removed (timed). The rate ratio (N pods / 1 pod) is taken per round, so that
both figures of a ratio come from the same minute of the machine.

Memory: under ebpf, what the kernel charges for accel's maps and programs (bpftool's
bytes_memlock of every pinned map, every linked program and every pod's sk_lookup copy), with
the N pods captured; under nftables, the growth of the kernel's slab while the N pods' rule sets
are added (an estimate: other work on the node moves it too).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from .. import process
from ..lab import Pod
from ..node import lifecycle, pods
from ..node.paths import NodePaths, unmount_bpffs_at
from .mesh import Mesh, MeshError
from .run import stock_spec, workbench
from .verdicts import ratio_interval
from .workloads import Tools, run_workload

SCALE_BACKENDS = ("ebpf", "nftables")
# (backend, figure, bound, at most?): the targets
SCALE_TARGETS = [
    ("ebpf", "pod_add_ms_p50", 50.0, True),
    ("ebpf", "all_pods_s", 5.0, True),
    ("ebpf", "rate_ratio", 0.97, False),
    ("nftables", "rate_ratio", 0.97, False),
]
SETTLE = 1.0  # seconds between adding or removing pods and a rate run: the kernel's deferred work ends


class NodeCapture:
    """The mesh's capture by a node of its own: `apply`/`remove` are accel's pod add and pod del
    (the node comes up on the first apply, at the lab's cgroup), `close` is accel down."""

    def __init__(self, backend: str, root: Path):
        self.name, self.root = backend, root
        self.paths: NodePaths | None = None

    def apply(self, pod: Pod, spec) -> None:
        if self.paths is None:
            assert pod.node_cgroup is not None  # a lab's pods hang below its cgroup
            self.paths = NodePaths(pod.node_cgroup.path, self.root / "bpffs", self.root / "state")
            lifecycle.up(self.paths, self.name)
        pods.add(self.paths, pod.role, pod.netns, spec)

    def remove(self, pod: Pod) -> None:
        if self.paths is not None:
            pods.delete(self.paths, pod.role)

    def close(self) -> None:
        if self.paths is None:
            return
        try:
            lifecycle.down(self.paths)
        finally:
            unmount_bpffs_at(self.paths.bpffs)


def run_scale(
    count: int,
    rounds: int,
    seconds: float,
    backends: tuple[str, ...] = SCALE_BACKENDS,
    progress: Callable[[str, bool], None] | None = None,
) -> dict:
    """Every backend's figures at `count` pods (see the module's doc); the report document."""
    progress = progress or (lambda what, measured: None)
    spec = stock_spec()
    results = {}
    with workbench() as bench:
        for backend in backends:
            progress(f"{backend}: building a lab of {count + 2} pods", False)
            node_root = bench.workdir / f"node-{backend}"
            node_root.mkdir(mode=0o700)
            capture = NodeCapture(backend, node_root)
            with Mesh(backend, spec, bench.tools.bulk_file, bench.pods_cpu, scale_pods=count, capture=capture) as mesh:
                mesh.check_path()
                results[backend] = _measure(mesh, capture, bench.tools, spec, count, rounds, seconds, progress)
    document = {"pods": count, "rounds": rounds, "seconds_per_run": seconds, "scale": results, "pinning": bench.pinning}
    document["verdicts"] = scale_verdicts(document)
    return document


def _measure(
    mesh: Mesh, capture: NodeCapture, tools: Tools, spec, count: int, rounds: int, seconds: float, progress
) -> dict:
    paths = capture.paths
    assert paths is not None  # the mesh applied the capture to its two pods: the node is up
    scale = [mesh.lab.pods[f"scale-{n}"] for n in range(1, count + 1)]
    run_workload(mesh, tools, "ka16", 1)  # warm caches, neighbour entries and the sidecars
    adds, alone, crowded, all_s, remove_s = [], [], [], [], []
    memory: dict | None = None
    maps: dict | None = None
    for index in range(rounds):
        name = f"{capture.name} round {index + 1}/{rounds}"
        progress(f"{name}: rate with the benchmark's pods alone", False)
        alone.append(_rate(mesh, tools, seconds))
        progress("", True)
        progress(f"{name}: adding {count} pods", False)
        slab = _slab_bytes()
        started = time.perf_counter()
        for pod in scale:
            began = time.perf_counter()
            pods.add(paths, pod.role, pod.netns, spec)
            adds.append((time.perf_counter() - began) * 1000)
        all_s.append(time.perf_counter() - started)
        if memory is None:
            memory, maps = _memory(capture, slab)
        progress("", True)
        progress(f"{name}: rate with {count} more pods captured", False)
        crowded.append(_rate(mesh, tools, seconds))
        mesh.check_path()
        progress("", True)
        progress(f"{name}: removing {count} pods", False)
        started = time.perf_counter()
        for pod in scale:
            pods.delete(paths, pod.role)
        remove_s.append(time.perf_counter() - started)
        progress("", True)
    assert memory is not None  # measured in the first round (rounds >= 1)
    ratios = [n / one for n, one in zip(crowded, alone)]
    interval = ratio_interval(ratios)
    return {
        "pod_add_ms_p50": round(statistics.median(adds), 2),
        "pod_add_ms_max": round(max(adds), 2),
        "pod_add_ms_p90": round(statistics.quantiles(adds, n=10)[-1], 2) if len(adds) >= 10 else None,
        "all_pods_s": round(statistics.median(all_s), 3),
        "remove_all_s": round(statistics.median(remove_s), 3),
        "memory_bytes": memory["bytes"],
        "memory_source": memory["source"],
        "memory_parts": memory.get("parts"),
        "maps": maps,
        "rate_1": round(statistics.median(alone), 1),
        "rate_n": round(statistics.median(crowded), 1),
        "rate_ratio": round(statistics.median(crowded) / statistics.median(alone), 4),
        "rate_ratio_ci": None if interval is None else [round(interval[0], 4), round(interval[1], 4)],
        "samples": {
            "pod_add_ms": [round(a, 2) for a in adds],
            "all_pods_s": [round(s, 3) for s in all_s],
            "remove_all_s": [round(s, 3) for s in remove_s],
            "rate_1": alone,
            "rate_n": crowded,
        },
    }


def _rate(mesh: Mesh, tools: Tools, seconds: float) -> float:
    time.sleep(SETTLE)
    run = run_workload(mesh, tools, "cps16", seconds)
    if run["errors"]:
        raise MeshError(f"{mesh.mode}: {run['errors']} failed requests during the rate run")
    return run["figures"]["cps16"]


def _memory(capture: NodeCapture, slab_before: int) -> tuple[dict, dict | None]:
    """(what the capture of every pod costs the kernel, the maps' entries and capacities)."""
    if capture.name != "ebpf":
        return {"bytes": max(0, _slab_bytes() - slab_before), "source": "slab growth while adding (estimate)"}, None
    assert capture.paths is not None  # the pods are added: the node is up
    pins = capture.paths.pins
    map_ids, prog_ids, by_map = set(), set(), {}
    for pin in pins.rglob("*"):
        if pin.is_dir():
            continue
        shown = _bpftool("map", "show", "pinned", str(pin)) or {}
        if "id" in shown and "bytes_memlock" in shown:
            map_ids.add((shown["id"], shown["bytes_memlock"]))
            by_map[pin.name] = shown["bytes_memlock"]
            continue
        link = _bpftool("link", "show", "pinned", str(pin)) or {}
        if "prog_id" in link:
            prog = _bpftool("prog", "show", "id", str(link["prog_id"])) or {}
            prog_ids.add((prog.get("id"), prog.get("bytes_memlock", 0)))
            continue
        prog = _bpftool("prog", "show", "pinned", str(pin)) or {}
        if "id" in prog:
            prog_ids.add((prog["id"], prog.get("bytes_memlock", 0)))
    parts = {
        "maps": sum(b for _, b in map_ids),
        "programs": sum(b for _, b in prog_ids),
        "map_count": len(map_ids),
        "program_count": len(prog_ids),
        "by_map": dict(sorted(by_map.items(), key=lambda item: -item[1])),
    }
    document = lifecycle.status(capture.paths)[0]
    maps = {m["name"]: {"entries": m["entries"], "capacity": m["capacity"]} for m in document.get("maps", [])}
    return {"bytes": parts["maps"] + parts["programs"], "source": "bpftool bytes_memlock", "parts": parts}, maps


def _bpftool(*args: str) -> dict | None:
    result = process.run(["bpftool", "-j", *args])
    if result.returncode != 0 or not result.stdout.strip():
        return None
    shown = json.loads(result.stdout)
    return shown[0] if isinstance(shown, list) and shown else shown if isinstance(shown, dict) else None


def _slab_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1]) * 1024
    return 0


def scale_verdicts(document: dict) -> list[dict]:
    verdicts = []
    for backend, figure, bound, at_most in SCALE_TARGETS:
        figures = document["scale"].get(backend)
        if not figures or figures.get(figure) is None:
            continue
        value = figures[figure]
        if figure == "rate_ratio" and figures.get("rate_ratio_ci"):
            low, high = figures["rate_ratio_ci"]
            verdict = "met" if low >= bound else "missed" if high < bound else "not separated from noise"
        else:
            verdict = "met" if (value <= bound if at_most else value >= bound) else "missed"
        verdicts.append(
            {
                "backend": backend,
                "figure": figure,
                "bound": bound,
                "at_most": at_most,
                "value": value,
                "verdict": verdict,
            }
        )
    return verdicts
