"""accel bench: every mode in a world of its own, the same workloads, rounds interleaved.

Method (see docs/benchmarks.md): the pods' processes (load generator, sidecars, server) share one
CPU and this runner keeps to another, so a figure is close to the CPU cost of one request or
connection on that path; the VM's idle wake-ups would otherwise dominate. Each round runs every
workload in every mode, the mode order rotated from round to round; a figure is the median over
rounds, and each ratio divides it by the explicit-proxy median from the same rounds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import inputs, process
from ..backends import EbpfBackend
from ..netns import unique_name
from ..spec import CaptureSpec
from .mesh import CLIENT, DIRECT_MODES, SERVER, Mesh
from .workloads import CHURN_RATE, CHURN_SECONDS, WORKLOADS, Tools, run_churn, run_workload

MODES = ("none", "explicit", "iptables-nft", "iptables-legacy", "nftables", "nftables-sets", "ebpf", "ebpf+sockmap")
BUDGET_WORKLOAD = "crr1"  # a connection per request, one at a time: what a connection costs
MODE_CHOICES = (*MODES, "iptables")
REFERENCE = "explicit"
SCALING_SIZES = (10, 1000, 10000)
SCALING_RANGE = ipaddress.ip_network("100.64.0.0/10")  # shared address space: never the server
FIGURES = (
    "ka1_rps",
    "ka16_rps",
    "ka1_p50_us",
    "ka1_p99_us",
    "cps16",
    "crr1_p50_us",
    "crr1_p99_us",
    "bulk_mbps",
    "conntrack_entries",
)
LOWER_IS_BETTER = {"ka1_p50_us", "ka1_p99_us", "crr1_p50_us", "crr1_p99_us", "conntrack_entries"}


@dataclass(frozen=True)
class BenchConfig:
    modes: tuple[str, ...] = MODES
    rounds: int = 5
    seconds: int = 5
    scaling_rounds: int = 5
    scaling_sizes: tuple[int, ...] = SCALING_SIZES
    workloads: tuple[str, ...] = WORKLOADS
    churn_seconds: int = CHURN_SECONDS  # 0: no churn workload

    @classmethod
    def quick(cls, modes: tuple[str, ...] = MODES) -> BenchConfig:
        """Every figure but churn's in about three minutes: fewer, shorter rounds."""
        return cls(modes=modes, rounds=3, seconds=1, scaling_rounds=1, churn_seconds=0)

    def __post_init__(self):
        unknown = [m for m in self.modes if m not in MODE_CHOICES]
        if unknown:
            raise ValueError(f"unknown mode {unknown[0]!r} (expected {', '.join(MODE_CHOICES)})")
        if REFERENCE not in self.modes:
            raise ValueError(f"modes must include {REFERENCE} (every ratio divides by it)")
        if self.rounds < 1 or self.seconds < 1 or self.scaling_rounds < 0 or self.churn_seconds < 0:
            raise ValueError("rounds and seconds must be at least 1 (scaling rounds and churn seconds at least 0)")

    @property
    def capture_modes(self) -> tuple[str, ...]:
        return tuple(m for m in self.modes if m not in DIRECT_MODES)

    def measurements(self) -> int:
        main = self.rounds * len(self.workloads) * len(self.modes)
        budget = 2 * sum(mode.startswith("ebpf") for mode in self.modes)  # program time, then sockops by op
        churn = len(self.modes) if self.churn_seconds else 0
        return main + budget + churn + self.scaling_rounds * len(self.scaling_sizes) * (len(self.capture_modes) + 1)


