"""The node commands: `accel up`, `pod add|del|list`, `status`, `metrics`, `follow`, `down`: accel
loaded once at node startup, outliving every accel process."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..cancel import until_signalled
from ..node.paths import DEFAULT_BPFFS, DEFAULT_STATE, ENV_BPFFS, ENV_CGROUP, ENV_STATE, NodeError, resolve
from .common import EXIT_FAILED, Group, fail, needs_root, print_json, spec_options, warn

WHERE = (
    "\b\nWhere accel keeps things (an option wins over its environment variable):\n"
    f"  --cgroup   ${ENV_CGROUP}   the cgroup the programs attach at (default: the kubelet's\n"
    "                              kubepods.slice or kubepods on the cgroup v2 mount)\n"
    f"  --bpffs    ${ENV_BPFFS}    a bpffs directory; pins go in its accel/ (default {DEFAULT_BPFFS};\n"
    "                              mounted there if no bpffs is)\n"
    f"  --state    ${ENV_STATE} root-only state directory (default {DEFAULT_STATE})\n"
)


def node_options():
    """--cgroup/--bpffs/--state, resolved into NodePaths handed to the command as `paths`; a
    NodeError (or an error from the kernel) is one line, exit 1."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(cgroup, bpffs, state, **kwargs):
            try:
                paths = resolve(cgroup, bpffs, state)
                return function(paths=paths, **kwargs)
            except NodeError as error:
                fail(str(error), EXIT_FAILED)
            except OSError as error:  # the kernel refused something: say what, in one line
                fail(f"{error.strerror or error}{f': {error.filename}' if error.filename else ''}", EXIT_FAILED)

        for option in reversed(
            [
                click.option("--cgroup", metavar="PATH", help=f"Where the programs attach (${ENV_CGROUP})."),
                click.option("--bpffs", metavar="DIR", help=f"bpffs directory for the pins (${ENV_BPFFS})."),
                click.option("--state", metavar="DIR", help=f"State directory (${ENV_STATE})."),
            ]
        ):
            wrapper = option(wrapper)
        return wrapper

    return decorate


UP_EPILOG = WHERE + (
    "\b\nRun again, it changes nothing and says so (same program and link ids); with a new accel,\n"
    "  it swaps each changed program into its pinned link (no moment without capture) and keeps\n"
    "  every map whose layout is unchanged, with its entries. It also finishes or undoes what a\n"
    "  killed command left, and cleans pods whose network namespace is gone.\n"
    "\b\nExit status: 0 up; 1 it could not (why, in one line); 2 bad input.\n"
    "\b\nExamples:\n"
    "  accel up                                   # on a Kubernetes node\n"
    "  accel up --cgroup /sys/fs/cgroup/pods.slice --backend ebpf\n"
)


