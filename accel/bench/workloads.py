"""The benchmark's workloads, each run in a mode's client pod, and the tools they need.

    ka1    keep-alive HTTP, 1 connection (wrk): requests/s, latency p50/p99
    ka16   keep-alive HTTP, 16 connections (wrk): requests/s
    cps16  a new connection per request, 16 at a time (wrk, Connection: close): connections/s
    crr1   a new connection per request, one at a time, timed from socket() to close (crr.c):
           p50/p99 of the whole cycle, which is where capture costs
    bulk   one connection fetching a 16 MiB response over and over (wrk): Mbit/s
    churn  (once a mode, run_churn) short connections at a steady rate to 64 services, the app
           closing first, for longer than TIME_WAIT (churn.c): whether the pod's source ports
           last, and what connect() costs as they fill

After each, the conntrack entries in the client pod's namespace (flushed before it).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import process
from .mesh import Mesh, MeshError

WORKLOADS = ("ka1", "ka16", "cps16", "crr1", "bulk")
BULK_BYTES = 16 << 20
CRR_SOURCE = Path(__file__).with_name("crr.c")
CHURN_SOURCE = Path(__file__).with_name("churn.c")
CHURN_SECONDS = 70  # beyond TIME_WAIT (60 s): the ports the first connections took are not back yet
CHURN_RATE = 1000  # connections a second: 60 s of them is over twice the default port range (28,232)
# wrk prints its own report; this script adds one JSON line with exact counts and percentiles.
WRK_REPORT = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "bytes": %d, "duration_us": %d, "p50_us": %.1f, "p99_us": %.1f, "errors": %d, "non_2xx": %d}\\n',
    summary.requests, summary.bytes, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


class ToolError(RuntimeError):
    pass


@dataclass(frozen=True)
class Tools:
    """What the load generators need, in a directory the app uid can read."""

    directory: Path
    crr: Path
    churn: Path
    wrk_report: Path
    bulk_file: Path

    @classmethod
    def build(cls, directory: Path) -> Tools:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        for tool in ("wrk", "gcc", "nginx", "haproxy", "conntrack"):
            if shutil.which(tool) is None:
                raise ToolError(f"accel bench needs {tool} (scripts/setup installs it)")
        crr, churn = directory / "crr", directory / "churn"
        for binary, source, what in (
            (crr, CRR_SOURCE, "the closed-loop client"),
            (churn, CHURN_SOURCE, "the churn client"),
        ):
            result = process.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(source)], timeout=120)
            if result.returncode != 0:
                raise ToolError(f"building {what} {source.name}: {result.stderr.strip()[-500:]}")
        report = directory / "report.lua"
        report.write_text(WRK_REPORT)
        bulk = directory / "bulk"
        with open(bulk, "wb") as handle:
            handle.truncate(BULK_BYTES)  # zeros; nginx sends it with sendfile from the page cache
        for path in (report, bulk):
            path.chmod(0o644)
        return cls(directory, crr, churn, report, bulk)


def _last_json(output: str, what: str) -> dict:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise MeshError(f"{what} printed no result: {output.strip()[-300:]}")


def _wrk(mesh: Mesh, tools: Tools, seconds: float, connections: int, path: str = "/", close: bool = False) -> dict:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(tools.wrk_report),
        *(["-H", "Connection: close"] if close else []),
        mesh.url(path),
    ]
    result = _last_json(mesh.run_client(argv, timeout=seconds + 60), "wrk")
    result["seconds"] = result["duration_us"] / 1e6
    return result


def run_workload(mesh: Mesh, tools: Tools, name: str, seconds: float) -> dict:
    """One run: its figures, its errors, the connections it completed (at least), and the
    conntrack entries it left in the client pod."""
    mesh.flush_conntrack()
    if name in ("ka1", "ka16"):
        connections = 1 if name == "ka1" else 16
        run = _wrk(mesh, tools, seconds, connections)
        figures = {f"{name}_rps": run["requests"] / run["seconds"]}
        if name == "ka1":
            figures.update(ka1_p50_us=run["p50_us"], ka1_p99_us=run["p99_us"])
    elif name == "cps16":
        run = _wrk(mesh, tools, seconds, 16, close=True)
        figures = {"cps16": run["requests"] / run["seconds"]}
        connections = run["requests"]
    elif name == "crr1":
        address, port = mesh.target()
        run = _last_json(
            mesh.run_client([str(tools.crr), address, str(port), str(seconds)], timeout=seconds + 60), "crr"
        )
        figures = {
            "crr1_p50_us": run["p50_us"],
            "crr1_p99_us": run["p99_us"],
            "crr1_cps": run["connections"] / run["seconds"],
        }
        connections = run["connections"]
    elif name == "bulk":
        run = _wrk(mesh, tools, seconds, 1, path="/bulk")
        figures = {"bulk_mbps": run["bytes"] * 8 / run["seconds"] / 1e6}
        connections = 1
    else:
        raise ValueError(f"unknown workload {name!r} (expected one of {', '.join(WORKLOADS)})")
    return {
        "figures": figures,
        "errors": run["errors"] + run["non_2xx"],
        "connections": connections,
        "conntrack_entries": mesh.conntrack_entries(),
    }


def run_churn(mesh: Mesh, tools: Tools, seconds: float, rate: float = CHURN_RATE) -> dict:
    """The churn workload (churn.c) in the mode's client pod: connections made, failed, failed for
    want of a source port (eaddrnotavail), the rate reached, connect() p50/p99, and the pod's
    sysctls that bound it."""
    addresses, port = mesh.churn_targets()
    run = _last_json(
        mesh.run_client(
            [str(tools.churn), ",".join(addresses), str(port), str(seconds), str(rate)], timeout=seconds + 120
        ),
        "churn",
    )
    return {**run, "offered_rate": rate, "destinations": len(addresses), "sysctls": mesh.sysctls()}
