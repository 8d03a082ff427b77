"""Run the cases through each backend in a fresh lab, and record what happened.

An outcome is what the traffic showed: the client's result and the address it saw, the
listeners the request passed through in order, the original destination and peer the sidecar
saw, and what the final server saw. Ephemeral ports are dropped, everything else is kept, so
two backends agree on a case exactly when the same traffic went the same way.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable

from ..backends import get_backend
from ..lab import Lab, LabPlan, conntrack_entries
from ..spec import CaptureSpec
from .cases import Case


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
        "original_dst": sidecar.get("original_dst") if sidecar else None,
        "proxy_peer": _host(sidecar["peer"]) if sidecar else None,
        "server_local": server["local"] if server else None,
        "server_peer": _host(server["peer"]) if server else None,
        # getpeername() for a connected socket, recvfrom()'s source for sendto
        "app_peer": client.get("peername") or client.get("reply_from"),
    }


def run_backend(name: str, spec: CaptureSpec, cases: list[Case], plan: LabPlan,
                progress: Callable[[], None] | None = None) -> BackendRun:
    backend = get_backend(name)
    with Lab(plan) as lab:
        pod = lab.pods["pod"]
        run = BackendRun(name, backend.describe(pod))
        before = conntrack_entries(pod.netns)
        backend.apply(pod, spec)
        try:
            for number, case in enumerate(cases):
                token = f"c{number}-{secrets.token_hex(3)}"  # also a valid DNS label
                client = lab.client(case.client, proto=case.proto, dst=case.dst, port=case.port, token=token,
                                    uid=case.uid, gid=case.gid, bind=case.bind)
                run.outcomes[case.name] = observe(client, lab.events(token))
                if progress:
                    progress()
            run.conntrack_entries = conntrack_entries(pod.netns) - before
        finally:
            backend.remove(pod)
    return run