@dataclass
class Samples:
    """Every measured value, by mode and figure, in round order."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, mode: str, figures: dict[str, float], errors: int = 0) -> None:
        for name, value in figures.items():
            self.values.setdefault(mode, {}).setdefault(name, []).append(value)
        self.errors[mode] = self.errors.get(mode, 0) + errors

    def median(self, mode: str, figure: str) -> float | None:
        values = self.values.get(mode, {}).get(figure)
        return statistics.median(values) if values else None


def stock_spec() -> CaptureSpec:
    return inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS), {})


def with_excluded_cidrs(spec_args: list[str], count: int) -> CaptureSpec:
    """The stock spec plus `count` excluded /26s that never match the server. Every other /26,
    so that no two are adjacent: an interval set cannot merge them into a few ranges."""
    cidrs = [str(net) for net in itertools.islice(SCALING_RANGE.subnets(new_prefix=26), 0, 2 * count, 2)]
    return inputs.from_istio_args([*spec_args, "-x", ",".join(cidrs)], {})


def rotated(modes: tuple[str, ...], round_index: int) -> list[str]:
    shift = round_index % len(modes)
    return list(modes[shift:] + modes[:shift])


def environment(config: BenchConfig, cpus: dict) -> dict:
    def version(argv, pattern):
        try:
            result = process.run(argv, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "absent"
        found = re.search(pattern, result.stdout + result.stderr)
        return found.group(0) if found else "unknown"

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "pinning": cpus,
        "rounds": config.rounds,
        "seconds_per_run": config.seconds,
        "scaling_rounds": config.scaling_rounds,
        "tools": {
            "haproxy": version(["haproxy", "-v"], r"HAProxy version \S+"),
            "nginx": version(["nginx", "-v"], r"nginx/\S+"),
            "wrk": version(["wrk", "-v"], r"wrk \S+"),
            "iptables": version(["iptables", "--version"], r"iptables v\S+ \(\S+\)"),
            "nft": version(["nft", "--version"], r"nftables v\S+"),
            "python": platform.python_version(),
        },
    }


def _pinning() -> tuple[set[int] | None, set[int] | None]:
    """(the pods' CPU, the runner's CPU): separate when there are two or more."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return {available[-1]}, {available[0]}


@dataclass(frozen=True)
class Workbench:
    tools: Tools
    workdir: Path
    pods_cpu: set[int] | None  # where the pods' processes run (None: unpinned)
    runner_cpu: set[int] | None

    @property
    def pinning(self) -> dict:
        return {
            "pods": sorted(self.pods_cpu) if self.pods_cpu else "unpinned",
            "runner": sorted(self.runner_cpu) if self.runner_cpu else "unpinned",
        }


@contextlib.contextmanager
def workbench():
    """A work directory with the load generators built, and this process kept to the runner's
    CPU; both undone on the way out (see _pinning)."""
    pods_cpu, runner_cpu = _pinning()
    previous_affinity = os.sched_getaffinity(0)
    workdir = Path("/tmp") / unique_name("accel-bench")
    try:
        tools = Tools.build(workdir)
        if runner_cpu:
            os.sched_setaffinity(0, runner_cpu)
        yield Workbench(tools, workdir, pods_cpu, runner_cpu)
    finally:
        os.sched_setaffinity(0, previous_affinity)
        shutil.rmtree(workdir, ignore_errors=True)


