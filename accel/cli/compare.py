"""`accel compare`: real traffic through each backend in a lab, compared with the iptables reference."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from ..backends import BACKEND_NAMES
from .common import (
    EXIT_FAILED,
    NameList,
    fail,
    needs_root,
    print_json,
    progress,
    refuse_unsupported,
    spec_options,
    warn,
)

EPILOG = (
    "\b\nWhat it does, per backend, in a fresh lab (network-namespace pods on this node):\n"
    "  applies the spec to the pod under test, runs every case as real traffic (outbound,\n"
    "  inbound, owner, loopback, DNS, UDP; IPv6 too when the spec has it), records which\n"
    "  listeners each request reached and what the sidecar and servers saw, removes the\n"
    "  capture, and compares each outcome with the reference (the first iptables backend).\n"
    "  The pod's nameservers are the lab's resolver, as its resolv.conf says.\n"
    "\n\b\nBackends: iptables (variant chosen as istio-iptables does), iptables-nft,\n"
    "  iptables-legacy, nftables, nftables-sets (its CIDR and port lists in sets),\n"
    "  ebpf (socket hooks and sk_lookup: no NAT, no conntrack), ebpf+sockmap (ebpf, its\n"
    "  app <-> sidecar hops short-circuited), none (no capture: the control, expected to\n"
    "  differ).\n"
    "\n\b\nSpec: as for accel render (see accel render --help): istio-iptables arguments\n"
    "  after --, or --istio-config FILE, or --annotations FILE. accel's own options go\n"
    "  before the --.\n"
    "\n\b\nExit status: 0 every backend but none agrees on every case; 1 one differs (or a\n"
    "  backend failed, or not root); 2 bad input, including a spec a chosen backend\n"
    "  refuses (ebpf: -c, -k, --drop-invalid). Needs root.\n"
    "\n\b\nExamples:\n"
    "  accel compare -- -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020\n"
    "  accel compare --backends iptables,nftables,ebpf --ipv6 --json -- -i '*' -b '*' --redirect-dns\n"
    "  accel compare --list-cases -- -i '*' -b '*' --redirect-dns     # what would run (no root)\n"
    "  accel compare --backends ebpf --cases 'dns-*,outbound-service' -- -i '*' -b '*' --redirect-dns\n"
)


@click.command("compare", epilog=EPILOG, context_settings={"ignore_unknown_options": True})
@click.option(
    "--backends",
    type=NameList(BACKEND_NAMES, "backend"),
    default="iptables,nftables,none",
    show_default=True,
    metavar="LIST",
    help="Comma list of backends to run (Backends below). The first iptables one is the reference "
    "(iptables is added first if none is listed).",
)
@spec_options(dns=False)
@click.option(
    "--cases",
    "patterns",
    metavar="PATTERNS",
    help="Run only the cases whose names match one of these comma-separated shell patterns "
    "('dns-*'); each still meets the pod as in a full run [default: every case].",
)
@click.option("--list-cases", is_flag=True, help="Print the spec's cases (name, traffic, description) and exit.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON: spec, cases with each backend's outcome and agreement, mismatches, "
    "conntrack entries (with --list-cases: the cases).",
)
def compare_command(backends, patterns, list_cases, as_json, spec, warnings):
    """Run real traffic through each capture backend and compare it with the iptables reference."""
    from ..compare import lab_spec
    from ..compare.cases import derive, select

    cases = derive(lab_spec(spec))[0]
    if list_cases:
        _list(cases, as_json)
        return
    only = tuple(p.strip() for p in patterns.split(",")) if patterns is not None else ()
    if patterns is not None and (not patterns.strip() or "" in only):
        fail(f"--cases: empty pattern in {patterns!r}")
    try:
        cases = select(cases, only) if only else cases
    except ValueError as error:
        fail(f"--cases: {error}")
    names = list(backends)
    if not any(name.startswith("iptables") for name in names):
        names.insert(0, "iptables")
    refuse_unsupported(spec, names)
    _compare(spec, warnings, names, as_json, only, len(cases))


def _list(cases, as_json: bool) -> None:
    rows = [
        {
            "name": c.name,
            "from": c.client,
            "proto": c.proto,
            "dst": c.dst,
            "port": c.port,
            "uid": c.uid,
            "description": c.description,
        }
        for c in cases
    ]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        destination = f"[{row['dst']}]:{row['port']}" if ":" in row["dst"] else f"{row['dst']}:{row['port']}"
        click.echo(f"{row['name']:<48} {row['from']:<11} {row['proto']:<25} {destination:<28} {row['description']}")


@needs_root("it builds network namespaces and loads rules")
def _compare(spec, warnings, names: list[str], as_json: bool, only: tuple[str, ...], count: int):
    from ..backends import BackendError
    from ..compare import compare
    from ..compare.report import print_table

    warn(warnings)
    with progress(f"comparing {', '.join(names)}", count * len(names)) as step:
        try:
            result = compare(spec, names, progress=step, only=only)
        except BackendError as error:
            fail(str(error), EXIT_FAILED)
    if as_json:
        print_json(result.to_json())
    else:
        print_table(result, Console())
    sys.exit(0 if result.ok else EXIT_FAILED)
