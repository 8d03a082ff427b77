"""The `accel` command line."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import inputs
from .inputs import FIELDS
from .render import RENDERERS, render_ebpf, render_ebpf_text, render_iptables, render_nftables
from .inputs import spec_from_inputs
from .spec import SpecError, split_list

EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT):
    click.echo(f"accel: error: {message}", err=True)
    sys.exit(code)


class AccelGroup(click.Group):
    """Turns bad input anywhere below into one line on stderr and exit 2, never a traceback."""

    def invoke(self, ctx):
        # SIGTERM unwinds like Ctrl-C, so labs and scratch namespaces are removed on the way out.
        terminated, owner = [], os.getpid()

        def on_sigterm(number, frame):
            if os.getpid() != owner or terminated:
                return  # a forked child's inherited signal, or a repeat while cleaning up
            terminated.append(number)
            sys.exit(128 + number)

        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            result = super().invoke(ctx)
        except SpecError as error:
            if not terminated:
                fail(str(error))
        except (Exception, SystemExit):
            # The exit raised by the signal can land inside library code and surface as another
            # error, or be swallowed there; the cleanup has run either way.
            if not terminated:
                raise
        if terminated:
            sys.exit(128 + terminated[0])
        return result


@click.group(cls=AccelGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """accel: Istio sidecar traffic capture with iptables, nftables or eBPF, proven equivalent.

    Start with `accel render --help`.
    """


def _wrap(text: str, indent: int) -> str:
    pad = " " * indent
    return textwrap.fill(text, 78, initial_indent=pad, subsequent_indent=pad, break_on_hyphens=False)


def _flag_help() -> str:
    rows = []
    for field in FIELDS:
        if field.attr is None:
            continue
        names = ", ".join(reversed(field.flags)) if field.flags else f"${field.env[0]} (environment only)"
        text = f"{field.help}; default {field.default}."
        if field.flags and field.env:
            text += f" Env: {', '.join(field.env)}."
        rows.append(f"  {names}\n{_wrap(text, 6)}")
    ignored = " ".join(f.flags[0] for f in FIELDS if f.attr is None) + " --log_*"
    return (
        "\b\nistio-iptables flags (after --), read exactly as istio-iptables reads them:\n"
        + "\n".join(rows)
        + "\n\n\b\nAccepted and ignored (they do not change what is captured):\n"
        + _wrap(ignored, 2) + "\n"
    )


RENDER_EPILOG = (
    "\b\nInput, one of:\n"
    "  -- ISTIO_IPTABLES_ARGS   istio-iptables arguments; the environment is read as\n"
    "                           istio-iptables reads it (argv wins over env)\n"
    "  --istio-config FILE      Istio's config as JSON, Go field names\n"
    "                           (e.g. {\"ProxyPort\": \"15001\", \"InboundPortsInclude\": \"*\"});\n"
    "                           absent fields take istio-iptables' defaults\n"
    "  --annotations FILE       pod annotations as istio-cni reads them: JSON with keys\n"
    "                           annotations, proxy_env, proxy_runAsUser, proxy_runAsGroup\n"
    "                           and optionally pod_ips\n\n"
    + _flag_help()
    + "\n\b\nExamples:\n"
    "  # the stock istio-init sidecar capture\n"
    "  accel render --backend iptables -- -p 15001 -z 15006 -u 1337 -m REDIRECT \\\n"
    "      -i '*' -x \"\" -b '*' -d 15090,15021,15020\n"
    "  # the same as an nftables transaction, with the spec, as JSON\n"
    "  accel render --backend nftables --json -- -i '*' -b '*'\n"
    "  # what the eBPF backend would load for the same pod\n"
    "  accel render --backend ebpf -- -i '*' -b '*'\n"
    "  # what istio-cni would program for an annotated pod\n"
    "  accel render --annotations pod.json\n"
)


def spec_options(command):
    """The spec inputs render and compare share: istio-iptables args, a config file or annotations."""
    options = [
        click.option("--istio-config", "istio_config", metavar="FILE", help="Istio config JSON (Go field names)."),
        click.option("--annotations", metavar="FILE", help="Pod annotations JSON, read as istio-cni does."),
        click.option("--ipv6/--no-ipv6", default=None,
                     help="Whether the pod has IPv6 (istio-iptables detects it from the pod's first "
                          "address). Default: no, or what the config/annotations file says."),
        click.option("--dns-servers", metavar="LIST",
                     help="Comma list of the pod's nameservers for --redirect-dns (default: read "
                          "--resolv-conf, as istio-iptables does, only when DNS capture needs them)."),
        click.option("--resolv-conf", default="/etc/resolv.conf", show_default=True, metavar="PATH",
                     help="resolv.conf to read nameservers from."),
        click.argument("istio_args", nargs=-1, type=click.UNPROCESSED),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command(epilog=RENDER_EPILOG, context_settings={"ignore_unknown_options": True})
@click.option("--backend", type=click.Choice(RENDERERS), default="iptables", show_default=True,
              help="iptables: Istio's exact iptables-restore input (IPv4 block, then IPv6). "
                   "nftables: Istio's native nftables transaction (nft -f). ebpf: the programs "
                   "the eBPF backend attaches and the map entries that configure this pod.")
@click.option("--nft-sets", is_flag=True,
              help="With nftables: put CIDR and port lists in named interval sets, one rule each "
                   "(beyond Istio; a new connection's cost no longer grows with the lists).")
@spec_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON: backend, spec, warnings and the rules.")
def render(backend, nft_sets, as_json, **spec_inputs):
    """Print the capture rules for a pod: what the backend would apply, without applying it.

    The iptables rendering is byte-for-byte what istio-iptables feeds iptables-restore; the
    nftables rendering is what istio-iptables --native-nftables applies; the ebpf rendering is
    the dry run of the eBPF backend: its programs and the map entries for this pod.
    """
    if nft_sets and backend != "nftables":
        raise SpecError("--nft-sets", backend, "only applies to --backend nftables")
    spec, warnings = spec_from_inputs(**spec_inputs)
    for note in warnings:
        click.echo(f"accel: warning: {note}", err=True)
    if backend == "iptables":
        rules = render_iptables(spec)
        text, families = rules.text, {"ipv4": rules.ipv4, "ipv6": rules.ipv6}
    elif backend == "ebpf":
        from .ebpf.maps import UnsupportedSpec

        try:
            text, families = render_ebpf_text(spec), {"datapath": render_ebpf(spec)}
        except UnsupportedSpec as error:
            fail(f"the ebpf backend cannot capture this spec exactly: {error}; the nftables backend can")
    else:
        text, families = render_nftables(spec, sets=nft_sets), {}
    if as_json:
        document = {"backend": backend, "spec": inputs.to_istio_config(spec), "warnings": warnings,
                    "text": text, **families}
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(text, nl=False)


COMPARE_EPILOG = (
    "\b\nWhat it does, per backend, in a fresh lab (network-namespace pods on this node):\n"
    "  applies the spec to the pod under test, runs every case as real traffic (outbound,\n"
    "  inbound, owner, loopback, DNS, UDP; IPv6 too when the spec has it), records which\n"
    "  listeners each request reached and what the sidecar and servers saw, removes the\n"
    "  capture, and compares each outcome with the reference (the first iptables backend).\n"
    "\n\b\nBackends: iptables (variant chosen as istio-iptables does), iptables-nft,\n"
    "  iptables-legacy, nftables, nftables-sets (its CIDR and port lists in sets),\n"
    "  ebpf (socket hooks and sk_lookup: no NAT, no conntrack), none (no capture: the\n"
    "  control, expected to differ).\n"
    "\n\b\nExit status: 0 every backend but none agrees on every case; 1 one differs (or a\n"
    "  backend failed); 2 bad input. Needs root.\n"
    "\n\b\nExamples:\n"
    "  accel compare -- -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020\n"
    "  accel compare --backends iptables,nftables,ebpf --ipv6 --json -- -i '*' -b '*' --redirect-dns\n"
)


@main.command("compare", epilog=COMPARE_EPILOG, context_settings={"ignore_unknown_options": True})
@click.option("--backends", default="iptables,nftables,none", show_default=True, metavar="LIST",
              help="Comma list of backends to run; the first iptables one is the reference (iptables is "
                   "added first if none is listed).")
@spec_options
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: spec, cases with each backend's outcome and agreement, mismatches, "
                   "conntrack entries.")
def compare_command(backends, as_json, **spec_inputs):
    """Run real traffic through each capture backend and compare it with the iptables reference."""
    from .backends import BACKEND_NAMES, BackendError
    from .compare import compare, lab_spec
    from .compare.cases import derive
    from .compare.report import print_table

    names = split_list(backends)
    for name in names:
        if name not in BACKEND_NAMES:
            raise SpecError("--backends", name, f"unknown backend (expected {', '.join(BACKEND_NAMES)})")
    if not any(name.startswith("iptables") for name in names):
        names.insert(0, "iptables")
    names = list(dict.fromkeys(names))
    spec, warnings = spec_from_inputs(**spec_inputs)
    if os.geteuid() != 0:
        fail("accel compare needs root (it builds network namespaces and loads rules)", 1)
    err = Console(stderr=True)
    for note in warnings:
        err.print(f"accel: warning: {note}", markup=False, highlight=False)
    total = len(derive(lab_spec(spec))[0]) * len(names)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task(f"comparing {', '.join(names)}", total=total)
        try:
            result = compare(spec, names, progress=lambda: progress.advance(task))
        except BackendError as error:
            fail(str(error), 1)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        print_table(result, Console())
    sys.exit(0 if result.ok else 1)


BENCH_EPILOG = (
    "\b\nWhat it measures, in a lab on this node: a client pod (load generator and a HAProxy\n"
    "  sidecar capturing outbound) and a server pod (nginx, one worker, and a HAProxy sidecar\n"
    "  capturing inbound), both as uid 1337, `server s 0.0.0.0:0`. One pair per mode:\n"
    "    none      client to server directly: the ceiling\n"
    "    explicit  the client dials its sidecar itself, fixed servers, no capture: the floor\n"
    "    iptables-nft, iptables-legacy, nftables, nftables-sets, ebpf: the stock istio-init\n"
    "              spec applied to both pods by accel's own backends\n"
    "\b\nWorkloads: keep-alive HTTP at 1 and 16 connections (wrk), a new connection per request\n"
    "  at 16 (wrk, Connection: close) and closed-loop at 1 (connect+request p50/p99), a 16 MiB\n"
    "  response (Mbit/s), conntrack entries left in the client pod; then rule scaling: new\n"
    "  connections/s with 10, 1,000 and 10,000 excluded CIDRs in the spec.\n"
    "\b\nMethod: pods pinned to one CPU, this runner to another; rounds interleave the modes,\n"
    "  order rotated; figures are medians, ratios divide by explicit from the same rounds.\n"
    "\b\nExamples:\n"
    "  accel bench --quick                      # every figure in about 3 minutes\n"
    "  accel bench --json run.json --plot run.png\n"
    "  accel bench --modes explicit,iptables-nft,ebpf --rounds 9\n"
)


@main.command(epilog=BENCH_EPILOG)
@click.option("--quick", is_flag=True, help="3 rounds of 1 s, scaling once: every figure in about 3 minutes.")
@click.option("--rounds", type=click.IntRange(1, 100), help="Rounds of every workload in every mode [default: 5].")
@click.option("--seconds", type=click.IntRange(1, 600), help="Length of each run [default: 5].")
@click.option("--modes", metavar="LIST",
              help="Comma list of modes [default: none,explicit,iptables-nft,iptables-legacy,nftables,"
                   "nftables-sets,ebpf]; also iptables (the variant istio-iptables would pick).")
@click.option("--scaling/--no-scaling", default=True, show_default=True, help="Run the rule-scaling series.")
@click.option("--json", "json_file", metavar="FILE", help="Write the figures as JSON to FILE (- for stdout).")
@click.option("--plot", "plot_file", metavar="FILE.png", help="Draw the ratios and scaling curves to FILE.png.")
@click.option("--markdown", "markdown_file", metavar="FILE", help="Write the tables as Markdown to FILE.")
def bench(quick, rounds, seconds, modes, scaling, json_file, plot_file, markdown_file):
    """Benchmark capture: iptables, nftables and eBPF against an explicit proxy, on real traffic.

    Prints a table of medians with each figure's ratio to the explicit proxy, the rule-scaling
    table, and which of accel's targets this run met. Needs root.
    """
    from dataclasses import replace

    from .backends import BackendError
    from .bench.report import markdown, plot, print_report, progress_bar
    from .bench.mesh import MeshError
    from .bench.run import MODES, BenchConfig, run_bench
    from .bench.workloads import ToolError
    from .lab import LabError

    chosen = tuple(dict.fromkeys(split_list(modes))) if modes else MODES
    try:
        config = BenchConfig.quick(chosen) if quick else BenchConfig(modes=chosen)
        config = replace(config, **{k: v for k, v in (("rounds", rounds), ("seconds", seconds)) if v is not None},
                         **({} if scaling else {"scaling_rounds": 0}))
    except ValueError as error:
        raise SpecError("--modes", modes or "", str(error)) from None
    if plot_file and not plot_file.endswith(".png"):
        raise SpecError("--plot", plot_file, "must name a .png file")
    if os.geteuid() != 0:
        fail("accel bench needs root (it builds network namespaces, loads rules and BPF)", 1)
    with progress_bar(Console(stderr=True), config.measurements()) as step:
        try:
            document = run_bench(config, step)
        except (BackendError, LabError, MeshError, ToolError) as error:
            fail(str(error), 1)
    if json_file == "-":
        click.echo(json.dumps(document, indent=2))
    else:
        print_report(document, Console())
        if json_file:
            Path(json_file).write_text(json.dumps(document, indent=2) + "\n")
    if plot_file:
        plot(document, Path(plot_file))
    if markdown_file:
        Path(markdown_file).write_text(markdown(document))


@main.command()
def demo():
    """Render the stock istio-init capture, load it into scratch namespaces, show the kernel's view.

    Needs root. Everything it creates lives in namespaces it removes again.
    """
    from .demo import run_demo

    if os.geteuid() != 0:
        fail("accel demo needs root (it creates network namespaces)", 1)
    run_demo()


@main.group()
def lab():
    """The lab of network-namespace pods that compare and bench build (and always remove)."""


@lab.command("cleanup")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def lab_cleanup(as_json):
    """Remove what a crashed run left: its processes, namespaces, cgroups and files.

    Touches only objects named by accel runs (accel-lab-, accel-bench-, accel-scratch-, then the
    PID of the run) whose run is no longer alive: labs of live runs, on this machine or in other
    sessions, are left alone.
    """
    from .lab import cleanup_leftovers

    if os.geteuid() != 0:
        fail("accel lab cleanup needs root", 1)
    removed = cleanup_leftovers()
    if as_json:
        click.echo(json.dumps(removed, indent=2))
        return
    count = sum(len(items) for items in removed.values())
    if not count:
        click.echo("nothing to clean up")
    singular = {"namespaces": "namespace", "cgroups": "cgroup", "directories": "directory"}
    for kind, items in removed.items():
        for item in items:
            click.echo(f"removed {singular[kind]}: {item}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the features as JSON.")
def probe(as_json):
    """Check that this kernel has what the eBPF backend needs, by trying each thing.

    Loads throwaway programs with each hook's attach type, creates each map type, and asks the
    verifier about helpers; attaches nothing. Exit status 1 if something is missing. Needs root.
    """
    from .ebpf.probe import probe as run_probe

    if os.geteuid() != 0:
        fail("accel probe needs root (loading BPF programs)", 1)
    features = run_probe()
    if as_json:
        click.echo(json.dumps({f.name: {"ok": f.ok, "detail": f.detail} for f in features}, indent=2))
    else:
        from rich.table import Table

        table = Table(title="Kernel features for the eBPF backend", title_justify="left")
        for column in ("feature", "present", "detail"):
            table.add_column(column)
        for f in features:
            table.add_row(f.name, "[green]yes[/green]" if f.ok else "[red]no[/red]", f.detail)
        Console().print(table)
    sys.exit(0 if all(f.ok for f in features) else 1)
