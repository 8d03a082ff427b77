"""`accel demo`: the main job, end to end, on this machine.

Renders the stock istio-init capture with both renderers, loads each into a scratch network
namespace, prints the rule set read back from the kernel, and removes it. Then builds a lab of
pods and compares, on real traffic, what each backend captures with what iptables captures.
"""

from __future__ import annotations

import shlex

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from . import inputs
from .compare import compare
from .compare.report import print_table
from .netns import ScratchNetns, run
from .render import render_iptables, render_nftables


def run_demo(console: Console | None = None) -> None:
    console = console or Console()

    def verbatim(text: str):  # rule text is never cropped or re-wrapped
        console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)

    argv = list(inputs.ISTIO_INIT_DEFAULT_ARGS)
    spec = inputs.from_istio_args(argv, env={})
    console.rule("[bold]1. The capture: the stock istio-init sidecar")
    verbatim("istio-iptables " + " ".join(shlex.quote(arg) for arg in argv))
    console.print(f"Proxy uid/gid {spec.proxy_uids[0]} is exempt; outbound TCP goes to :{spec.proxy_port}; "
                  f"inbound TCP to :{spec.inbound_capture_port} except ports "
                  f"{', '.join(map(str, spec.inbound_ports_exclude))} and the tunnel port {spec.inbound_tunnel_port}.")

    rules = render_iptables(spec)
    console.rule("[bold]2. iptables: Istio's exact iptables-restore input")
    verbatim(rules.text)
    with ScratchNetns("accel-demo") as ns:
        ns.run(["iptables-nft-restore", "--noflush"], input=rules.ipv4)
        console.rule(f"read back from the kernel: iptables-save -t nat, in netns {ns.name}", style="dim")
        verbatim(_without_comments(ns.run(["iptables-nft-save", "-t", "nat"]).stdout))
    version = run(["iptables-nft", "--version"]).stdout.strip()
    console.print(f"[dim]{version}: istio-iptables picks this variant unless legacy tables already hold rules. "
                  f"Namespace removed: {not ns.exists()}.[/dim]")

    nft = render_nftables(spec)
    console.rule("[bold]3. nftables: Istio's native nftables transaction (accel's fallback)")
    verbatim(nft)
    with ScratchNetns("accel-demo") as ns:
        ns.run(["nft", "-f", "-"], input=nft)
        console.rule(f"read back from the kernel: nft list ruleset, in netns {ns.name}", style="dim")
        verbatim(ns.run(["nft", "list", "ruleset"]).stdout)
    console.print(f"[dim]Applied as one atomic transaction; family inet covers IPv4 and IPv6. "
                  f"Namespace removed: {not ns.exists()}.[/dim]")

    backends = ["iptables", "nftables", "ebpf", "none"]
    console.rule("[bold]4. The proof: real traffic through each backend, in a lab of pods")
    console.print("Each backend gets a fresh lab: the pod under test (app servers and a sidecar), a remote "
                  "pod answering service addresses, and a DNS pod. Every case is sent as real traffic; "
                  "what the sidecar and servers saw decides the outcome.")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("running cases", total=None)
        result = compare(spec, backends, progress=lambda: progress.advance(task))
    print_table(result, console)


def _without_comments(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
