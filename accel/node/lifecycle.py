"""accel up, accel down and accel status: load a node's datapath once, remove every trace of it, and
say what is there."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from .. import faults
from ..ebpf import libbpf, probe
from ..ebpf.datapath import read_counters
from ..ebpf.programs import LINKED_PROGRAMS, SHORTCUT
from . import pinned, pods
from . import state as node_state
from .paths import NodeError, NodePaths, bpffs_mounted_at, default_cgroup, mount_bpffs, unmount_bpffs_at
from .state import NodeState

BACKENDS = ("auto", "ebpf", "nftables", "iptables")
MAP_FULL = 0.9  # a map fuller than this makes the node degraded


def version() -> str:
    try:
        return metadata.version("accel")
    except metadata.PackageNotFoundError:
        return "unknown"


def choose(requested: str) -> tuple[str, str]:
    """The backend and why: auto is ebpf when the kernel has everything it needs, else nftables."""
    if requested != "auto":
        return requested, f"{requested}, as asked"
    missing = probe.missing()
    if not missing:
        return "ebpf", "auto: this kernel has every feature the eBPF backend needs (accel probe)"
    return "nftables", (
        "auto: this kernel lacks " + "; ".join(f"{f.name} ({f.detail})" for f in missing) + ", so nftables"
    )


def up(paths: NodePaths, requested: str = "auto") -> dict:
    """Load (or adopt, or upgrade) the node's datapath and reconcile its pods; idempotent."""
    if requested not in BACKENDS:
        raise NodeError(f"--backend {requested}: expected one of {', '.join(BACKENDS)}")
    with node_state.locked(paths.state):
        current = node_state.load(paths.state)
        if current is not None and requested != "auto" and requested != current.backend:
            raise NodeError(f"accel is up here with the {current.backend} backend: run accel down first to change it")
        backend, why = (
            (current.backend, current.why) if current is not None and requested == "auto" else choose(requested)
        )
        if backend == "ebpf":
            missing = probe.missing()
            if missing:
                raise NodeError(
                    "the eBPF backend needs what this kernel lacks: "
                    + "; ".join(f"{f.name} ({f.detail})" for f in missing)
                )
            if paths.cgroup is None:  # not given: where it was, else the kubelet's pod cgroup
                paths = replace(paths, cgroup=Path(current.cgroup) if current and current.cgroup else default_cgroup())
            if current is not None and current.cgroup not in (None, str(paths.cgroup)):
                raise NodeError(
                    f"accel is up here at cgroup {current.cgroup}: run accel down first to move it to {paths.cgroup}"
                )
        node_state.make(paths.state)
        mounted = current.mounted_bpffs if current else False
        report: dict = {"backend": backend, "why": why}
        # finish what killed commands left and drop pods whose namespace is gone, with the datapath
        # that holds them, before it changes
        reconciled = pods.reconcile(paths, current) if current is not None else []
        if backend == "ebpf":
            if bpffs_mounted_at(paths.bpffs) is None:
                mount_bpffs(paths.bpffs)
                mounted = True
            try:
                loaded = pinned.up(paths, current, shortcut=not probe.short_circuit_missing())
            except (NodeError, OSError) as error:
                if current is not None:
                    raise
                # a first load that failed (a map the kernel would not create, a program its
                # verifier refused, a hook it would not attach) leaves nothing; auto takes nftables
                _undo_first_load(paths, mounted)
                if requested != "auto":
                    raise NodeError(f"the eBPF datapath did not load: {error}") from None
                mounted, backend = False, "nftables"
                why = f"auto: the eBPF datapath did not load ({error}), so nftables"
                report = {"backend": backend, "why": why}
        if backend == "ebpf":
            faults.point("up:pinned")
            reconciled += pods.drop_unknown(paths, current)
            if current is not None:
                reconciled += pods.restore(paths, current)
            report.update(
                action=loaded.action,
                programs=loaded.programs,
                links=loaded.links,
                kept=loaded.kept,
                migrated=loaded.migrated,
                swapped=loaded.swapped,
            )
            datapath = {"programs": loaded.programs, "links": loaded.links}
        else:
            report["action"] = "unchanged" if current is not None else "loaded"
            datapath = {}
        if current is None:
            current = NodeState(
                backend,
                why,
                version(),
                str(paths.cgroup) if backend == "ebpf" else None,
                str(paths.bpffs),
                mounted,
                time.time(),
                datapath,
            )
        else:
            current.version, current.datapath, current.mounted_bpffs = version(), datapath, mounted
            current.up_at = time.time()
        node_state.save(paths.state, current)
        report["reconciled"] = reconciled
        return report


def _undo_first_load(paths: NodePaths, mounted: bool) -> None:
    """What a failed first eBPF load made: its pin directories, and the bpffs mount if up made it."""
    shutil.rmtree(paths.pins, ignore_errors=True)
    if mounted:
        unmount_bpffs_at(paths.bpffs)


def down(paths: NodePaths) -> dict:
    """Remove everything accel made on this node: every pod's capture, the links, programs, maps and
    pins, the bpffs mount if `up` made it, and the state directory."""
    with node_state.locked(paths.state):
        damaged = None
        try:
            current = node_state.load(paths.state)
        except NodeError as error:  # what it described is unknown: the pins still go, and with them every eBPF pod
            current, damaged = None, str(error)
        removed_pods = []
        if current is not None:
            for record in list(current.pods.values()):
                record.phase = "removing"
                node_state.save(paths.state, current)
                pods._remove(paths, current, record)
                removed_pods.append(record.id)
            node_state.save(paths.state, current)
        faults.point("down:pods-removed")
        removed_pins = pinned.down(paths) if paths.pins.exists() else []
        faults.point("down:unpinned")
        if current is not None and current.mounted_bpffs:
            unmount_bpffs_at(paths.bpffs)
        shutil.rmtree(paths.state, ignore_errors=True)
    return {
        "pods": removed_pods,
        "pins": removed_pins,
        "state": str(paths.state),
        "was_up": current is not None or damaged is not None,
        **({"damaged_state": damaged} if damaged else {}),
    }


