"""User namespaces of pods: which one owns a network namespace, and how it maps ids to the node's.

A pod with `hostUsers: false` runs in a user namespace of its own: uid 1337 inside is another
uid on the node. iptables' owner match maps the rule's ids through the user namespace that owns
the network namespace; the eBPF datapath, which sees the node's ids, needs the same mapping.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1): the user namespace owning a namespace
NS_GET_PARENT = 0xB702  # _IO(0xb7, 0x2): a user namespace's parent
CLONE_NEWUSER = 0x10000000
_libc = ctypes.CDLL(None, use_errno=True)
UNMAPPED_ID = 0xFFFFFFFF  # what an id a user namespace does not map becomes: it matches no one


class UsernsError(RuntimeError):
    pass


@dataclass(frozen=True)
class IdMap:
    """How a pod's user namespace maps its uids and gids to the node's: (inside, outside, count)
    ranges, as /proc/PID/uid_map lists them. The identity for a pod in the node's namespace."""

    uids: tuple[tuple[int, int, int], ...] = ((0, 0, 1 << 32),)
    gids: tuple[tuple[int, int, int], ...] = ((0, 0, 1 << 32),)

    @staticmethod
    def _map(ranges: tuple[tuple[int, int, int], ...], value: int) -> int:
        for inside, outside, count in ranges:
            if inside <= value < inside + count:
                return outside + value - inside
        return UNMAPPED_ID

    def uid(self, value: int) -> int:
        return self._map(self.uids, value)

    def gid(self, value: int) -> int:
        return self._map(self.gids, value)


IDENTITY = IdMap()  # a pod in the node's user namespace


def netns_path(netns: str) -> Path:
    """A network namespace given by name (/run/netns/NAME) or by path (/proc/PID/ns/net, ...)."""
    return Path(netns) if "/" in netns else Path("/run/netns") / netns


def owner_fd(netns: str) -> int:
    """An fd of the user namespace that owns the network namespace."""
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(fd, NS_GET_USERNS)
    except OSError as error:
        raise UsernsError(f"the user namespace of {netns}: {error.strerror}") from None
    finally:
        os.close(fd)


def enter(userns_fd: int) -> None:
    """setns(2) into a user namespace (single-threaded callers only: a child before exec)."""
    if _libc.setns(userns_fd, CLONE_NEWUSER) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns into a user namespace: {os.strerror(error)}")


def is_own(userns_fd: int) -> bool:
    return os.fstat(userns_fd).st_ino == os.stat("/proc/self/ns/user").st_ino


def owned_by_other(netns: str) -> bool:
    """Whether the network namespace belongs to another user namespace than ours."""
    fd = owner_fd(netns)
    try:
        return not is_own(fd)
    finally:
        os.close(fd)


def _parse(text: str) -> tuple[tuple[int, int, int], ...]:
    return tuple(_range(line) for line in text.splitlines() if line.strip())


def _range(line: str) -> tuple[int, int, int]:
    """One line of a uid_map or gid_map: inside, outside, count."""
    inside, outside, count = (int(n) for n in line.split())
    return inside, outside, count


def id_map(netns: str) -> IdMap:
    """How the user namespace owning `netns` maps ids to ours: the identity for a pod in our
    own user namespace. A child process enters the pod's user namespace and reads its own
    /proc/self/uid_map, which the kernel writes relative to the parent namespace; only a direct
    child of our user namespace is supported, so that parent is us."""
    fd = owner_fd(netns)
    try:
        if is_own(fd):
            return IDENTITY
        try:
            parent = fcntl.ioctl(fd, NS_GET_PARENT)
        except OSError as error:
            raise UsernsError(f"the user namespace of {netns}: {error.strerror}") from None
        try:
            if not is_own(parent):
                raise UsernsError(f"{netns} belongs to a nested user namespace (not a child of accel's own)")
        finally:
            os.close(parent)
        maps = []
        for name in ("uid_map", "gid_map"):
            result = subprocess.run(
                ["cat", f"/proc/self/{name}"],
                capture_output=True,
                text=True,
                preexec_fn=lambda: enter(fd),
                pass_fds=(fd,),
            )
            if result.returncode != 0:
                raise UsernsError(f"reading the {name} of {netns}'s user namespace: {result.stderr.strip()}")
            maps.append(_parse(result.stdout))
        return IdMap(uids=maps[0], gids=maps[1])
    finally:
        os.close(fd)
