"""`accel bench`: what capture costs, against an explicit proxy, on real traffic."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console

from ..bench.run import MODE_CHOICES, MODES, BenchConfig
from ..spec import SpecError
from .common import EXIT_FAILED, NameList, OutputFile, fail, json_figures_option, needs_root

EPILOG = (
    "\b\nWhat it measures, in a lab on this node: a client pod (load generator and a HAProxy\n"
    "  sidecar capturing outbound) and a server pod (nginx, one worker, and a HAProxy sidecar\n"
    "  capturing inbound), both as uid 1337, `server s 0.0.0.0:0`. One pair per mode:\n"
    "    none      client to server directly: the ceiling\n"
    "    explicit  the client dials its sidecar itself, fixed servers, no capture: the floor\n"
    "    iptables-nft, iptables-legacy, nftables, nftables-sets, ebpf, ebpf+sockmap: the\n"
    "              stock istio-init spec applied to both pods by accel's own backends (the\n"
    "              backend names of accel compare; iptables: the variant istio-iptables would\n"
    "              pick; ebpf+sockmap: ebpf with the app <-> sidecar hops short-circuited)\n"
    "\b\nWorkloads: keep-alive HTTP at 1 and 16 connections (wrk), a new connection per request\n"
    "  at 16 (wrk, Connection: close) and closed-loop at 1 (connect+request p50/p99), a 16 MiB\n"
    "  response (Mbit/s), conntrack entries left in the client pod; then rule scaling: new\n"
    "  connections/s with 10, 1,000 and 10,000 excluded CIDRs in the spec; then churn: 1,000\n"
    "  short connections/s to 64 services, the app closing first, for 70 s (longer than\n"
    "  TIME_WAIT, over twice the default port range): errors, EADDRNOTAVAIL, connect() p50/p99.\n"
    "  The pods keep the kernel's default sysctls (the report lists them).\n"
    "\b\nMethod: pods pinned to one CPU, this runner to another; rounds interleave the modes,\n"
    "  order rotated; figures are medians, ratios divide by explicit from the same rounds.\n"
    "  Each target's verdict rests on a 95% interval of the per-round ratios: met, missed, or\n"
    "  not separated from noise (with the rounds that would probably separate it). For the\n"
    "  ebpf modes, one more crr1 run with the kernel's BPF run-time statistics on gives the\n"
    "  program time per proxied connection, program by program, and another the sockops\n"
    "  program's calls by op, each timed by two programs of the benchmark's around it.\n"
    "\b\nOutput files are checked before anything runs: their directory must exist and be\n"
    "  writable.\n"
    "\b\nExit status: 0 measured; 1 a run failed (or not root); 2 bad input. Needs root.\n"
    "\b\nExamples:\n"
    "  accel bench --quick                      # every figure in about 3 minutes\n"
    "  accel bench --json run.json --plot run.png\n"
    "  accel bench --modes explicit,iptables-nft,ebpf --rounds 9\n"
    "  accel bench --quick --modes explicit,ebpf,ebpf+sockmap --budget-baseline old.json\n"
    "  accel bench --pods 110 --json scale.json   # a node of 110 pods, ebpf and nftables\n"
)


@click.command("bench", epilog=EPILOG)
@click.option("--quick", is_flag=True, help="3 rounds of 1 s, scaling once, no churn: in about 3 minutes.")
@click.option("--rounds", type=click.IntRange(1, 100), help="Rounds of every workload in every mode [default: 5].")
@click.option("--seconds", type=click.IntRange(1, 600), help="Length of each run [default: 5].")
@click.option(
    "--modes",
    type=NameList(MODE_CHOICES, "mode"),
    metavar="LIST",
    help="Comma list of modes (below), explicit among them [default: every mode but iptables].",
)
@click.option("--scaling/--no-scaling", default=True, show_default=True, help="Run the rule-scaling series.")
@click.option(
    "--churn-seconds",
    type=click.IntRange(0, 600),
    metavar="S",
    help="Length of the churn workload, 0 for none [default: 70; --quick: 0].",
)
@json_figures_option
@click.option(
    "--plot",
    "plot_file",
    type=OutputFile(suffix=".png"),
    metavar="FILE.png",
    help="Draw the ratios and scaling curves to FILE.png.",
)
@click.option(
    "--markdown", "markdown_file", type=OutputFile(), metavar="FILE", help="Write the tables as Markdown to FILE."
)
@click.option(
    "--budget-baseline",
    "baseline_file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="An earlier run's --json: show its program time per connection beside this run's.",
)
@click.option(
    "--pods",
    type=click.IntRange(1, 4000),
    metavar="N",
    help="Instead: node scale with N more pods captured, under ebpf and nftables (--modes "
    "may narrow it to one): pod add times, memory, connection rate with 1 and N pods.",
)
def bench(
    quick, rounds, seconds, modes, scaling, churn_seconds, json_file, plot_file, markdown_file, baseline_file, pods
):
    """Benchmark capture: iptables, nftables and eBPF against an explicit proxy, on real traffic.

    Prints a table of medians with each figure's ratio to the explicit proxy, the rule-scaling
    table, and which of accel's targets this run met. With --pods N, a node's scale instead.
    Needs root.
    """
    if pods is not None:
        from ..bench.scale import SCALE_BACKENDS

        for name, given in (("--plot", plot_file), ("--markdown", markdown_file), ("--budget-baseline", baseline_file)):
            if given:
                raise SpecError(name, given, "not with --pods (the scale run writes a table and --json)")
        chosen = modes or SCALE_BACKENDS
        wrong = [m for m in chosen if m not in SCALE_BACKENDS]
        if wrong:
            raise SpecError(
                "--modes",
                ",".join(chosen),
                f"with --pods, only {' and '.join(SCALE_BACKENDS)} (not {', '.join(wrong)})",
            )
        _scale(pods, rounds or (1 if quick else 5), seconds or (2 if quick else 5), tuple(chosen), json_file)
        return
    chosen = modes or MODES
    try:
        config = BenchConfig.quick(chosen) if quick else BenchConfig(modes=chosen)
        given = (("rounds", rounds), ("seconds", seconds), ("churn_seconds", churn_seconds))
        config = replace(
            config, **{k: v for k, v in given if v is not None}, **({} if scaling else {"scaling_rounds": 0})
        )
    except ValueError as error:
        raise SpecError("--modes", ",".join(chosen), str(error)) from None
    baseline = _baseline(baseline_file) if baseline_file else None
    _bench(config, json_file, plot_file, markdown_file, baseline)


@needs_root("it builds network namespaces, loads rules and BPF")
def _scale(count: int, rounds: int, seconds: float, backends: tuple[str, ...], json_file: str | None):
    from ..backends import BackendError
    from ..bench.mesh import MeshError
    from ..bench.report import progress_bar
    from ..bench.scale import run_scale
    from ..bench.scale_report import print_scale_report
    from ..bench.workloads import ToolError
    from ..lab import LabError
    from ..node.paths import NodeError

    with progress_bar(Console(stderr=True), len(backends) * rounds * 4) as step:
        try:
            document = run_scale(count, rounds, seconds, backends, step)
        except (BackendError, LabError, MeshError, NodeError, ToolError) as error:
            fail(str(error), EXIT_FAILED)
    if json_file == "-":
        click.echo(json.dumps(document, indent=2))
        return
    print_scale_report(document, Console())
    if json_file:
        Path(json_file).write_text(json.dumps(document, indent=2) + "\n")


def _baseline(path: str) -> dict:
    """The program budget of an earlier run's JSON, checked before any work."""
    from ..inputs.files import load_json

    document = load_json(path, "--budget-baseline")
    budget = document.get("budget")
    if not isinstance(budget, dict) or not isinstance(budget.get("modes"), dict) or not budget["modes"]:
        raise SpecError(
            "--budget-baseline",
            path,
            'has no program budget ("budget": {"modes": ...}): '
            "give the --json of an accel bench run that measured an ebpf mode",
        )
    return budget


