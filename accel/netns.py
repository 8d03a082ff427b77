"""Network namespaces of accel's own: uniquely named, created one way, always removed.

A scratch namespace (tests, the demo) and every namespace of a lab are a Netns: made with
`ip netns add` (or, for a pod with a user namespace of its own, bind-mounted from a short-lived
child that made both), lo up, the sysctls asked for (from a thread inside it); remove() takes it all away again.

`ip netns exec NAME` bind-mounts /etc/netns/NAME/FILE over /etc/FILE, so a namespace can
carry its own resolv.conf or group database without touching the host's.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from pyroute2 import IPRoute

from . import process

NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
# A pod in a user namespace of its own (Kubernetes' hostUsers: false): its ids 0-65535 are these
# on the node, so its uid 1337 is 1001337 there.
USERNS_BASE, USERNS_SIZE = 1_000_000, 65536
CLONE_NEWUSER, CLONE_NEWNET, MS_BIND = 0x10000000, 0x40000000, 4096
_libc = ctypes.CDLL(None, use_errno=True)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"


def existing_names() -> set[str]:
    """The named network namespaces on this node now (/run/netns)."""
    return {path.name for path in NETNS_DIR.iterdir()} if NETNS_DIR.exists() else set()


def sysctl(netns: str, key: str, value: str) -> None:
    """Set a sysctl in the namespace: written from a thread inside it (/proc/sys/net is the
    writer's namespace's), not by a sysctl process: a lab of 100 pods sets 500."""
    path = Path("/proc/sys") / key.replace(".", "/")

    def write():
        try:
            path.write_text(value)
        except OSError as error:
            raise process.CommandError(["sysctl", "-w", f"{key}={value}"], 1, f"in {netns}: {error.strerror}") from None

    process.in_netns(netns, write)


def _lo_up() -> None:
    with IPRoute() as ip:
        ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")


class Netns:
    """A named network namespace (/run/netns/NAME) that accel makes and removes; a context manager
    that creates it on entry and removes it on exit, also when the body fails.

    userns: owned by a new user namespace mapping ids 0-65535 to USERNS_BASE onwards.
    sysctls: {key: value} set in it, in order, once lo is up.
    etc_files: {name: content} visible as /etc/<name> to commands run through run().
    """

    def __init__(
        self,
        name: str,
        *,
        userns: bool = False,
        sysctls: dict[str, str] | None = None,
        etc_files: dict[str, str] | None = None,
    ):
        self.name, self.userns = name, userns
        self.sysctls = dict(sysctls or {})
        self.etc_files = dict(etc_files or {})
        self._made_etc_netns = False

    @classmethod
    def scratch(cls, prefix: str = "accel-scratch", **kwargs) -> Netns:
        """A namespace named uniquely for this process, for one job."""
        return cls(unique_name(prefix), **kwargs)

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc):
        self.remove()

    def create(self) -> Netns:
        """Make it; if any step fails (or is interrupted), whatever was made is removed again."""
        try:
            if self.userns:
                _add_with_userns(self.name)
            else:
                process.run(["ip", "netns", "add", self.name], check=True)
            if self.etc_files:
                self._made_etc_netns = not ETC_NETNS.exists()
                etc = ETC_NETNS / self.name
                etc.mkdir(parents=True)
                for name, content in self.etc_files.items():
                    (etc / name).write_text(content)
            process.in_netns(self.name, _lo_up)
            for key, value in self.sysctls.items():
                sysctl(self.name, key, value)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Delete the namespace, if it exists, and its /etc files. Raises CommandError if the
        namespace cannot be deleted (after removing the files all the same)."""
        try:
            if self.exists():
                process.run(["ip", "netns", "delete", self.name], check=True)
        finally:
            shutil.rmtree(ETC_NETNS / self.name, ignore_errors=True)
            if self._made_etc_netns:
                try:
                    ETC_NETNS.rmdir()  # only if no one else put a namespace's files there meanwhile
                except OSError:
                    pass
                self._made_etc_netns = False

    def run(self, argv: list[str], *, input: str | None = None, check: bool = False) -> subprocess.CompletedProcess:
        """process.run() of `ip netns exec NAME argv...`: the command sees the namespace's /etc files."""
        return process.run(["ip", "netns", "exec", self.name, *argv], input=input, check=check)

    def exists(self) -> bool:
        return (NETNS_DIR / self.name).exists()


def _add_with_userns(name: str) -> None:
    """A network namespace named `name` (in /run/netns, as `ip netns add` makes them) owned by a
    new user namespace mapping ids 0-65535 to USERNS_BASE onwards. A short-lived child makes
    both; the bind mount keeps the network namespace, which keeps its user namespace."""

    def unshare():
        if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare")

    NETNS_DIR.mkdir(exist_ok=True)
    child = subprocess.Popen(["sleep", "60"], preexec_fn=unshare)
    try:
        for file in ("uid_map", "gid_map"):
            Path(f"/proc/{child.pid}/{file}").write_text(f"0 {USERNS_BASE} {USERNS_SIZE}\n")
        target = NETNS_DIR / name
        target.touch(mode=0o444, exist_ok=False)
        if _libc.mount(f"/proc/{child.pid}/ns/net".encode(), str(target).encode(), None, MS_BIND, None) != 0:
            error = ctypes.get_errno()
            target.unlink()
            raise OSError(error, f"bind-mounting the network namespace of a new user namespace: {os.strerror(error)}")
    finally:
        child.kill()
        child.wait()


def group_file_with(extra_groups: dict[str, int]) -> str:
    """The host's /etc/group plus groups that must resolve inside a scratch namespace."""
    host = Path("/etc/group").read_text()
    present = {line.split(":", 1)[0] for line in host.splitlines() if line}
    lines = [f"{name}:x:{gid}:" for name, gid in extra_groups.items() if name not in present]
    return host.rstrip("\n") + "\n" + "".join(line + "\n" for line in lines)
