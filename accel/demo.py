"""`accel demo`: the main job, end to end, on this machine.

Renders the stock istio-init capture with both rule renderers, loads each into a scratch network
namespace, prints the rule set read back from the kernel, and removes it; shows what the eBPF
backend loads for the same pod and reads it back with bpftool. Then builds a lab of pods and
compares, on real traffic, what each backend captures with what iptables captures.
"""

from __future__ import annotations

import shlex

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from . import inputs, process
from .bench.run import BenchConfig
from .compare import compare
from .compare.report import print_table
from .netns import Netns
from .render import render_ebpf_text, render_iptables, render_nftables


def run_demo(bench: BenchConfig | None = None, console: Console | None = None) -> None:
    """The demo, ending with `bench` (default: accel bench --quick in every mode)."""
    console = console or Console()
    bench = bench or BenchConfig.quick()

    def verbatim(text: str):  # rule text is never cropped or re-wrapped
        console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)

    argv = list(inputs.ISTIO_INIT_DEFAULT_ARGS)
    spec = inputs.from_istio_args(argv, env={})
    console.rule("[bold]1. The capture: the stock istio-init sidecar")
    verbatim("istio-iptables " + " ".join(shlex.quote(arg) for arg in argv))
    console.print(
        f"Proxy uid/gid {spec.proxy_uids[0]} is exempt; outbound TCP goes to :{spec.proxy_port}; "
        f"inbound TCP to :{spec.inbound_capture_port} except ports "
        f"{', '.join(map(str, spec.inbound_ports_exclude))} and the tunnel port {spec.inbound_tunnel_port}."
    )

    rules = render_iptables(spec)
    console.rule("[bold]2. iptables: Istio's exact iptables-restore input")
    verbatim(rules.text)
    with Netns.scratch("accel-demo") as ns:
        ns.run(["iptables-nft-restore", "--noflush"], input=rules.ipv4, check=True)
        console.rule(f"read back from the kernel: iptables-save -t nat, in netns {ns.name}", style="dim")
        verbatim(_without_comments(ns.run(["iptables-nft-save", "-t", "nat"], check=True).stdout))
    version = process.run(["iptables-nft", "--version"], check=True).stdout.strip()
    console.print(
        f"[dim]{version}: istio-iptables picks this variant unless legacy tables already hold rules. "
        f"Namespace removed: {not ns.exists()}.[/dim]"
    )

    nft = render_nftables(spec)
    console.rule("[bold]3. nftables: Istio's native nftables transaction (accel's fallback)")
    verbatim(nft)
    with Netns.scratch("accel-demo") as ns:
        ns.run(["nft", "-f", "-"], input=nft, check=True)
        console.rule(f"read back from the kernel: nft list ruleset, in netns {ns.name}", style="dim")
        verbatim(ns.run(["nft", "list", "ruleset"], check=True).stdout)
    console.print(
        f"[dim]Applied as one atomic transaction; family inet covers IPv4 and IPv6. "
        f"Namespace removed: {not ns.exists()}.[/dim]"
    )

    _ebpf_section(spec, console, verbatim)

    backends = ["iptables", "nftables", "ebpf", "none"]
    console.rule("[bold]5. The proof: real traffic through each backend, in a lab of pods")
    console.print(
        "Each backend gets a fresh lab: the pod under test (app servers and a sidecar), a remote "
        "pod answering service addresses, and a DNS pod. Every case is sent as real traffic; "
        "what the sidecar and servers saw decides the outcome."
    )
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task("running cases", total=None)
        result = compare(spec, backends, progress=lambda: progress.advance(task))
    print_table(result, console)

    _node_section(spec, console, verbatim)
    _bench_section(console, bench)


