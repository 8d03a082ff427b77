"""TPROXY's policy routing: marked packets are delivered locally, as istio-iptables sets it up.

Only with inbound capture in TPROXY mode: `ip rule add fwmark MARK lookup TABLE` and
`ip route add local default dev lo table TABLE`, for IPv4 and, on an IPv6 pod, IPv6.
"""

from __future__ import annotations

from ..spec import CaptureSpec
from .base import BackendError
from .runner import Runner


def _commands(spec: CaptureSpec, verb: str) -> list[list[str]]:
    if not (spec.tproxy and spec.captures_inbound):
        return []
    mark, table = str(spec.inbound_tproxy_mark), str(spec.inbound_tproxy_route_table)
    commands = []
    for family in ["-4"] + (["-6"] if spec.enable_ipv6 else []):
        commands.append(["ip", family, "rule", verb, "fwmark", mark, "lookup", table])
        commands.append(["ip", family, "route", verb, "local", "default", "dev", "lo", "table", table])
    return commands


def add_routes(runner: Runner, netns: str, spec: CaptureSpec) -> None:
    done = []
    for argv in _commands(spec, "add"):
        result = runner.run(argv, netns=netns)
        if result.returncode != 0:
            for undo in reversed(done):
                runner.run(undo, netns=netns)
            raise BackendError(f"TPROXY routing: {' '.join(argv)}: {result.stderr.strip()}")
        done.append([*argv[:3], "del", *argv[4:]])


def remove_routes(runner: Runner, netns: str, spec: CaptureSpec) -> None:
    for argv in reversed(_commands(spec, "del")):
        runner.run(argv, netns=netns)


def switch_routes(runner: Runner, netns: str, old: CaptureSpec, new: CaptureSpec) -> None:
    """From the routes `old` needs to those `new` needs, touching those both need not at all."""
    before, after = _commands(old, "add"), _commands(new, "add")
    for argv in reversed(before):
        if argv not in after:
            runner.run([*argv[:3], "del", *argv[4:]], netns=netns)
    for argv in after:
        if argv not in before:
            result = runner.run(argv, netns=netns)
            if result.returncode != 0:
                raise BackendError(f"TPROXY routing: {' '.join(argv)}: {result.stderr.strip()}")
