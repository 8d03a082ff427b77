"""`accel compare`: real traffic through each backend in a lab, compared with the iptables reference."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from ..backends import BACKEND_NAMES
from .common import (EXIT_FAILED, NameList, fail, needs_root, print_json, progress, refuse_unsupported,
                     spec_options, warn)

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
)


@click.command("compare", epilog=EPILOG, context_settings={"ignore_unknown_options": True})
@click.option("--backends", type=NameList(BACKEND_NAMES, "backend"), default="iptables,nftables,none",
              show_default=True, metavar="LIST",
              help="Comma list of backends to run (Backends below). The first iptables one is the reference "
                   "(iptables is added first if none is listed).")
@spec_options(dns=False)
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: spec, cases with each backend's outcome and agreement, mismatches, "
                   "conntrack entries.")
def compare_command(backends, as_json, spec, warnings):
    """Run real traffic through each capture backend and compare it with the iptables reference."""
    names = list(backends)
    if not any(name.startswith("iptables") for name in names):
        names.insert(0, "iptables")
    refuse_unsupported(spec, names)
    _compare(spec, warnings, names, as_json)


@needs_root("it builds network namespaces and loads rules")
def _compare(spec, warnings, names: list[str], as_json: bool):
    from ..backends import BackendError
    from ..compare import compare, lab_spec
    from ..compare.cases import derive
    from ..compare.report import print_table

    warn(warnings)
    total = len(derive(lab_spec(spec))[0]) * len(names)
    with progress(f"comparing {', '.join(names)}", total) as step:
        try:
            result = compare(spec, names, progress=step)
        except BackendError as error:
            fail(str(error), EXIT_FAILED)
    if as_json:
        print_json(result.to_json())
    else:
        print_table(result, Console())
    sys.exit(0 if result.ok else EXIT_FAILED)
