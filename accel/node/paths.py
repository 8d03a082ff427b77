"""Where a node's accel lives: the cgroup its programs attach at, its bpffs pin directory and its
state directory. Each comes from a command-line option, else an environment variable, else the
default for a real node; every test passes its own."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from ..cgroup import CgroupError, cgroup2_mount

ENV_CGROUP, ENV_BPFFS, ENV_STATE = "ACCEL_CGROUP", "ACCEL_BPFFS", "ACCEL_STATE_DIR"
DEFAULT_BPFFS, DEFAULT_STATE = "/sys/fs/bpf", "/var/lib/accel"
# The kubelet's cgroup for every pod: kubepods.slice with the systemd cgroup driver, kubepods
# with cgroupfs, on the cgroup v2 mount.
KUBELET_CGROUPS = ("kubepods.slice", "kubepods")
PIN_DIR = "accel"
BPF_FS_MAGIC = "bpf"
_libc = ctypes.CDLL(None, use_errno=True)


class NodeError(RuntimeError):
    """Something a node command cannot do, said in one line; nothing was changed."""


@dataclass(frozen=True)
class NodePaths:
    cgroup: Path | None  # None until a command needs it (pod commands do not)
    bpffs: Path
    state: Path

    @property
    def pins(self) -> Path:
        return self.bpffs / PIN_DIR


def resolve(cgroup: str | None = None, bpffs: str | None = None, state: str | None = None) -> NodePaths:
    """Options win over ACCEL_CGROUP/ACCEL_BPFFS/ACCEL_STATE_DIR, which win over the defaults (the
    cgroup's, default_cgroup(), is looked for only when a command needs it)."""
    cgroup = cgroup or os.environ.get(ENV_CGROUP)
    bpffs_dir = Path(bpffs or os.environ.get(ENV_BPFFS) or DEFAULT_BPFFS)
    state_dir = Path(state or os.environ.get(ENV_STATE) or DEFAULT_STATE)
    return NodePaths(_given_cgroup(cgroup) if cgroup else None, bpffs_dir, state_dir)


def _root() -> Path:
    try:
        return cgroup2_mount()
    except CgroupError as error:
        raise NodeError(str(error)) from None


def _given_cgroup(given: str) -> Path:
    root, path = _root(), Path(given)
    if not path.is_absolute():
        path = root / path
    if path != root and root not in path.parents:
        raise NodeError(f"--cgroup {given}: not on the cgroup v2 mount {root}")
    if not path.is_dir():
        raise NodeError(f"--cgroup {given}: no such cgroup")
    return path  # the cgroup v2 root only when given explicitly: every process on the node


def default_cgroup() -> Path:
    """The kubelet's cgroup for every pod."""
    root = _root()
    for name in KUBELET_CGROUPS:
        if (root / name).is_dir():
            return root / name
    raise NodeError(
        f"no kubelet pod cgroup ({' or '.join(KUBELET_CGROUPS)}) under {root}: pass --cgroup "
        f"(or {ENV_CGROUP}) with the cgroup that holds the pods"
    )


def bpffs_mounted_at(directory: Path) -> Path | None:
    """The bpffs mount that holds `directory`, from /proc/self/mountinfo, if any."""
    directory = directory.resolve()
    best = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        mount_point, fs_type = Path(fields[4]), fields[separator + 1]
        if fs_type == BPF_FS_MAGIC and (directory == mount_point or mount_point in directory.parents):
            if best is None or len(mount_point.parts) > len(best.parts):
                best = mount_point
    return best


def mounts_under(directory: Path) -> list[Path]:
    """Every mount point at or below `directory`, deepest first (to unmount in that order)."""
    directory = directory.resolve()
    found = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = Path(line.split()[4])
        if mount_point == directory or directory in mount_point.parents:
            found.add(mount_point)
    return sorted(found, key=lambda p: -len(p.parts))


def mount_bpffs(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if _libc.mount(b"bpf", str(directory).encode(), b"bpf", 0, None) != 0:
        error = ctypes.get_errno()
        raise NodeError(f"mounting bpffs at {directory}: {os.strerror(error)}")


def unmount_bpffs_at(directory: Path) -> None:
    """Unmount the bpffs mounted at `directory` itself, if there is one (not one it lies below)."""
    if bpffs_mounted_at(directory) == directory.resolve():
        unmount(directory)


def unmount(directory: Path) -> None:
    if _libc.umount2(str(directory).encode(), 0) != 0:
        error = ctypes.get_errno()
        raise NodeError(f"unmounting {directory}: {os.strerror(error)}")
