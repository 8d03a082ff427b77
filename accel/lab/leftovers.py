"""What accel runs leave behind, found by name: every namespace, cgroup and /tmp directory of a
run carries its prefix and the PID of the process that made it, so what a dead process left can
be listed and removed without touching a live run's objects (`accel lab cleanup`)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..cgroup import Cgroup, cgroup2_mount
from ..netns import Netns, existing_names
from ..node.paths import NodeError, mounts_under, unmount

# Every prefix a run of accel names its objects with; the PID of the run follows the prefix.
RUN_PREFIXES = ("accel-lab", "accel-bench", "accel-scratch", "accel-demo", "accel-test", "accel-soak")


def _owner(name: str) -> int | None:
    """The PID in an accel object's name (PREFIX-PID-RANDOM...), if it has one."""
    for prefix in RUN_PREFIXES:
        match = re.match(rf"{re.escape(prefix)}-(\d+)-", name)
        if match:
            return int(match.group(1))
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def leftovers(pid: int | None = None) -> dict[str, list[str]]:
    """Network namespaces, cgroups and directories that accel runs made: those of process `pid`
    (a test checking what its own run left), or else those whose process no longer exists (what
    a crashed run left). Objects of live runs are never listed: other runs may share the machine."""

    def mine(name: str) -> bool:
        owner = _owner(name)
        return owner is not None and (owner == pid if pid is not None else not _alive(owner))

    root = cgroup2_mount()
    return {
        "namespaces": sorted(n for n in existing_names() if mine(n)),
        "cgroups": sorted(str(p) for p in root.iterdir() if p.is_dir() and mine(p.name)),
        "directories": sorted(str(p) for p in Path("/tmp").iterdir() if p.is_dir() and mine(p.name)),
    }


def cleanup_leftovers() -> dict[str, list[str]]:
    """Remove what dead runs left (leftovers()): processes in their cgroups first, then the rest."""
    found = leftovers()
    for path in found["cgroups"]:
        Cgroup(Path(path)).remove()
    for name in found["namespaces"]:
        Netns(name).remove()
    for path in found["directories"]:
        for mount_point in mounts_under(Path(path)):  # a test node's bpffs
            try:
                unmount(mount_point)
            except NodeError:
                pass
        shutil.rmtree(path, ignore_errors=True)
    return found
