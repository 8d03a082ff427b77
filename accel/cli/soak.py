"""`accel soak`: mixed traffic through an eBPF-captured pod while pods come and go."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import EXIT_FAILED, fail, json_figures_option, needs_root

EPILOG = (
    "\b\nWhat it runs, in a lab on this node, against a node of its own (the lab's cgroup, its own\n"
    "  bpffs and state directory; accel up, pod add/del, follow and metrics as the real commands):\n"
    "    outbound  new TCP connections, app -> a service address, through the sidecar\n"
    "    inbound   new TCP connections, remote pod -> the app, through the sidecar\n"
    "    dns       UDP queries, app -> its resolver, through the sidecar's DNS port\n"
    "    streams   1 MiB each way, sha256 of both ends checked, outbound and inbound\n"
    "  while churn pods (namespaces with specs of their own) are added and removed, one in three\n"
    "  losing its namespace while registered.\n"
    "\b\nPasses when: no request failed or reached another destination than its own; every\n"
    "  stream is byte-exact; after each churn pod's removal the per-pod maps hold what they held\n"
    "  before; in-flight handoffs stay bounded and none is lost; the datapath counted no error;\n"
    "  the agents' file descriptors and the pins end as they started; accel follow's and accel\n"
    "  metrics' memory is flat (the end within 4 MiB of the first half's peak).\n"
    "\b\nExit status: 0 passed; 1 a check failed or a run failed (or not root); 2 bad input.\n"
    "\b\nExamples:\n"
    "  accel soak                        # 60 s\n"
    "  accel soak --duration 3600 --json soak.json\n"
    "  accel soak --sockmap              # the app <-> sidecar hops short-circuited too\n"
)


@click.command("soak", epilog=EPILOG)
@click.option(
    "--duration",
    type=click.FloatRange(5, 7 * 24 * 3600),
    default=60,
    show_default=True,
    metavar="SECONDS",
    help="How long the traffic and the churn run.",
)
@click.option(
    "--sockmap/--no-sockmap",
    default=False,
    show_default=True,
    help="Short-circuit the soaked pod's app <-> sidecar hops (ebpf+sockmap).",
)
@json_figures_option
def soak(duration, sockmap, json_file):
    """Soak the eBPF datapath: traffic of every kind while pods are added and removed.

    Prints the figures (requests by class, streams, churn, map fill, the agents' memory and
    descriptors) and every check that failed. Needs root.
    """
    _soak(duration, sockmap, json_file)


@needs_root("it builds network namespaces and loads BPF")
def _soak(duration: float, sockmap: bool, json_file: str | None):
    from ..lab import LabError
    from ..lab.soak import Soak
    from ..lab.soak_config import SoakConfig

    try:
        report = Soak(
            SoakConfig(duration=duration, sockmap=sockmap), progress=lambda line: click.echo(line, err=True)
        ).run()
    except LabError as error:
        fail(str(error), EXIT_FAILED)
    if json_file == "-":
        click.echo(json.dumps(report, indent=2))
    else:
        _print(report)
        if json_file:
            Path(json_file).write_text(json.dumps(report, indent=2) + "\n")
    if not report["ok"]:
        raise SystemExit(EXIT_FAILED)


def _print(report: dict) -> None:
    echo = click.echo
    echo(f"soak: {report['seconds']} s under ebpf{'+sockmap' if report['sockmap'] else ''}")
    echo(f"  {'traffic':<10} {'requests':>9} {'per s':>7} {'failed':>7} {'misrouted':>10}")
    for name in ("outbound", "inbound", "dns"):
        row = report["traffic"][name]
        echo(f"  {name:<10} {row['requests']:>9,} {row['per_second']:>7} {row['failed']:>7} {row['misrouted']:>10}")
    streams = report["traffic"]["streams"]
    echo(
        f"  streams: {streams['streams']} ({streams['bytes_checked'] >> 20} MiB checked), "
        f"{streams['not_exact']} not byte-exact"
    )
    churn = report["churn"]
    echo(
        f"  churn: {churn['pods']} pods added and removed; pod add {churn['add_ms_p50']} ms median, "
        f"{churn['add_ms_max']} max; pod del {churn['del_ms_p50']} ms median, {churn['del_ms_max']} max"
    )
    maps = report["maps"]
    echo(
        "  maps (entries): "
        + ", ".join(
            f"{m} {maps['baseline'].get(m)} -> {maps['final'].get(m)}" for m in maps["final"] if m in maps["baseline"]
        )
    )
    echo("  in flight, most at once: " + ", ".join(f"{m} {n}" for m, n in maps["max"].items()))
    agents = report["agents"]
    for name, memory in agents["memory_bytes"].items():
        echo(
            f"  accel {name}: RSS {memory['rss_first'] >> 10} KiB first, {memory['rss_last'] >> 10} KiB last; "
            f"fds {agents['fds']['start'][name]} -> {agents['fds']['end'][name]}"
        )
    echo(f"  pins: {report['pins']['start']} -> {report['pins']['end']}; metrics scraped {agents['scrapes']} times")
    if report["problems"]:
        for problem in report["problems"]:
            echo(f"  FAILED: {problem}")
    else:
        echo("  passed: every check")
