"""Run the cases through each backend in a fresh lab, and record what happened.

An outcome is what the traffic showed: the client's result and the address it saw, the
listeners the request passed through in order, what the sidecar got from SO_ORIGINAL_DST (the
raw answer, or the error), the peer the sidecar saw, and what the final server saw. Ephemeral
ports are dropped, everything else is kept, so two backends agree on a case exactly when the
same traffic went the same way and the proxy was told the same.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import cancel, faults, process
from ..backends import get_backend
from ..lab import Lab, LabError, LabPlan, conntrack_entries
from ..spec import CaptureSpec
from .case import Case

# The follower writes a change within a netlink round trip; this only bounds a stalled machine
# (a CI run once failed a 2 s wait here; a lab client there was once alive 10 s past its timeout).
FOLLOW_TIMEOUT = 30.0
SETTLE = 4.0  # seconds a case's traffic may take to reach its last hop after the client is done
# Cases are independent connections, told apart by their tokens: run this many at once (those
# that wait for a timeout no longer add up), in runs that see the same pod (_segments).
CONCURRENT_CASES = 8
# Clients that do not see their reply: one closes at once, the other's socket cannot receive it.
UNANSWERED = ("tcp-send-close", "dns-udp-sendto-connected")


@dataclass
class BackendRun:
    backend: str
    description: str
    outcomes: dict[str, dict] = field(default_factory=dict)
    conntrack_entries: int = 0


def _host(address: str | None) -> str | None:
    """An ip:port or [ip]:port without its (ephemeral) port."""
    if address is None:
        return None
    host = address.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


def observe(client: dict, events: list[dict]) -> dict:
    sidecar = next((e for e in events if e["role"] == "sidecar"), None)
    server = next((e for e in reversed(events) if e["role"] == "server"), None)
    return {
        "result": client.get("result"),
        "path": [f"{e['agent']} {e['listener']}" for e in events],
        # what the proxy was told, exactly: an address, or the error (error:ENOENT)
        "so_original_dst": sidecar.get("so_original_dst") if sidecar else None,
        "proxy_peer": _host(sidecar["peer"]) if sidecar else None,
        "server_local": server["local"] if server else None,
        "server_peer": _host(server["peer"]) if server else None,
        # getpeername() for a connected socket, recvfrom()'s source for sendto
        "app_peer": client.get("peername") or client.get("reply_from"),
        **({"first": client["first"]} if "first" in client else {}),
    }


def _events(lab: Lab, case: Case, token: str) -> list[dict]:
    """The case's events; for a client that did not wait for a reply (it closed at once, or no
    reply can reach it), once its traffic has reached a server or stopped for a while."""
    if case.proto not in UNANSWERED:
        return lab.events(token)
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        events = lab.events(token)
        if any(e["role"] == "server" for e in events):
            return events
        cancel.sleep(0.05)
    return lab.events(token)


def _segments(cases: list[Case]) -> list[list[int]]:
    """The cases' indexes in runs that see the same pod: a case with setup (a change to the pod)
    starts a new run, after every case before it has ended."""
    segments: list[list[int]] = []
    for number, case in enumerate(cases):
        if case.setup or not segments:
            segments.append([])
        segments[-1].append(number)
    return segments


def _set_up(lab: Lab, backend, name: str, case: Case) -> None:
    pod = lab.pods[case.client]
    for argv in case.setup:
        result = process.run(list(argv), netns=pod.netns)
        if result.returncode != 0:
            raise LabError(f"{case.name}: {' '.join(argv)}: {result.stderr.strip()}")
    if not backend.wait_synced(pod, FOLLOW_TIMEOUT):
        follower = backend.status(pod).get("follower") or {}
        raise LabError(
            f"{case.name}: {name} did not follow the change of {pod.netns} in {FOLLOW_TIMEOUT} s "
            f"(its follower: {follower})"
        )


def _run_case(lab: Lab, case: Case, number: int) -> dict:
    faults.point("compare:case")
    cancel.check()  # a case not begun when SIGTERM came is not begun at all
    token = f"{'late-' if case.late else ''}c{number}-{secrets.token_hex(3)}"  # a valid DNS label
    client = lab.client(
        case.client,
        proto=case.proto,
        dst=case.dst,
        port=case.port,
        token=token,
        uid=case.uid,
        gid=case.gid,
        bind=case.bind,
        first=case.first,
        become=case.become,
    )
    return observe(client, _events(lab, case, token))


def run_backend(
    name: str, spec: CaptureSpec, cases: list[Case], plan: LabPlan, progress: Callable[[], None] | None = None
) -> BackendRun:
    backend = get_backend(name)
    with Lab(plan) as lab:
        pods = [lab.pods[meshed.role] for meshed in plan.meshed]
        run = BackendRun(name, backend.describe(pods[0]))
        before = sum(conntrack_entries(pod.netns) for pod in pods)
        applied = []
        try:
            for pod in pods:
                cancel.check()
                backend.apply(pod, spec)
                applied.append(pod)
            faults.point("compare:applied")
            for segment in _segments(cases):
                first_case = cases[segment[0]]
                if first_case.setup:
                    _set_up(lab, backend, name, first_case)
                with ThreadPoolExecutor(CONCURRENT_CASES) as pool:
                    for number, outcome in pool.map(lambda n: (n, _run_case(lab, cases[n], n)), segment):
                        run.outcomes[cases[number].name] = outcome
                        if progress:
                            progress()
            run.outcomes = {case.name: run.outcomes[case.name] for case in cases}  # in the cases' order
            run.conntrack_entries = sum(conntrack_entries(pod.netns) for pod in pods) - before
        finally:
            for pod in reversed(applied):
                backend.remove(pod)
    return run
