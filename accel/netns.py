"""Scratch network namespaces: uniquely named, always removed, the only place rules go.

`ip netns exec NAME` bind-mounts /etc/netns/NAME/FILE over /etc/FILE, so a namespace can
carry its own resolv.conf or group database without touching the host's.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")


class CommandError(RuntimeError):
    def __init__(self, argv, returncode, stderr):
        self.argv, self.returncode, self.stderr = argv, returncode, stderr
        super().__init__(f"{' '.join(argv)} exited {returncode}: {stderr.strip()}")


def run(argv: list[str], *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, input=input, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise CommandError(argv, result.returncode, result.stderr or result.stdout)
    return result


def unique_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"


class ScratchNetns:
    """A new network namespace with lo up; deleted on exit, also when the body fails.

    etc_files: {name: content} visible as /etc/<name> to commands run in the namespace.
    """

    def __init__(self, prefix: str = "accel-scratch", etc_files: dict[str, str] | None = None):
        self.name = unique_name(prefix)
        self.etc_files = etc_files or {}
        self._made_etc_netns = False

    def __enter__(self) -> ScratchNetns:
        run(["ip", "netns", "add", self.name])
        try:
            if self.etc_files:
                self._made_etc_netns = not ETC_NETNS.exists()
                etc = ETC_NETNS / self.name
                etc.mkdir(parents=True)
                for name, content in self.etc_files.items():
                    (etc / name).write_text(content)
            self.run(["ip", "link", "set", "lo", "up"])
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc):
        self.remove()

    def remove(self):
        run(["ip", "netns", "delete", self.name], check=False)
        shutil.rmtree(ETC_NETNS / self.name, ignore_errors=True)
        if self._made_etc_netns:
            try:
                ETC_NETNS.rmdir()  # only if no one else put a namespace's files there meanwhile
            except OSError:
                pass

    def run(self, argv: list[str], *, input: str | None = None, check: bool = True):
        return run(["ip", "netns", "exec", self.name, *argv], input=input, check=check)

    def exists(self) -> bool:
        return (NETNS_DIR / self.name).exists()


def group_file_with(extra_groups: dict[str, int]) -> str:
    """The host's /etc/group plus groups that must resolve inside a scratch namespace."""
    host = Path("/etc/group").read_text()
    present = {line.split(":", 1)[0] for line in host.splitlines() if line}
    lines = [f"{name}:x:{gid}:" for name, gid in extra_groups.items() if name not in present]
    return host.rstrip("\n") + "\n" + "".join(line + "\n" for line in lines)
