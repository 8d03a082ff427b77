"""What the datapath reads from inside a pod's network namespace: its cookie (the key of every
per-pod map entry), and the proxy's sockets that listen already, registered in the listener
map (a socket that starts listening later is registered by sockops)."""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from pathlib import Path

from pyroute2 import DiagSocket

from .. import userns
from ..process import in_netns
from . import libbpf
from .maps import AF_INET, AF_INET6, ListenerKey, Pod

SO_NETNS_COOKIE = 71
TCP_LISTEN = 0x0A


def register_listeners(listeners_map: int, netns: str, cookie: int, pod: Pod) -> None:
    """Register the proxy's sockets listening already on its outbound and inbound ports (held by
    a process of its uids or gids: the test sockops applies to a socket that starts listening
    later), taken from their process with pidfd_getfd."""
    uids, gids = set(pod.uids[: pod.n_uids]), set(pod.gids[: pod.n_gids])
    for port in sorted({pod.proxy_port, pod.inbound_port}):
        families = set()
        for family, inode in in_netns(netns, _listening_sockets, port):
            if family in families:
                continue  # one socket a family and port (a reuseport group: the kernel picks among it)
            for pid, fd, uid, gid in _socket_holders(netns, inode):
                if uid not in uids and gid not in gids:
                    continue
                copy = libbpf.pidfd_getfd(pid, fd)
                try:
                    libbpf.map_update(
                        listeners_map, ListenerKey(netns=cookie, family=family, port=port), ctypes.c_uint32(copy)
                    )
                finally:
                    os.close(copy)
                families.add(family)
                break


def netns_cookie(netns: str) -> int:
    """The cookie of a network namespace, as bpf_get_netns_cookie() gives it."""
    return in_netns(netns, _netns_cookie)


def _netns_cookie() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        return struct.unpack("Q", probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def _listening_sockets(port: int) -> list[tuple[int, int]]:
    """(family, socket inode) of TCP sockets listening on `port`, in this thread's namespace. By
    sock_diag, which walks only the listening hash: /proc/net/tcp walks every bucket of the
    node-wide established hash (about 10 ms on a large host, twice a pod add)."""
    found = []
    with DiagSocket() as diag:  # made in the calling thread, which is in the namespace
        diag.bind()
        for family in (AF_INET, AF_INET6):
            for sock in diag.get_sock_stats(family=family, states=1 << TCP_LISTEN):
                if sock["idiag_sport"] == port:
                    found.append((family, sock["idiag_inode"]))
    return found


def _socket_holders(netns: str, inode: int):
    """(pid, fd, real uid, real gid) of processes in the namespace holding the socket with this
    inode; the ids as the node sees them."""
    namespace = os.stat(userns.netns_path(netns)).st_ino
    target = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != namespace:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    status = dict(
                        line.split(":", 1)
                        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if ":" in line
                    )
                    yield int(pid), int(fd), int(status["Uid"].split()[0]), int(status["Gid"].split()[0])
                    break
        except OSError:
            continue
