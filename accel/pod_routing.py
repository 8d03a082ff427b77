"""What istio-iptables sets up in a pod beside its rules (ConfigureRoutes), every backend alike:

- on an IPv6 pod, ::6/128 on lo: the source the proxy binds to deliver inbound traffic to its
  app (IPv4 has all of 127.0.0.0/8 on lo already, IPv6 only ::1), which the rules exempt;
- with inbound capture in TPROXY mode (rule backends only: eBPF needs no policy routing),
  `ip rule add fwmark MARK lookup TABLE` and `ip route add local default dev lo table TABLE`,
  for IPv4 and, on an IPv6 pod, IPv6.

All of it is the capture's and goes with it. Here are the ip commands; backends/routes.py
runs them with a backend's runner, the eBPF datapath with its own.
"""

from __future__ import annotations

from . import constants
from .spec import CaptureSpec

PASSTHROUGH_V6 = f"{constants.INBOUND_PASSTHROUGH_SOURCE[6]}/128"
ALREADY = ("File exists",)  # ::6 on lo already (the runtime, or a capture before, put it there)
GONE = ("Cannot assign requested address", "No such file or directory", "No such process")


def passthrough(ipv6: bool, verb: str) -> list[list[str]]:
    """The IPv6 passthrough source's command, `verb` add or del (none for an IPv4-only pod)."""
    if not ipv6:
        return []
    return [["ip", "-6", "address", verb, PASSTHROUGH_V6, "dev", "lo", *(["nodad"] if verb == "add" else [])]]


def tproxy(spec: CaptureSpec, verb: str) -> list[list[str]]:
    if not (spec.tproxy and spec.captures_inbound):
        return []
    mark, table = str(spec.inbound_tproxy_mark), str(spec.inbound_tproxy_route_table)
    commands = []
    for family in ["-4"] + (["-6"] if spec.enable_ipv6 else []):
        commands.append(["ip", family, "rule", verb, "fwmark", mark, "lookup", table])
        commands.append(["ip", family, "route", verb, "local", "default", "dev", "lo", "table", table])
    return commands


def commands(spec: CaptureSpec, verb: str) -> list[list[str]]:
    return passthrough(spec.enable_ipv6, verb) + tproxy(spec, verb)


def undo(argv: list[str]) -> list[str]:
    return [*argv[:3], "del", *[word for word in argv[4:] if word != "nodad"]]
