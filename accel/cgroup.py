"""cgroup v2 child groups: where accel puts the processes it starts, and later attaches BPF.

accel only ever creates, uses and removes cgroups of its own, below the cgroup v2 mount
(found from /proc/mounts: /sys/fs/cgroup on a normal node, /sys/fs/cgroup/unified on a hybrid
one); it never touches the root or anyone else's group.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class CgroupError(RuntimeError):
    pass


def cgroup2_mount() -> Path:
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return Path(fields[1])
    raise CgroupError("no cgroup v2 mount in /proc/mounts (the eBPF backend and the lab need cgroup v2)")


class Cgroup:
    """A cgroup accel created (or will create) at `path`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        root = cgroup2_mount()
        if self.path == root or root not in self.path.parents:
            raise CgroupError(f"refusing to manage {self.path}: not a child of the cgroup v2 mount {root}")

    @classmethod
    def create(cls, name: str, parent: Path | None = None) -> Cgroup:
        group = cls((parent or cgroup2_mount()) / name)
        group.path.mkdir()
        return group

    def child(self, name: str) -> Cgroup:
        return Cgroup.create(name, self.path)

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        """Processes in this group and all groups below it."""
        found = []
        for procs in self.path.rglob("cgroup.procs"):
            try:
                found += [int(line) for line in procs.read_text().split()]
            except FileNotFoundError:
                continue
        return found

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL everything in the group (only processes accel put there, and their children)."""
        kill_file = self.path / "cgroup.kill"
        if kill_file.exists():
            kill_file.write_text("1")
        else:  # kernels before 5.14
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.02)

    def remove(self) -> None:
        """Kill what is left inside, then remove the group and its children, deepest first."""
        if not self.path.exists():
            return
        if self.pids():
            self.kill()
        for directory in sorted((p for p in self.path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            directory.rmdir()
        self.path.rmdir()

    def exists(self) -> bool:
        return self.path.exists()