def run_bench(config: BenchConfig, progress: Callable[[str, bool], None] | None = None) -> dict:
    """Build every mode's world, measure, and return the report document (see accel bench --help).
    progress(what, measured) is told what starts, and once more after each measurement."""
    progress = progress or (lambda what, measured: None)
    spec_args = list(inputs.ISTIO_INIT_DEFAULT_ARGS)
    spec = stock_spec()
    samples, scaling, paths, budget, churn = Samples(), Samples(), {}, {}, {}
    install: dict[str, dict[str, float]] = {}  # mode -> N -> seconds
    entries: dict[str, dict[str, int]] = {}  # mode -> N -> kernel entries
    with workbench() as bench, contextlib.ExitStack() as stack:
        tools, pods_cpu = bench.tools, bench.pods_cpu
        meshes = {}
        for mode in config.modes:
            progress(f"building {mode}", False)
            meshes[mode] = stack.enter_context(Mesh(mode, spec, tools.bulk_file, pods_cpu))
            meshes[mode].check_path()
        for mode in config.modes:  # warm caches, neighbour entries and the sidecars
            run_workload(meshes[mode], tools, "ka16", 1)
        sessions_before = {mode: meshes[mode].sidecar_sessions() for mode in config.modes}
        for round_index in range(config.rounds):
            for workload in config.workloads:
                for mode in rotated(config.modes, round_index):
                    progress(f"round {round_index + 1}/{config.rounds}: {workload} {mode}", False)
                    run = run_workload(meshes[mode], tools, workload, config.seconds)
                    progress("", True)
                    samples.add(mode, run["figures"], run["errors"])
                    samples.add(
                        mode, {f"conntrack_{workload}": run["conntrack_entries"], "connections": run["connections"]}
                    )
        for mode in config.modes:  # what the sidecars carried, against what the clients made
            after = meshes[mode].sidecar_sessions()
            paths[mode] = {
                "connections": sum(samples.values[mode]["connections"]),
                "sidecar_sessions": {role: after[role] - sessions_before[mode][role] for role in after},
            }
        for mode in config.modes:
            if mode.startswith("ebpf"):
                progress(f"program time per connection: {BUDGET_WORKLOAD} {mode}", False)
                budget[mode] = measure_budget(meshes[mode], tools, config.seconds)
                progress("", True)
                progress(f"sockops calls by op: {BUDGET_WORKLOAD} {mode}", False)
                budget[mode]["sockops_ops"] = measure_sockops_ops(meshes[mode], tools, config.seconds)
                progress("", True)
        for mode in config.modes if config.churn_seconds else ():
            progress(f"churn: {CHURN_RATE:,} connections/s for {config.churn_seconds} s, {mode}", False)
            churn[mode] = run_churn(meshes[mode], tools, config.churn_seconds)
            progress("", True)
        pod_sysctls = meshes[config.modes[0]].sysctls()
        scaled = (REFERENCE, *config.capture_modes)
        for size in config.scaling_sizes if config.scaling_rounds else ():
            sized = with_excluded_cidrs(spec_args, size)
            for mode in config.capture_modes:
                progress(f"rule scaling: applying {size} excluded CIDRs, {mode}", False)
                started = time.perf_counter()
                meshes[mode].apply(sized)
                install.setdefault(mode, {})[str(size)] = round(time.perf_counter() - started, 3)
                entries.setdefault(mode, {})[str(size)] = meshes[mode].capture_entries()
                meshes[mode].check_path()
            for round_index in range(config.scaling_rounds):
                for mode in rotated(scaled, round_index):
                    progress(f"rule scaling: {size} excluded CIDRs, round {round_index + 1}: {mode}", False)
                    run = run_workload(meshes[mode], tools, "cps16", config.seconds)
                    progress("", True)
                    scaling.add(mode, {str(size): run["figures"]["cps16"]}, run["errors"])
    document = report(
        config,
        samples,
        scaling,
        {"install_seconds": install, "capture_entries": entries},
        paths,
        {**environment(config, bench.pinning), "pod_sysctls": pod_sysctls},
    )
    if budget:
        document["budget"] = {"workload": BUDGET_WORKLOAD, "modes": budget}
    if churn:
        document["churn"] = {"seconds": config.churn_seconds, "rate": CHURN_RATE, "modes": churn}
    from .verdicts import target_verdicts  # verdicts.py imports this module

    document["verdicts"] = target_verdicts(document)
    return document