@click.command("up", epilog=UP_EPILOG)
@click.option(
    "--backend",
    type=click.Choice(("auto", "ebpf", "nftables", "iptables")),
    default="auto",
    show_default=True,
    help="auto: ebpf when `accel probe` passes, else nftables (it says why).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@node_options()
@needs_root("it loads BPF programs and pins them")
def up(paths, backend, as_json):
    """Load the node's capture datapath once, pinned so that it outlives every accel process."""
    from ..node import lifecycle

    report = lifecycle.up(paths, backend)
    if as_json:
        print_json(report)
        return
    click.echo(f"accel up: {report['backend']} ({report['why']})")
    if report["backend"] == "ebpf":
        if report["action"] == "unchanged":
            click.echo("nothing to change: the pinned programs and maps are this accel's (same ids)")
        elif report["action"] == "upgraded":
            click.echo(
                f"upgraded: swapped {', '.join(report['swapped'])} into their links; kept maps "
                f"{', '.join(report['kept']) or 'none'}; migrated {', '.join(report['migrated']) or 'none'}"
            )
        else:
            click.echo(
                f"loaded and pinned under {paths.pins}: {len(report['programs'])} programs, "
                f"{len(report['links'])} cgroup links at {paths.cgroup}"
            )
    for line in report["reconciled"]:
        click.echo(f"reconciled: {line}")


@click.command("down", epilog=WHERE + "\b\nExit status: 0 removed (or nothing was up); 1 it could not.\n")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
@node_options()
@needs_root("it detaches BPF programs and removes rules")
def down(paths, as_json):
    """Remove everything accel made on this node: every pod's capture, the programs, maps, links
    and pins, the bpffs mount it made, and the state directory.

    This is the uninstall: afterwards the node is as it was before `accel up`."""
    from ..node import lifecycle

    report = lifecycle.down(paths)
    if as_json:
        print_json(report)
    elif not report["was_up"] and not report["pins"]:
        click.echo("nothing to remove: accel was not up here")
    else:
        count = len(report["pods"])
        click.echo(
            f"accel down: removed the capture of {count} pod{'s' * (count != 1)}, "
            f"{len(report['pins'])} pins, {report['state']}"
        )


STATUS_EPILOG = WHERE + (
    "\b\nExit status: 0 healthy; 1 not up, or degraded (pins without links, a pod whose network\n"
    "  namespace is gone or whose change stopped half-way, a map above 90% full), each named.\n"
)


@click.command("status", epilog=STATUS_EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (problems included).")
@node_options()
@needs_root("it reads pinned BPF objects")
def status(paths, as_json):
    """What is loaded and captured on this node: backend, programs and links, map fill, pods and
    their counters."""
    from ..node import lifecycle

    document, problems = lifecycle.status(paths)
    if as_json:
        print_json(document)
    elif document["up"]:
        console = Console()
        console.print(f"accel {document['version']}: {document['backend']} ({document['why']})")
        if "links" in document:
            links = Table(title="programs attached at " + str(document["cgroup"]), title_justify="left")
            for column in ("program", "hook", "link id", "program id", "attached"):
                links.add_column(column)
            for link in document["links"]:
                links.add_row(
                    link["program"],
                    link["hook"],
                    str(link.get("id", "-")),
                    str(link.get("program_id", "-")),
                    "yes" if link["attached"] else "[red]no[/red]",
                )
            console.print(links)
            maps = Table(title="maps", title_justify="left")
            for column in ("map", "entries", "capacity", "fill"):
                maps.add_column(column, justify="right" if column != "map" else "left")
            for item in document["maps"]:
                maps.add_row(
                    item["name"],
                    "-" if item["entries"] is None else f"{item['entries']:,}",
                    "-" if not item["capacity"] else f"{item['capacity']:,}",
                    "-" if item["fill"] is None else f"{item['fill']:.1%}",
                )
            console.print(maps)
        pods = Table(title=f"pods ({len(document['pods'])})", title_justify="left")
        for column in ("id", "netns", "phase", "spec", "outbound", "inbound", "dns", "short-circuited"):
            pods.add_column(column)
        for pod in document["pods"]:
            counters = pod.get("counters") or {}
            carried = f"{counters.get('shortcut_bytes', 0) / 1e6:,.1f} MB" if pod.get("sockmap") else "off"
            pods.add_row(
                pod["id"],
                pod["netns"],
                pod["phase"],
                pod["spec_summary"],
                *(str(counters.get(k, "-")) for k in ("outbound", "inbound", "dns")),
                carried,
            )
        console.print(pods)
    for problem in problems:
        click.echo(f"accel: problem: {problem}", err=True)
    sys.exit(EXIT_FAILED if problems else 0)


@click.group("pod", cls=Group)
def pod():
    """Pods captured on this node: add, del, list (what the CNI plugin does, by command)."""


POD_ADD_EPILOG = (
    "\b\nThe spec is given exactly as for render: istio-iptables arguments after --, or\n"
    "  --istio-config, or --annotations. The pod is captured from the moment this returns,\n"
    "  including processes and sockets it has already. The same id with the same namespace, spec\n"
    "  and --sockmap changes nothing; with another, the capture is switched in one step.\n"
    "\b\nExit status: 0 captured; 1 it could not (accel not up, the namespace gone, ...); 2 bad input.\n"
    "\b\nExample:\n"
    "  accel pod add --netns /var/run/netns/cni-1234 --id pod-a -- -i '*' -b '*' -d 15020\n"
)


@pod.command("add", epilog=POD_ADD_EPILOG, context_settings={"ignore_unknown_options": True})
@click.option("--netns", required=True, metavar="PATH|NAME", help="The pod's network namespace.")
@click.option("--id", "pod_id", required=True, metavar="ID", help="The pod's id (e.g. a container id).")
@click.option(
    "--sockmap/--no-sockmap",
    default=False,
    show_default=True,
    help="eBPF: short-circuit the pod's app <-> sidecar hops (data straight into the other end's "
    "receive queue; see docs/ebpf.md, The short-circuit).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@spec_options()
@node_options()
@needs_root("it changes the node's datapath")
def pod_add(paths, netns, pod_id, sockmap, as_json, spec, warnings):
    """Capture a pod's traffic with the node's datapath."""
    from ..node import pods

    warn(warnings)
    outcome = pods.add(paths, pod_id, netns, spec, shortcut=sockmap)
    if as_json:
        print_json({"id": pod_id, "netns": netns, "sockmap": sockmap, "outcome": outcome})
    else:
        click.echo(f"pod {pod_id}: {outcome}")


@pod.command("del", epilog="\b\nExit status: 0 removed, or nothing to remove; 1 it could not.\n")
@click.option("--id", "pod_id", required=True, metavar="ID", help="The pod's id.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@node_options()
@needs_root("it changes the node's datapath")
def pod_del(paths, pod_id, as_json):
    """Stop capturing a pod; succeeds when it is gone already (idempotent)."""
    from ..node import pods

    outcome = pods.delete(paths, pod_id)
    if as_json:
        print_json({"id": pod_id, "outcome": outcome})
    else:
        click.echo(f"pod {pod_id}: {outcome}")


@pod.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the pods as JSON.")
@node_options()
def pod_list(paths, as_json):
    """The pods captured on this node (read from the state directory; no lock taken)."""
    from dataclasses import asdict

    from ..node import pods

    records = pods.listing(paths)
    if as_json:
        print_json([asdict(record) for record in records])
        return
    for record in records:
        click.echo(f"{record.id}\t{record.netns}\t{record.backend}\t{record.phase}")


@click.command("metrics", epilog=WHERE + "\b\nRuns until stopped (SIGTERM or Ctrl-C).\n")
@click.option(
    "--listen",
    default=None,
    metavar="ADDR:PORT",
    help="Where to serve /metrics [default: $ACCEL_METRICS_LISTEN, else 127.0.0.1:9476].",
)
@click.option(
    "--pid-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write this process's PID there while it runs (a DaemonSet's accel-cni shim enters its "
    "container through it; see `accel cni install --enter-pid-file`).",
)
@node_options()
@needs_root("it reads pinned BPF objects")
def metrics(paths, listen, pid_file):
    """Serve the node's state as Prometheus metrics; it only reads: stopping it changes nothing."""
    import os

    from ..node.metrics import DEFAULT_LISTEN, serve

    stop = until_signalled()
    if pid_file is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = pid_file.with_name(f".{pid_file.name}.{os.getpid()}")
        temporary.write_text(f"{os.getpid()}\n")
        os.replace(temporary, pid_file)  # a reader sees the old PID or the new one, never half
    try:
        serve(paths, listen or os.environ.get("ACCEL_METRICS_LISTEN") or DEFAULT_LISTEN, stop)
    finally:
        if pid_file is not None and _read(pid_file) == str(os.getpid()):  # not a successor's
            pid_file.unlink(missing_ok=True)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


@click.command(
    "follow",
    epilog=WHERE + "\b\nRuns until stopped (SIGTERM or Ctrl-C). Prints a line whenever the pods it follows\n"
    "  change: `following: pod-a, pod-b` (or `following: no pod`).\n",
)
@node_options()
@needs_root("it writes the node's maps")
def follow(paths):
    """Keep each captured pod's addresses and local routes in the eBPF datapath in step with its
    namespace (traffic does not depend on it; see docs/ebpf.md, Limits)."""
    from ..node.follow import NodeFollower

    def say(ids: list[str]) -> None:
        click.echo(f"following: {', '.join(ids) if ids else 'no pod'}")
        sys.stdout.flush()

    NodeFollower(paths, on_change=say).run(stop=until_signalled())


COMMANDS = (up, pod, status, metrics, follow, down)
