"""A node's state directory: what is loaded and which pods are captured, as JSON, and the lock that
serialises changes.

The state file is replaced atomically (written beside, then renamed), so readers (status,
metrics, pod list) need no lock and never see half a write. Changes take the lock for their
whole read-modify-write. A pod change records its intent (phase "adding" or "removing") before
touching the kernel and its completion after, so that a command killed half-way leaves a record
the next one can finish or undo.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .paths import NodeError

STATE_FILE = "state.json"
LOCK_FILE = "lock"
RECORD_FILE = "datapath.json"  # the compiled datapath this node runs (eBPF)
FORMAT = 1


@dataclass
class PodRecord:
    id: str
    netns: str  # as given: a name in /run/netns or a path
    netns_id: tuple[int, int]  # (device, inode) of the namespace: a path may later name another
    spec: dict  # Istio's config JSON (accel.inputs.to_istio_config)
    backend: str
    phase: str  # "adding", "ready" or "removing"
    added_at: float = field(default_factory=time.time)
    cookie: int | None = None  # eBPF: the netns cookie its entries are keyed by
    config: int | None = None  # eBPF: the configuration id of its lists
    pin: str | None = None  # eBPF: where its sk_lookup link is pinned
    rules: dict = field(default_factory=dict)  # nftables/iptables: what removing its rules needs
    name: str | None = None  # what its runtime calls it: NAMESPACE/NAME (accel-cni)
    shortcut: bool = False  # eBPF: its app <-> proxy hops are short-circuited (--sockmap)


@dataclass
class NodeState:
    backend: str  # ebpf, nftables or iptables
    why: str  # how `up` chose it
    version: str  # accel's
    cgroup: str | None
    bpffs: str
    mounted_bpffs: bool  # `up` mounted it, so `down` unmounts it
    up_at: float
    datapath: dict = field(default_factory=dict)  # eBPF: programs, links and map layouts
    pods: dict[str, PodRecord] = field(default_factory=dict)

    def to_json(self) -> dict:
        # Shallow, not dataclasses.asdict(): its deep copy of every pod's spec and the datapath's
        # layouts made a save cost more than the kernel work of a pod add on a full node.
        return {"format": FORMAT, **vars(self), "pods": {key: vars(record) for key, record in self.pods.items()}}

    @classmethod
    def from_json(cls, document: dict) -> NodeState:
        document = dict(document)
        if document.pop("format", None) != FORMAT:
            raise NodeError(
                "the state directory holds another format of accel's state: run the accel that wrote it "
                "(accel down), or remove the directory"
            )
        pods = {
            key: PodRecord(**{**value, "netns_id": tuple(value["netns_id"])})
            for key, value in document.pop("pods").items()
        }
        return cls(**document, pods=pods)


def load(directory: Path) -> NodeState | None:
    """The node's state, or None when accel is not up here."""
    try:
        text = (directory / STATE_FILE).read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise NodeError(f"reading {directory / STATE_FILE}: {error.strerror}") from None
    try:
        return NodeState.from_json(json.loads(text))
    except (ValueError, TypeError, KeyError) as error:
        raise NodeError(f"{directory / STATE_FILE} is damaged ({error}): run accel down, then accel up") from None


def save(directory: Path, state: NodeState) -> None:
    make(directory)
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".state-")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(state.to_json()))  # one line: the C encoder (indent is the Python one)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, directory / STATE_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def make(directory: Path) -> None:
    """The state directory, root's alone (it names pods and holds the code the kernel runs)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)


@contextlib.contextmanager
def locked(directory: Path):
    """The node's lock, held for a whole change; concurrent changes wait their turn."""
    make(directory)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock, also when the process dies