@needs_root("it builds network namespaces, loads rules and BPF")
def _bench(
    config: BenchConfig,
    json_file: str | None,
    plot_file: str | None,
    markdown_file: str | None,
    baseline: dict | None = None,
):
    from ..backends import BackendError
    from ..bench.markdown import markdown
    from ..bench.mesh import MeshError
    from ..bench.plot import plot
    from ..bench.report import print_report, progress_bar
    from ..bench.run import run_bench
    from ..bench.workloads import ToolError
    from ..lab import LabError

    with progress_bar(Console(stderr=True), config.measurements()) as step:
        try:
            document = run_bench(config, step)
        except (BackendError, LabError, MeshError, ToolError) as error:
            fail(str(error), EXIT_FAILED)
    if baseline is not None:
        document["budget_baseline"] = baseline
    if json_file == "-":
        click.echo(json.dumps(document, indent=2))
    else:
        print_report(document, Console())
    try:
        if json_file and json_file != "-":
            Path(json_file).write_text(json.dumps(document, indent=2) + "\n")
        if plot_file:
            plot(document, Path(plot_file))
        if markdown_file:
            Path(markdown_file).write_text(markdown(document))
    except OSError as error:  # the place went away during the run: keep the figures all the same
        kept = Path(tempfile.mkstemp(prefix="accel-bench-", suffix=".json")[1])
        kept.write_text(json.dumps(document, indent=2) + "\n")
        fail(f"writing {error.filename}: {error.strerror}; the figures are in {kept}", EXIT_FAILED)