def status(paths: NodePaths) -> tuple[dict, list[str]]:
    """What is loaded and captured, read from the kernel and the state (no lock); and what is wrong
    (empty: healthy)."""
    current = node_state.load(paths.state)
    if current is None:
        problem = f"accel is not up on this node (no state in {paths.state})"
        if pinned.datapath_pinned(paths):
            problem += f", but a datapath is pinned under {paths.pins}: accel up adopts it"
        return {"up": False, "state": str(paths.state)}, [problem]
    problems: list[str] = []
    document = {
        "up": True,
        "backend": current.backend,
        "why": current.why,
        "version": current.version,
        "up_at": current.up_at,
        "cgroup": current.cgroup,
        "state": str(paths.state),
    }
    counters_map = shortcut_map = None
    if current.backend == "ebpf":
        document["pins"] = str(paths.pins)
        links, maps, counters_map = _datapath_status(paths, problems)
        document["links"], document["maps"] = links, maps
        shortcut_map = pinned.pinned_fd(paths.pins / pinned.MAPS / "shortcut_counters")
        if any(r.shortcut for r in current.pods.values()) and not any(
            link["program"] == SHORTCUT.name and link["attached"] for link in links
        ):
            problems.append(
                "pods ask for the short-circuit, but its program is not linked to its map "
                "(their hops go by TCP): run accel up"
            )
    rows: list[dict] = []
    document["pods"] = rows
    for record in sorted(current.pods.values(), key=lambda r: r.id):
        gone = pods.netns_identity(record.netns) != tuple(record.netns_id)
        if gone:
            problems.append(f"pod {record.id}: its network namespace {record.netns} is gone (accel up cleans it)")
        elif record.phase != "ready":
            problems.append(f"pod {record.id}: {record.phase} (a command stopped half-way; accel up finishes it)")
        entry = {
            "id": record.id,
            "name": record.name,
            "netns": record.netns,
            "phase": record.phase,
            "backend": record.backend,
            "sockmap": record.shortcut,
            "spec": record.spec,
            "spec_summary": _summary(record.spec) + (", sockmap" if record.shortcut else ""),
            "namespace_gone": gone,
        }
        if counters_map is not None and record.cookie is not None:
            entry["counters"] = read_counters(counters_map, record.cookie, shortcut_map)
        rows.append(entry)
    for fd in (counters_map, shortcut_map):
        if fd is not None:
            os.close(fd)
    document["problems"] = problems
    return document, problems


def _datapath_status(paths: NodePaths, problems: list[str]):
    """The cgroup links (attached or not) and every map's fill, from the pins."""
    links = []
    for program in LINKED_PROGRAMS:
        pin = paths.pins / pinned.LINKS / program.name
        fd = pinned.pinned_fd(pin)
        if fd is None and program is SHORTCUT:
            continue  # this kernel cannot link it: pods that ask for the short-circuit are refused
        if fd is None:
            problems.append(f"link {program.name}: not pinned at {pin}")
            links.append({"program": program.name, "hook": program.hook, "pin": str(pin), "attached": False})
            continue
        info = libbpf.link_info(fd)
        os.close(fd)
        attached = info.prog_id != 0 and info.target_id != 0
        if not attached:
            problems.append(f"link {program.name}: pinned but detached (its cgroup is gone?)")
        links.append(
            {
                "program": program.name,
                "hook": program.hook,
                "pin": str(pin),
                "id": info.id,
                "program_id": info.prog_id,
                "cgroup_id": info.target_id,
                "attached": attached,
            }
        )
    maps, counters_map = [], None
    for pin in sorted((paths.pins / pinned.MAPS).glob("*")):
        fd = pinned.pinned_fd(pin)
        if fd is None:
            continue
        map_info = libbpf.map_info(fd)
        entries = _entries(fd, map_info)
        fill = entries / map_info.max_entries if entries is not None and map_info.max_entries else None
        if fill is not None and fill > MAP_FULL:
            problems.append(f"map {pin.name}: {entries} of {map_info.max_entries} entries ({fill:.0%})")
        maps.append(
            {
                "name": pin.name,
                "id": map_info.id,
                "entries": entries,
                "capacity": map_info.max_entries or None,
                "fill": round(fill, 4) if fill is not None else None,
            }
        )
        if pin.name == "counters":
            counters_map = fd
        else:
            os.close(fd)
    return links, maps, counters_map


def _entries(fd: int, info) -> int | None:
    """How many entries a map holds; None for socket storage, which cannot be listed."""
    if info.type == libbpf.MAP_SK_STORAGE:
        return None
    return libbpf.map_count(fd, info.key_size)


def _summary(document: dict) -> str:
    """The spec in one short line for a table: ports and mode, what is captured each way, extras."""

    def either(include: str, exclude: str) -> str:
        included, excluded = document.get(include) or "-", document.get(exclude)
        return included + (f" except {excluded}" if excluded else "")

    parts = [
        f"{document.get('ProxyPort')}/{document.get('InboundCapturePort')} {document.get('InboundInterceptionMode')}",
        "out " + either("OutboundIPRangesInclude", "OutboundIPRangesExclude"),
        "in " + either("InboundPortsInclude", "InboundPortsExclude"),
    ]
    parts += [name for key, name in (("RedirectDNS", "dns"), ("EnableIPv6", "ipv6")) if document.get(key)]
    return ", ".join(parts)
