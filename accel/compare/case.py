"""What one traffic case of a comparison is (Case), and the ports the lab's apps serve cases on."""

from __future__ import annotations

from dataclasses import dataclass

APP_PORT = 8080  # the app's port in every pod
OTHER_APP_PORT = 9090  # a second app port in the pod under test
UDP_PORT = 9999  # a UDP service that is not DNS


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    client: str  # the pod the request starts in: a pod under test ("pod", ...) or "remote"
    # tcp, tcp-send-close, tcp-fastopen, udp, dns-udp (connected socket), dns-udp-sendto(-connected), dns-tcp
    proto: str
    dst: str
    port: int
    uid: int
    gid: int
    bind: str | None = None
    first: tuple[str, str] | None = None  # what the client's socket does before: ("dns", server)
    late: bool = False  # the sidecar asks SO_ORIGINAL_DST only after the client has closed
    setup: tuple[tuple[str, ...], ...] = ()  # commands run in the client's pod just before
    become: tuple[tuple[int, int], ...] = ()  # identities the client takes after starting (as root)