def _ebpf_section(spec, console: Console, verbatim) -> None:
    from .backends import get_backend
    from .ebpf.inspect import bpf_objects, sk_lookup_links
    from .lab import Lab, LabPlan
    from .lab.wait import wait_for

    console.rule("[bold]4. eBPF: no rules, programs shared by every pod, and map entries for this one")
    verbatim(render_ebpf_text(spec))
    before = bpf_objects()

    def left() -> int:  # objects that were not there before
        return sum(len(objects - before[kind]) for kind, objects in bpf_objects().items())

    with Lab(LabPlan()) as lab:
        pod, backend = lab.pods["pod"], get_backend("ebpf")
        backend.apply(pod, spec)
        try:
            status = backend.status(pod)
            assert pod.node_cgroup is not None  # a lab's pods hang below its cgroup
            cgroup = pod.node_cgroup.path
            console.rule(f"read back from the kernel: bpftool cgroup show {cgroup}", style="dim")
            verbatim(process.run(["bpftool", "cgroup", "show", str(cgroup)], check=True).stdout)
            console.rule(f"bpftool link show: sk_lookup in netns {pod.netns}", style="dim")
            for link in sk_lookup_links(pod.netns):
                verbatim(f"link {link['id']}: program {link['prog_id']}, sk_lookup, netns_ino {link['netns_ino']}")
        finally:
            backend.remove(pod)
    source = (
        "compiled by bcc, then cached"
        if status["programs_from"] == "compiled"
        else "loaded from the node's cache, without bcc"
    )
    wait_for(lambda: left() == 0)  # the kernel frees maps after an RCU grace period
    console.print(
        f"[dim]Programs {source}: {status['programs_cache']}. After removal, BPF programs, maps and "
        f"links left: {left()}. Lab removed: {not lab.exists()}.[/dim]"
    )


def _node_section(spec, console: Console, verbatim) -> None:
    """accel on a node: each command a process of its own, the datapath pinned so that traffic
    keeps its capture with no accel process running."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from .ebpf.inspect import bpf_objects
    from .lab import Lab, LabPlan, SidecarConfig
    from .lab.wait import wait_for
    from .netns import unique_name

    console.rule("[bold]6. On a node: loaded once, outliving every accel process")
    before = bpf_objects()
    root = Path("/tmp") / unique_name("accel-demo")
    root.mkdir()
    plan = LabPlan(service_addresses=("203.0.113.10",), sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337))
    try:
        with Lab(plan) as lab:
            pod = lab.pods["pod"]
            assert lab.cgroup is not None  # build() made it on entering the lab
            env = {
                **os.environ,
                "ACCEL_CGROUP": str(lab.cgroup.path),
                "ACCEL_BPFFS": str(root / "bpffs"),
                "ACCEL_STATE_DIR": str(root / "state"),
            }

            def accel(*args: str) -> str:
                console.print(f"[bold]$ accel {shlex.join(args)}[/bold]", markup=True, highlight=False)
                result = subprocess.run(
                    [sys.executable, "-m", "accel", *args], env=env, capture_output=True, text=True, timeout=120
                )
                verbatim(result.stdout + result.stderr)
                return result.stdout

            def hop(token: str) -> str:
                lab.client("pod", proto="tcp", dst="203.0.113.10", port=8080, token=token, uid=1000, gid=1000)
                return " -> ".join(e["agent"] for e in lab.events(token)) or "nothing"

            accel("up")
            accel("pod", "add", "--netns", pod.netns, "--id", "pod-a", "--", *inputs.ISTIO_INIT_DEFAULT_ARGS)
            console.print(f"app -> 203.0.113.10:8080, with no accel process running: {hop('node-1')}")
            accel("up")
            accel("status")
            accel("down")
            console.print(f"app -> 203.0.113.10:8080 after accel down: {hop('node-2')}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    wait_for(lambda: bpf_objects() == before)  # maps are freed after an RCU grace period
    left = sum(len(objects - before[kind]) for kind, objects in bpf_objects().items())
    console.print(
        f"[dim]BPF programs, maps and links left after accel down: {left}; pins, state directory and "
        f"bpffs mount removed: {not (root / 'state').exists()}.[/dim]"
    )


def _bench_section(console: Console, config) -> None:
    from .bench.report import print_report, progress_bar
    from .bench.run import run_bench

    console.rule("[bold]7. The cost: accel bench --quick")
    console.print(
        "A client pod and a server pod per mode, each with a HAProxy sidecar (uid 1337), nginx "
        "serving; the same workloads through each mode, rounds interleaved. Quick: "
        f"{config.rounds} rounds of {config.seconds} s, so expect noise of ±10%; "
        "docs/benchmarks.md has a full run."
    )
    with progress_bar(console, config.measurements()) as step:
        document = run_bench(config, step)
    print_report(document, console)


def _without_comments(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
