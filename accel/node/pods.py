"""A node's pods: add, change, remove and list them, with whichever backend the node runs.

Every change holds the node's lock and records its intent in the state before it touches the
kernel ("adding", "removing") and its end after ("ready", or gone). A command killed half-way
leaves a record that reconcile() undoes (a half-added pod is removed: the caller, e.g. a
container runtime retrying CNI ADD, adds it again) or finishes (a half-removed pod is removed).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import faults, inputs, userns
from ..backends import BackendError, get_backend
from ..ebpf import libbpf, probe
from ..ebpf.datapath import DatapathError
from ..ebpf.maps import UnsupportedSpec, new_config_id
from ..ebpf.pod_sockets import netns_cookie
from ..spec import CaptureSpec
from . import pinned
from . import state as node_state
from .paths import NodeError, NodePaths
from .state import NodeState, PodRecord

POD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,254}")


class NotUp(NodeError):
    """accel is not up on this node (a CNI plugin answers 'try again later')."""


@dataclass(frozen=True)
class Target:
    """A pod as the backends see it: its network namespace."""

    netns: str


def netns_identity(netns: str) -> tuple[int, int] | None:
    """(device, inode) of a network namespace, None if it is gone."""
    try:
        status = os.stat(userns.netns_path(netns))
    except OSError:
        return None
    return status.st_dev, status.st_ino


def check_id(pod_id: str) -> None:
    if not POD_ID.fullmatch(pod_id):
        raise NodeError(f"--id {pod_id!r}: 1-255 letters, digits and _ . : @ -, starting with a letter or digit")


def add(
    paths: NodePaths, pod_id: str, netns: str, spec: CaptureSpec, name: str | None = None, shortcut: bool = False
) -> str:
    """Capture the pod: "added", "unchanged" (same namespace, spec and short-circuit), or
    "replaced" (changed: switched in one step). name: what its runtime calls it (NAMESPACE/NAME),
    for status; shortcut: short-circuit its app <-> proxy hops (eBPF only)."""
    check_id(pod_id)
    identity = netns_identity(netns)
    if identity is None:
        raise NodeError(f"network namespace {netns}: no such namespace")
    if identity[0] != os.stat("/proc/self/ns/net").st_dev:  # not on nsfs: a bind mount that did not reach us
        raise NodeError(
            f"network namespace {netns}: not one here (an empty mount point: if accel runs in "
            "a container, mount the runtime's netns directory with HostToContainer propagation)"
        )
    document = inputs.to_istio_config(spec)
    with node_state.locked(paths.state):
        current = _loaded(paths)
        if shortcut and current.backend != "ebpf":
            raise NodeError(f"--sockmap: only the ebpf backend can short-circuit (this node runs {current.backend})")
        if shortcut:
            missing = probe.short_circuit_missing()
            if missing:
                raise NodeError("--sockmap: this kernel lacks " + "; ".join(f"{f.name} ({f.detail})" for f in missing))
        reconcile(paths, current, only=pod_id)
        existing = current.pods.get(pod_id)
        if existing is not None and tuple(existing.netns_id) == identity:
            if existing.spec == document and existing.shortcut == shortcut:
                return "unchanged"
            _replace(paths, current, existing, spec, document, shortcut)
            return "replaced"
        if existing is not None:  # the id now names another namespace: the old one's capture goes
            _remove(paths, current, existing)
        record = PodRecord(pod_id, netns, identity, document, current.backend, "adding", name=name, shortcut=shortcut)
        if current.backend == "ebpf":
            record.cookie, record.config = netns_cookie(netns), new_config_id()
            record.pin = str(pinned.pod_pin(paths, pod_id))
        current.pods[pod_id] = record
        node_state.save(paths.state, current)  # the intent first: a crash from here is reconciled
        faults.point("pod-add:recorded")
        try:
            if current.backend == "ebpf":
                _ebpf_add(paths, record, spec)
            else:
                record.rules = _rules_add(current.backend, netns, spec)
        except BaseException:
            _remove(paths, current, record)
            node_state.save(paths.state, current)
            raise
        faults.point("pod-add:captured")
        record.phase = "ready"
        node_state.save(paths.state, current)
        return "replaced" if existing is not None else "added"


def delete(paths: NodePaths, pod_id: str) -> str:
    """Stop capturing the pod: "removed", or "absent" (no such pod, or accel is not up: nothing to do)."""
    with node_state.locked(paths.state):
        current = node_state.load(paths.state)
        if current is None or pod_id not in current.pods:
            return "absent"
        record = current.pods[pod_id]
        record.phase = "removing"
        node_state.save(paths.state, current)
        faults.point("pod-del:recorded")
        _remove(paths, current, record)
        node_state.save(paths.state, current)
        return "removed"


def verify(paths: NodePaths, pod_id: str, netns: str, spec: CaptureSpec, shortcut: bool = False) -> list[str]:
    """What is wrong with the pod's capture, read from the kernel (CNI CHECK): nothing when the
    pod is captured in `netns` with `spec` and its entries or rules are in place."""
    current = _loaded(paths)
    record = current.pods.get(pod_id)
    if record is None:
        return [f"pod {pod_id} is not captured"]
    problems = [] if record.phase == "ready" else [f"pod {pod_id}: {record.phase} (a command stopped half-way)"]
    identity = netns_identity(netns)
    if identity is None or identity != tuple(record.netns_id):
        problems.append(f"pod {pod_id} is captured in another network namespace than {netns}")
        return problems
    if record.spec != inputs.to_istio_config(spec):
        problems.append(f"pod {pod_id} is captured with another spec than its pod information gives now")
    if record.shortcut != shortcut:
        problems.append(
            f"pod {pod_id} is captured {'with' if record.shortcut else 'without'} the short-circuit, "
            f"its configuration says {'with' if shortcut else 'without'}"
        )
    if record.backend == "ebpf":
        problems += _ebpf_verify(paths, record, identity)
    else:
        problems += _rules_verify(record)
    return problems


def listing(paths: NodePaths) -> list[PodRecord]:
    """The node's pods, read without the lock (the state file is replaced atomically)."""
    current = node_state.load(paths.state)
    return sorted(current.pods.values(), key=lambda r: r.id) if current else []


