"""A node for tests: a lab whose cgroup the node's programs attach at, with a bpffs and a state
directory of the test's own (never the node's defaults), and the real `accel` command run
against it as its own process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from accel.constants import ISTIO_INIT_DEFAULT_ARGS
from accel.lab import Lab, LabPlan, SidecarConfig
from accel.netns import unique_name
from accel.node.paths import unmount_bpffs_at

TOP = Path(__file__).resolve().parents[1]
ACCEL = str(TOP / ".venv" / "bin" / "accel")
APP = 1000
SERVICE = "203.0.113.10"
STOCK = list(ISTIO_INIT_DEFAULT_ARGS)  # what the injector gives istio-init


class Node:
    """A lab whose cgroup the node's programs attach at, with a bpffs and a state directory of its own."""

    def __init__(self, lab: Lab, root: Path):
        self.lab, self.root = lab, root
        self.bpffs, self.state = root / "bpffs", root / "state"
        self.env = {
            **os.environ,
            "ACCEL_CGROUP": str(lab.cgroup.path),
            "ACCEL_BPFFS": str(self.bpffs),
            "ACCEL_STATE_DIR": str(self.state),
        }

    def accel(self, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [ACCEL, *args], capture_output=True, text=True, env={**self.env, **(env or {})}, timeout=120
        )
        if check:
            assert result.returncode == 0, f"accel {' '.join(args)}: {result.stderr}"
        return result

    def json(self, *args: str, **kwargs) -> dict:
        """The command's --json output (accel's own options go before --)."""
        split = args.index("--") if "--" in args else len(args)
        return json.loads(self.accel(*args[:split], "--json", *args[split:], **kwargs).stdout)

    def first_hop(self, token: str, dst: str = SERVICE, role: str = "pod") -> str | None:
        self.lab.client(role, proto="tcp", dst=dst, port=8080, token=token, uid=APP, gid=APP)
        events = self.lab.events(token)
        return events[0]["agent"] if events else None


def another_accel(tmp_path: Path, changes: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The environment of another accel (a newer one, a broken one): copies of accel/ and bpf/ with
    a change per file (relative path: (old, new)), imported ahead of this checkout's."""
    root = tmp_path / "another"
    for part in ("accel", "bpf"):
        shutil.copytree(TOP / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    for file, (old, new) in changes.items():
        text = (root / file).read_text()
        assert old in text, file
        (root / file).write_text(text.replace(old, new))
    return {"PYTHONPATH": str(root), "ACCEL_BPF_DIR": str(root / "bpf"), "ACCEL_CACHE_DIR": str(tmp_path / "cache")}


PLAN = LabPlan(service_addresses=(SERVICE,), sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337))


@contextlib.contextmanager
def node_on(lab: Lab):
    """A node of its own (bpffs, state directory) on `lab`, taken down and removed afterwards."""
    root = Path("/tmp") / unique_name("accel-test")
    root.mkdir()
    ready = Node(lab, root)
    try:
        yield ready
    finally:
        ready.accel("down", check=False)
        unmount_bpffs_at(ready.bpffs)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def node():
    """A node on a lab of its own."""
    with Lab(PLAN) as lab, node_on(lab) as ready:
        yield ready