def measure_budget(mesh: Mesh, tools: Tools, seconds: float) -> dict:
    """eBPF program time per proxied connection: the kernel's run-time statistics of every program
    that runs for the mode's two pods (BPF_ENABLE_STATS, on only for this run), over one crr1 run,
    divided by the connections it made."""
    from ..ebpf import libbpf

    assert isinstance(mesh.backend, EbpfBackend)  # measured in the ebpf modes only
    names: dict[int, str] = {}
    for role in (CLIENT, SERVER):
        names.update(mesh.backend.program_ids(mesh.lab.pods[role]))
    stats = libbpf.enable_stats()
    try:
        before = {prog_id: libbpf.prog_stats(prog_id) for prog_id in names}
        run = run_workload(mesh, tools, BUDGET_WORKLOAD, seconds)
        after = {prog_id: libbpf.prog_stats(prog_id) for prog_id in names}
    finally:
        os.close(stats)
    connections = max(run["connections"], 1)
    programs: dict[str, dict] = {}
    for prog_id, name in names.items():
        time_ns, runs = (a - b for a, b in zip(after[prog_id], before[prog_id]))
        entry = programs.setdefault(name, {"time_ns": 0, "runs": 0})
        entry["time_ns"] += time_ns
        entry["runs"] += runs
    table = {
        name: {
            "runs": round(p["runs"] / connections, 2),
            "ns_per_run": round(p["time_ns"] / p["runs"], 1) if p["runs"] else 0.0,
            "ns": round(p["time_ns"] / connections, 1),
        }
        for name, p in programs.items()
        if p["runs"]
    }
    return {
        "connections": run["connections"],
        "total_ns": round(sum(p["ns"] for p in table.values()), 1),
        "programs": table,
    }


def measure_sockops_ops(mesh: Mesh, tools: Tools, seconds: float) -> dict:
    """The sockops program's calls a proxied connection, op by op, with their time (op_account),
    over a crr1 run of its own: the bracketing programs cost time the budget must not count."""
    from .op_account import OpAccount

    pods = [mesh.lab.pods[role] for role in (CLIENT, SERVER)]
    assert pods[0].node_cgroup is not None  # a lab's pods hang below its cgroup
    with OpAccount() as account:
        with account.linked([pod.cgroup.path for pod in pods], pods[0].node_cgroup.path):
            run = run_workload(mesh, tools, BUDGET_WORKLOAD, seconds)
        return account.read(run["connections"])


def report(config: BenchConfig, samples: Samples, scaling: Samples, applied: dict, paths: dict, env: dict) -> dict:
    modes, ratios = {}, {}
    for mode in config.modes:
        figures: dict[str, object] = {
            name: samples.median(mode, name) for name in FIGURES if name != "conntrack_entries"
        }
        # the figure people ask about: entries left by connection-per-request traffic
        figures["conntrack_entries"] = samples.median(mode, "conntrack_cps16")
        figures["conntrack_by_workload"] = {w: samples.median(mode, f"conntrack_{w}") for w in config.workloads}
        figures["crr1_cps"] = samples.median(mode, "crr1_cps")
        figures["errors"] = samples.errors.get(mode, 0)
        figures["path"] = paths.get(mode)
        modes[mode] = figures
    for mode in config.modes:
        ratios[mode] = {name: _ratio(modes[mode].get(name), modes[REFERENCE].get(name)) for name in FIGURES}
    scaled = {
        mode: {size: scaling.median(mode, size) for size in map(str, config.scaling_sizes)}
        for mode in (REFERENCE, *config.capture_modes)
        if mode in scaling.values
    }
    # Against explicit at the same N, measured in the same rounds: what the rules cost, with the
    # VM's drift over the series divided out.
    scaling_ratios = (
        {
            mode: {size: _ratio(value, scaled[REFERENCE][size]) for size, value in by_size.items()}
            for mode, by_size in scaled.items()
        }
        if REFERENCE in scaled
        else {}
    )
    return {
        "env": env,
        "modes": modes,
        "ratios": ratios,
        "scaling": scaled,
        "scaling_ratios": scaling_ratios,
        "scaling_install_seconds": applied["install_seconds"],
        "scaling_capture_entries": applied["capture_entries"],
        "samples": samples.values,
        "scaling_samples": scaling.values,
    }


def _ratio(value, reference):
    if value is None or not reference:
        return None
    return round(value / reference, 4)
