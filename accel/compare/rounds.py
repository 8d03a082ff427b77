"""One round of derive(): the facts one IP version's case families build from (the spec's
destinations for that version, the app's and the proxy's identities), and the list they add to."""

from __future__ import annotations

import ipaddress
from typing import Any

from ..spec import CaptureSpec
from .case import Case
from .destinations import LOOPBACK, excluded_address, outside_address, pod_address, service_address


class Round:
    """One IP version's pass over the families: the facts their cases are built from, and the list
    they add to."""

    def __init__(self, spec: CaptureSpec, app: int, version: int, sidecar_ports: set[int], cases: list[Case]):
        self.spec, self.app, self.version, self.sidecar_ports, self.cases = spec, app, version, sidecar_ports, cases
        self.proxy_uid, self.proxy_gid = spec.proxy_uids[0], spec.proxy_gids[0]
        self.v = "" if version == 4 else "-v6"
        self.first = version == 4  # cases that do not depend on the IP version run once
        self.pod_ip, self.loopback = pod_address(version, "pod"), LOOPBACK[version]
        self.service, self.outside = service_address(spec, version), outside_address(spec, version)
        self.excluded = excluded_address(spec, version)
        self.anywhere = self.service or self.outside or pod_address(version, "remote")
        self.resolver = pod_address(version, "dns")

    @property
    def udp_target(self) -> str:
        """Where UDP that is not DNS goes: anywhere, unless that is loopback."""
        return self.anywhere if not ipaddress.ip_address(self.anywhere).is_loopback else pod_address(4, "remote")

    def add(
        self,
        name: str,
        description: str,
        dst: str,
        port: int,
        *,
        client: str = "pod",
        proto: str = "tcp",
        uid: int | None = None,
        gid: int | None = None,
        bind: str | None = None,
        **more: Any,
    ):
        """A case, sent by the app's uid and gid unless others are given."""
        uid = self.app if uid is None else uid
        gid = self.app if gid is None else gid
        self.cases.append(Case(name, description, client, proto, dst, port, uid, gid, bind, **more))