def reconcile(paths: NodePaths, current: NodeState, only: str | None = None) -> list[str]:
    """Finish or undo what a killed command left, and drop pods whose namespace is gone (their
    capture went with it; their entries and pins go now). Saves the state; says what it did."""
    done = []
    for record in [r for r in current.pods.values() if only is None or r.id == only]:
        if record.phase in ("adding", "removing"):
            _remove(paths, current, record)
            done.append(f"pod {record.id}: {'half-added, removed' if record.phase == 'adding' else 'removal finished'}")
        elif netns_identity(record.netns) != tuple(record.netns_id):
            _remove(paths, current, record)
            done.append(f"pod {record.id}: its network namespace {record.netns} is gone; cleaned")
    if done:
        node_state.save(paths.state, current)
    return done


def drop_unknown(paths: NodePaths, current: NodeState | None) -> list[str]:
    """Remove from the pinned datapath every pod the state does not know (the state directory was
    lost while the datapath stayed pinned): no pod stays captured without a record."""
    known = {record.cookie for record in current.pods.values()} if current else set()
    ids = set(current.pods) if current else set()
    done = []
    datapath = pinned.open_for_pods(paths)
    try:
        for cookie, entry in datapath.pod_entries_in_maps().items():
            if cookie not in known:
                datapath.adopt_pod(f"netns-cookie-{cookie}", cookie, entry.config, None)
                datapath.remove_pod(f"netns-cookie-{cookie}")
                done.append(f"netns cookie {cookie}: captured but not in the state; removed")
    finally:
        datapath.close()
    for directory in sorted((paths.pins / pinned.PODS).glob("*")):
        if directory.name not in ids:
            pinned.remove_pod_pins(paths, directory.name)
            done.append(f"pod {directory.name}: an sk_lookup link pinned but not in the state; removed")
    return done


def restore(paths: NodePaths, current: NodeState) -> list[str]:
    """Write again each ready eBPF pod whose entries are gone from the datapath (its pins were
    removed under accel, so `up` loaded the datapath afresh): captured as its record says. Saves
    the state; says what it did."""
    done = []
    datapath = pinned.open_for_pods(paths)
    try:
        missing = [
            record
            for record in current.pods.values()
            if record.backend == "ebpf"
            and record.phase == "ready"
            and datapath.adopt_pod(record.netns, *_ebpf_keys(record), None).pod is None
        ]
        datapath.pods.clear()
    finally:
        datapath.close()
    for record in missing:
        pinned.remove_pod_pins(paths, record.id)
        record.pin = str(pinned.pod_pin(paths, record.id))
        _ebpf_add(paths, record, inputs.from_istio_config(record.spec))
        done.append(f"pod {record.id}: its entries were gone from the datapath; written again")
    if done:
        node_state.save(paths.state, current)
    return done


def _ebpf_keys(record: PodRecord) -> tuple[int, int]:
    """An eBPF pod's netns cookie and configuration id: add() records both before it first saves the record."""
    assert record.cookie is not None and record.config is not None, f"pod {record.id}: an eBPF record without them"
    return record.cookie, record.config


def _loaded(paths: NodePaths) -> NodeState:
    current = node_state.load(paths.state)
    if current is None:
        raise NotUp(f"accel is not up on this node (no state in {paths.state}): run accel up")
    return current


