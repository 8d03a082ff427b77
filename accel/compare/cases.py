"""The traffic cases of a comparison, derived from the spec: what to send, from where, as whom.

Cases follow the reference's semantics (research/istio-capture.md, "Reading the result as a
first-match capture function"): each probes one rule of the capture, using destinations taken
from the spec itself (an address inside an included CIDR, inside an excluded one, outside the
include list, ...). Nothing here predicts the outcome: the cases are run and observed.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace

from .. import constants
from ..lab import POD_ADDRESSES, LabPlan
from ..spec import WILDCARD, CaptureSpec
from .case import APP_PORT, Case
from .destinations import pod_address
from .families import FAMILIES
from .identities import app_identity
from .plan import lab_plan
from .rounds import Round


def derive(spec: CaptureSpec) -> tuple[list[Case], LabPlan]:
    """The cases for this spec, and the lab they need (ports, routed service addresses)."""
    app = app_identity(spec)
    sidecar_ports = {spec.proxy_port, spec.inbound_capture_port, constants.DNS_PROXY_PORT}
    cases: list[Case] = []
    versions = (4, 6) if spec.enable_ipv6 else (4,)
    for version in versions:
        r = Round(spec, app, version, sidecar_ports, cases)
        for family in FAMILIES:
            family(r)

    if spec.captures_inbound and not spec.tproxy and _captures_inbound_port(spec, APP_PORT):
        # REDIRECT to a port nobody listens on is refused; TPROXY without a listener drops instead
        cases.append(
            Case(
                "inbound-ipv6-only-listener",
                "remote pod over IPv4 to a pod whose proxy listens inbound on IPv6 only",
                client="remote",
                proto="tcp",
                dst=pod_address(4, "v6-listener-pod"),
                port=APP_PORT,
                uid=app,
                gid=app,
            )
        )
    # a pod in a user namespace of its own (hostUsers: false): its uid 1337 is another uid on the node
    for case in [c for c in cases if c.name in USERNS_CASES]:
        cases.append(_in_userns_pod(case))
    return cases, lab_plan(spec, cases, sidecar_ports)


# The cases repeated for a pod in a user namespace of its own.
USERNS_CASES = (
    "outbound-service",
    "outbound-as-proxy-uid-1337",
    "outbound-as-proxy-gid-1337",
    "outbound-own-pod-ip",
    "proxy-to-app-over-lo",
    "inbound-passthrough-source",
    "inbound-app-port",
    "dns-tcp",
    "outbound-excluded-cidr",
    "outbound-included-owner-group",
)


def _in_userns_pod(case: Case) -> Case:
    moved = {POD_ADDRESSES["pod"][i]: POD_ADDRESSES["userns-pod"][i] for i in (0, 1)}
    return Case(
        f"userns-{case.name}",
        f"in a pod with its own user namespace: {case.description}",
        "userns-pod" if case.client == "pod" else case.client,
        case.proto,
        moved.get(case.dst, case.dst),
        case.port,
        case.uid,
        case.gid,
        case.bind,
        case.first,
        case.late,
        case.setup,
        case.become,
    )


def _captures_inbound_port(spec: CaptureSpec, port: int) -> bool:
    if spec.inbound_ports_include == WILDCARD:
        return port not in spec.inbound_ports_exclude
    return port in spec.inbound_ports_include


def select(cases: list[Case], patterns: tuple[str, ...]) -> list[Case]:
    """The cases whose names match any of the shell-style patterns, in their order. Each chosen
    case runs after every setup of the cases before it, so it meets the pod as it would in the
    full run. A pattern that matches no case is a ValueError naming it."""
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(c.name, p) for c in cases)]
    if unmatched:
        raise ValueError(f"{unmatched[0]!r} matches no case (accel compare --list-cases shows them)")
    chosen: list[Case] = []
    pending: tuple[tuple[str, ...], ...] = ()
    for case in cases:
        pending += case.setup
        if any(fnmatch.fnmatchcase(case.name, p) for p in patterns):
            chosen.append(replace(case, setup=pending))
            pending = ()
    return chosen
