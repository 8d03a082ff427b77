"""The node's eBPF datapath, pinned under <bpffs>/accel/ so that it outlives every accel process.

    <bpffs>/accel/maps/<name>          every map of bpf/accel.h
    <bpffs>/accel/programs/<name>      every program (what the links run; for inspection)
    <bpffs>/accel/links/<name>         the cgroup links, and the short-circuit's link to its map:
                                       while pinned, the programs stay attached
    <bpffs>/accel/pods/<id>/sk_lookup  each pod's sk_lookup link (its own copy of the program)

`up` loads once and pins; run again, it adopts what is pinned: unchanged programs and maps are
kept as they are (same ids), changed programs are swapped into their pinned links with
BPF_LINK_UPDATE (there is no moment without capture), and maps keep their entries when their
layout is unchanged (or a struct only put members where it had padding: see objects.compatible).
A changed layout is migrated where the entries come from the state (a pod's
spec and namespace: written anew before the swap) and refused, naming the map, where they hold
what only the kernel knows (records of live connections, listening sockets, counters).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .. import faults, inputs, userns
from ..ebpf import libbpf, objects
from ..ebpf.compiled import Compiled
from ..ebpf.datapath import Datapath, DatapathError, attach_links
from ..ebpf.follow import read_facts
from ..ebpf.maps import POD_NETNS_PLACEHOLDER, Pod, namespace_entries, pod_entries
from ..ebpf.pod_sockets import register_listeners
from ..ebpf.programs import CGROUP_PROGRAMS, LINKED_PROGRAMS, SHORTCUT, SK_LOOKUP
from .paths import NodeError, NodePaths
from .state import RECORD_FILE, NodeState

MAPS, PROGRAMS, LINKS, PODS = "maps", "programs", "links", "pods"
# Maps whose entries the state describes: a changed layout is migrated by writing them anew.
# `listeners` holds sockets, but the state names their pods: they are found listening again.
DERIVED_MAPS = ("pods", "ports", "groups", "prefixes", "sources", "listeners")


@dataclass
class UpReport:
    action: str  # loaded, unchanged or upgraded
    programs: dict[str, dict] = field(default_factory=dict)  # name -> {"id", "tag"}
    links: dict[str, int] = field(default_factory=dict)  # name -> link id
    kept: list[str] = field(default_factory=list)  # maps kept with their entries
    migrated: list[str] = field(default_factory=list)  # maps written anew from the state
    swapped: list[str] = field(default_factory=list)  # programs swapped into their links
    attached: list[str] = field(default_factory=list)  # programs this accel has and the pinned one had not


def _pin(root: Path, kind: str, name: str) -> Path:
    return root / kind / name


def pinned_fd(path: Path) -> int | None:
    try:
        return libbpf.obj_get(str(path))
    except OSError:
        return None


def _tag(prog_fd: int) -> str:
    return bytes(libbpf.prog_info(prog_fd).tag).hex()


def _attached_tag(link_fd: int) -> str:
    """The tag of the program a link runs now."""
    prog_fd = libbpf.prog_get_fd_by_id(libbpf.link_info(link_fd).prog_id)
    try:
        return _tag(prog_fd)
    finally:
        os.close(prog_fd)


def up(paths: NodePaths, state: NodeState | None, shortcut: bool = True) -> UpReport:
    """Load, adopt or upgrade the pinned datapath (see the module's docstring). `shortcut`: the
    kernel can link the short-circuit's program (else pods cannot ask for it)."""
    root = paths.pins
    root.mkdir(mode=0o700, exist_ok=True)
    root.chmod(0o700)  # the names of what is pinned are root's business too
    for kind in (MAPS, PROGRAMS, LINKS, PODS):
        (root / kind).mkdir(mode=0o700, exist_ok=True)
    pinned_maps: dict[str, int] = {}
    migrating: list[str] = []

    def adopt(name: str, layout: dict) -> int | None:
        fd = pinned_fd(_pin(root, MAPS, name))
        if fd is None:
            return None
        pinned_maps[name] = fd
        if objects.compatible(objects.layout_of_map(fd), layout):
            return fd
        if name in DERIVED_MAPS:
            migrating.append(name)
            return None
        raise NodeError(
            f"map {name}: this accel lays it out otherwise than the pinned one, and its entries (what "
            f"only the kernel knows) cannot be carried over: upgrade with an accel that keeps its layout, "
            f"or run accel down and accel up (live connections then lose their records)"
        )

    try:
        compiled = Compiled.load(adopt)
    except DatapathError as error:
        raise NodeError(str(error)) from error
    finally:
        for fd in pinned_maps.values():
            os.close(fd)
    report = UpReport("loaded")
    faults.point("up:loaded")
    try:
        linked = LINKED_PROGRAMS if shortcut else CGROUP_PROGRAMS
        links = {program.name: pinned_fd(_pin(root, LINKS, program.name)) for program in linked}
        try:
            if all(links[program.name] is not None for program in CGROUP_PROGRAMS):
                # A datapath pinned by an accel without the short-circuit: its program is linked now.
                for program in linked:
                    if links[program.name] is None:
                        links[program.name] = _link_to_map(compiled, root, program.name)
                        report.attached.append(program.name)
                held = _every_one_open(links)
                changed = [name for name, fd in held.items() if _attached_tag(fd) != _tag(compiled.programs[name])]
                if not changed and not migrating and not report.attached:
                    report.action = "unchanged"
                    report.links = {name: libbpf.link_info(fd).id for name, fd in held.items()}
                    report.programs = {name: _pinned_program(root, name) for name in compiled.programs}
                    report.kept = sorted(compiled.maps)
                    # the same instructions, but perhaps from a newer accel whose commands read
                    # the record with its own mirrors: it describes what this accel compiled
                    objects.save_record(compiled.objects, paths.state / RECORD_FILE)
                    return report
                report.action = "upgraded"
                _migrate(compiled, migrating, state)
                _register_listeners(compiled, state)
                # Receivers before senders: each pod's sk_lookup, then the programs that take a
                # connection over, then connect, so that no connection is steered where no
                # program of its version is waiting for it. Each swap is one step.
                for record in state.pods.values() if state else ():
                    if record.pin and record.cookie is not None:
                        _swap_sk_lookup(compiled, Path(record.pin), record.cookie)
                for name, fd in sorted(held.items(), key=lambda item: item[0].startswith("connect")):
                    libbpf.link_update(fd, compiled.programs[name])
                    report.swapped.append(name)
                _register_listeners(compiled, state)  # any that began listening meanwhile
            else:  # nothing attached yet (or a first `up` that died half-way): attach, then pin
                for link in links.values():
                    if link is not None:
                        libbpf.link_detach(link)
                assert paths.cgroup is not None  # lifecycle.up() resolved it for the eBPF backend
                fresh = attach_links(compiled, paths.cgroup)
                faults.point("up:attached")
                for name, fd in fresh.items():
                    path = _pin(root, LINKS, name)
                    path.unlink(missing_ok=True)
                    libbpf.obj_pin(fd, str(path))
                    os.close(fd)
                stale = links.get(SHORTCUT.name)
                if stale is not None:
                    os.close(stale)
                _pin(root, LINKS, SHORTCUT.name).unlink(missing_ok=True)
                links = {program.name: pinned_fd(_pin(root, LINKS, program.name)) for program in CGROUP_PROGRAMS}
                if shortcut:
                    links[SHORTCUT.name] = _link_to_map(compiled, root, SHORTCUT.name)
                held = _every_one_open(links)
            report.links = {name: libbpf.link_info(fd).id for name, fd in held.items()}
        finally:
            for link in links.values():
                if link is not None:
                    os.close(link)
        for name, definition in compiled.objects.maps.items():
            if not definition["adopted"]:
                _repin(definition["fd"], _pin(root, MAPS, name))
        for name, fd in compiled.programs.items():
            _repin(fd, _pin(root, PROGRAMS, name))
            report.programs[name] = {"id": libbpf.prog_info(fd).id, "tag": _tag(fd)}
        report.kept = sorted(n for n, d in compiled.objects.maps.items() if d["adopted"])
        report.migrated = sorted(migrating)
        objects.save_record(compiled.objects, paths.state / RECORD_FILE)
        return report
    finally:
        compiled.close()


def _every_one_open(links: dict[str, int | None]) -> dict[str, int]:
    """The links by name, once each is open (found pinned, or attached and pinned just now)."""
    missing = [name for name, fd in links.items() if fd is None]
    assert not missing, f"links not pinned: {missing}"
    return {name: fd for name, fd in links.items() if fd is not None}


def _link_to_map(compiled: Compiled, root: Path, name: str) -> int:
    """Link the short-circuit's program to its map and pin the link; its descriptor."""
    fd = compiled.attach_shortcut()
    try:
        libbpf.obj_pin(fd, str(_pin(root, LINKS, name)))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pinned_program(root: Path, name: str) -> dict:
    fd = libbpf.obj_get(str(_pin(root, PROGRAMS, name)))
    try:
        return {"id": libbpf.prog_info(fd).id, "tag": _tag(fd)}
    finally:
        os.close(fd)


def _repin(fd: int, path: Path) -> None:
    path.unlink(missing_ok=True)
    libbpf.obj_pin(fd, str(path))


def _migrate(compiled: Compiled, names: list[str], state: NodeState | None) -> None:
    """Write the state's pods into maps made anew (their layout changed), before any program uses them."""
    if not names or state is None:
        return
    datapath = Datapath(compiled)
    for record in state.pods.values():
        if record.backend != "ebpf" or record.phase != "ready" or record.cookie is None:
            continue
        assert record.config is not None  # recorded with the cookie, by pods.add()
        spec = inputs.from_istio_config(record.spec)
        entries = pod_entries(spec, record.config, userns.id_map(record.netns))
        datapath.write_spec(entries)
        try:
            facts = read_facts(record.netns)
        except OSError:
            continue  # the namespace is gone: reconciling removes the pod
        datapath.write_namespace(None, namespace_entries(record.cookie, list(facts.local), list(facts.sources)))
        datapath.write_pod(record.cookie, entries.pod)


def _register_listeners(compiled: Compiled, state: NodeState | None) -> None:
    """Put the state's pods' proxy listeners that listen already into the listener map (a map
    made anew is empty; sockops only sees a socket when it starts listening)."""
    for record in state.pods.values() if state else ():
        if record.backend != "ebpf" or record.phase != "ready" or record.cookie is None:
            continue
        pod = libbpf.map_lookup(compiled.maps["pods"], ctypes.c_uint64(record.cookie), Pod)
        if pod is None:
            continue
        try:
            register_listeners(compiled.maps["listeners"], record.netns, record.cookie, pod)
        except OSError:
            continue  # the namespace is gone: reconciling removes the pod


def _swap_sk_lookup(compiled: Compiled, pin: Path, cookie: int) -> None:
    link = pinned_fd(pin)
    if link is None:
        return
    program = compiled.objects.copy(SK_LOOKUP.name, {POD_NETNS_PLACEHOLDER: cookie})
    try:
        libbpf.link_update(link, program)
    except OSError as error:
        if error.errno != errno.ENOLINK:  # its namespace is gone: nothing to swap, the pod is cleaned
            raise
    finally:
        os.close(program)
        os.close(link)


def open_for_pods(paths: NodePaths) -> Datapath:
    """The pinned maps, with the programs a pod change needs (its sk_lookup copy), from the record
    `up` saved: a short-lived command changes pods without compiling or loading anything else."""
    root = paths.pins
    opened: list[int] = []

    def adopt(name: str, layout: dict) -> int | None:
        fd = pinned_fd(_pin(root, MAPS, name))
        if fd is None:
            raise NodeError(f"map {name} is not pinned under {root}: run accel up")
        opened.append(fd)
        if not objects.compatible(objects.layout_of_map(fd), layout):
            raise NodeError(f"map {name} under {root} is not the one accel up loaded: run accel up")
        return fd

    try:
        compiled = Compiled.from_record(paths.state / RECORD_FILE, adopt, load_programs=False)
        return Datapath(compiled, release=compiled.close)  # its close() closes the maps' descriptors
    except DatapathError as error:
        raise NodeError(str(error)) from error
    finally:
        for fd in opened:
            os.close(fd)


def datapath_pinned(paths: NodePaths) -> bool:
    """Whether the datapath's maps are pinned (if not, nothing of its pods is in the kernel)."""
    return (paths.pins / MAPS / "pods").exists()


def pod_pin(paths: NodePaths, pod_id: str) -> Path:
    directory = paths.pins / PODS / pod_id
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory / "sk_lookup"


def remove_pod_pins(paths: NodePaths, pod_id: str) -> None:
    shutil.rmtree(paths.pins / PODS / pod_id, ignore_errors=True)


def down(paths: NodePaths) -> list[str]:
    """Detach and unpin everything under <bpffs>/accel/ (pods are removed before): what was removed."""
    root, removed = paths.pins, []
    for path in sorted((root / LINKS).glob("*")) + sorted((root / PODS).glob("*/sk_lookup")):
        fd = pinned_fd(path)
        if fd is not None:
            try:
                libbpf.link_detach(fd)  # at once, whoever else still holds the link
            except OSError:
                pass  # already detached (its cgroup or namespace is gone)
            os.close(fd)
        path.unlink(missing_ok=True)
        removed.append(str(path.relative_to(root)))
    for kind in (PROGRAMS, MAPS):
        for path in sorted((root / kind).glob("*")):
            path.unlink()
            removed.append(str(path.relative_to(root)))
    shutil.rmtree(root, ignore_errors=True)
    return removed