def _remove(paths: NodePaths, current: NodeState, record: PodRecord) -> None:
    """Remove whatever of the pod is in place; the namespace, or the pinned datapath (and with it
    every entry and link of the pod), may be gone already."""
    if record.backend == "ebpf":
        if record.cookie is not None and record.config is not None and pinned.datapath_pinned(paths):
            datapath = pinned.open_for_pods(paths)
            try:
                datapath.adopt_pod(record.netns, record.cookie, record.config, Path(record.pin) if record.pin else None)
                datapath.remove_pod(record.netns)
            finally:
                datapath.close()
        pinned.remove_pod_pins(paths, record.id)
    elif netns_identity(record.netns) == tuple(record.netns_id):
        _rules_remove(record)
    current.pods.pop(record.id, None)


def _ebpf_add(paths: NodePaths, record: PodRecord, spec: CaptureSpec) -> None:
    assert record.pin is not None  # add() and restore() set it first
    datapath = pinned.open_for_pods(paths)
    try:
        handle = datapath.add_pod(
            record.netns, spec, follow=False, pin=Path(record.pin), config=record.config, shortcut=record.shortcut
        )
        assert handle.sk_lookup_link is not None  # add_pod() attached it
        os.close(handle.sk_lookup_link)  # pinned: the pin holds it
        datapath.pods.clear()  # the pod outlives this process: closing the datapath must not remove it
    except (DatapathError, UnsupportedSpec, OSError) as error:
        raise NodeError(f"ebpf: {error}") from error
    finally:
        datapath.close()


def _ebpf_verify(paths: NodePaths, record: PodRecord, identity: tuple[int, int]) -> list[str]:
    problems = []
    datapath = pinned.open_for_pods(paths)
    try:
        if datapath.adopt_pod(record.netns, *_ebpf_keys(record), None).pod is None:
            problems.append(f"pod {record.id}: no entry of its configuration in the datapath's pods map")
    finally:
        datapath.pods.clear()
        datapath.close()
    link = pinned.pinned_fd(Path(record.pin)) if record.pin else None
    if link is None:
        problems.append(f"pod {record.id}: its sk_lookup link is not pinned at {record.pin}")
    else:
        try:
            info = libbpf.link_info(link)
        finally:
            os.close(link)
        netns_ino = info.target_id & 0xFFFFFFFF  # a netns link's union is {u32 netns_ino, u32 attach_type}
        if info.prog_id == 0 or netns_ino != identity[1]:
            problems.append(f"pod {record.id}: its sk_lookup link is not attached to its network namespace")
    return problems


def _replace(
    paths: NodePaths, current: NodeState, record: PodRecord, spec: CaptureSpec, document: dict, shortcut: bool
) -> None:
    """Switch a captured pod to another spec (or short-circuit) in one step."""
    if record.backend == "ebpf":
        assert record.pin is not None  # recorded with the cookie, by add()
        config = new_config_id()
        datapath = pinned.open_for_pods(paths)
        try:
            datapath.adopt_pod(record.netns, *_ebpf_keys(record), Path(record.pin))
            datapath.update_pod(record.netns, spec, config=config, shortcut=shortcut)
            datapath.pods.clear()
        except (DatapathError, UnsupportedSpec, OSError) as error:
            raise NodeError(f"ebpf: {error}") from error
        finally:
            datapath.close()
        record.config = config
    else:
        record.rules = _rules_replace(record, spec)
    record.spec, record.shortcut = document, shortcut
    node_state.save(paths.state, current)


# -- nftables and iptables: the rules in the pod's namespace ------------------------------------


def _rules_add(backend_name: str, netns: str, spec: CaptureSpec) -> dict:
    backend = get_backend(backend_name)
    try:
        backend.apply(Target(netns), spec)
    except BackendError as error:
        raise NodeError(str(error)) from error
    return backend.record(Target(netns))


def _rules_remove(record: PodRecord) -> None:
    backend = get_backend(record.backend)
    target = Target(record.netns)
    backend.adopt(target, inputs.from_istio_config(record.spec), record.rules)
    backend.remove(target)


def _rules_verify(record: PodRecord) -> list[str]:
    status = get_backend(record.backend).status(Target(record.netns))
    if not (status.get("istio_tables") or status.get("istio_chains")):
        return [f"pod {record.id}: no {record.backend} capture rules in its network namespace"]
    return []


def _rules_replace(record: PodRecord, spec: CaptureSpec) -> dict:
    backend = get_backend(record.backend)
    target = Target(record.netns)
    backend.adopt(target, inputs.from_istio_config(record.spec), record.rules)
    try:
        backend.apply(target, spec)
    except BackendError as error:
        raise NodeError(str(error)) from error
    return backend.record(target)
