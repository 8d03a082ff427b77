"""The eBPF datapath: the programs (compiled once per node, see objects.py), attached at one
cgroup with bpf_links; meshed pods are entries in its maps plus one sk_lookup link in each pod's
namespace (with its own copy of the sk_lookup program, which cannot ask for its namespace).

Everything lives as long as its file descriptors: closing the links detaches the programs, and
when the last datapath of the process is closed the compiled programs and maps are released, so
nothing of accel stays in the kernel. (Pinning, for a datapath that outlives the process, is the
node agent's business.)
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .. import userns
from ..cgroup import Cgroup
from ..process import in_netns
from ..spec import CaptureSpec
from . import btf, libbpf, objects
from .follow import Follower, NamespaceFacts
from .programs import CGROUP_PROGRAMS, PROGRAMS, SK_LOOKUP
from .maps import (AF_INET, AF_INET6, COUNTERS, IN_CAPTURE, MIRRORS, POD_NETNS_PLACEHOLDER, Counters, ListenerKey,
                   NamespaceEntries, PodEntries, PrefixKey, Tuple, namespace_entries, new_config_id, pod_entries)

BPF_DIR = Path(os.environ.get("ACCEL_BPF_DIR", Path(__file__).resolve().parents[2] / "bpf"))
# The compilation unit, in order: the map readers first (bcc rewrites map access only in the
# main source), then one file per hook family.
SOURCES = ("lookups.c", "connect.c", "sockops.c", "sockopt.c", "peername.c", "inbound.c", "dns.c")
SO_NETNS_COOKIE = 71
TCP_LISTEN = 0x0A


class DatapathError(RuntimeError):
    pass


def source_text() -> str:
    return "".join((BPF_DIR / name).read_text() for name in SOURCES)


class _Compiled:
    """The programs and maps, shared by the process's datapaths; compiled once per node (see
    objects.py) and loaded once per process."""

    _lock = threading.Lock()
    _instance: _Compiled | None = None
    _users = 0

    def __init__(self):
        programs = {p.name: (p.prog_type, p.attach_type) for p in PROGRAMS}
        try:
            self.objects = objects.load(source_text(), programs, BPF_DIR, ("-Wno-unused-function",))
        except objects.ObjectsError as error:
            raise DatapathError(str(error)) from error
        except OSError as error:
            raise DatapathError(f"loading the datapath: {error}") from error
        try:
            self.programs = self.objects.programs
            self.maps = {name: self.objects.map_fd(name) for name in (*MIRRORS, "listeners")}
            self._check_mirrors()
        except BaseException:
            self.objects.close()
            raise

    def _check_mirrors(self):
        """accel/ebpf/maps.py mirrors bpf/accel.h: refuse to run if they drifted apart, member by
        member, as the compiler laid the structs out (the object's BTF)."""
        problems = []
        for name, mirrors in MIRRORS.items():
            definition = self.objects.maps[name]
            blob = self.objects.btf.get(definition["btf"] or "")
            if blob is None:
                problems.append(f"map {name}: no BTF in the compiled object")
                continue
            types = btf.Btf(blob)
            for side, type_id, mirror in zip(("key", "value"), (definition["btf_key_type_id"],
                                                                definition["btf_value_type_id"]), mirrors):
                problems += [f"map {name} {side}: {p}" for p in btf.mismatches(types, type_id, mirror)]
        if problems:
            raise DatapathError("bpf/accel.h and accel/ebpf/maps.py differ: " + "; ".join(problems))

    @classmethod
    def acquire(cls) -> _Compiled:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            cls._users += 1
            return cls._instance

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0 and cls._instance is not None:
                cls._instance.objects.close()
                cls._instance = None


@dataclass
class PodHandle:
    netns: str
    cookie: int
    entries: PodEntries
    namespace: NamespaceEntries
    follower: Follower
    sk_lookup_link: int | None = None
    listeners: list[int] = field(default_factory=list)  # address families registered


class Datapath:
    """The programs attached at one cgroup (a node's, or a lab's), serving every pod below it."""

    def __init__(self, cgroup: Cgroup):
        self.cgroup = cgroup
        self.compiled = _Compiled.acquire()
        self.links: dict[str, int] = {}
        self.pods: dict[str, PodHandle] = {}
        self._lock = threading.Lock()  # the followers write beside the caller
        try:
            fd = os.open(cgroup.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for program in CGROUP_PROGRAMS:
                    self.links[program.name] = libbpf.link_create(self.compiled.programs[program.name], fd,
                                                                  program.attach_type)
            finally:
                os.close(fd)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Detach everything (pods first), and release the programs if no one else uses them."""
        for netns in list(self.pods):
            self.remove_pod(netns)
        for fd in self.links.values():
            os.close(fd)
        self.links.clear()
        if self.compiled is not None:
            self.compiled = None
            _Compiled.release()

    # -- pods -------------------------------------------------------------------------------

    def add_pod(self, netns: str, spec: CaptureSpec) -> PodHandle:
        """Mesh the pod in network namespace `netns` (a name in /run/netns or a path). Everything
        is written before the pod's entry in `pods`, whose write makes it meshed in one step; the
        sk_lookup link passes everything until then. Undone entirely if a step fails."""
        if netns in self.pods:
            raise DatapathError(f"{netns} is already meshed by this datapath")
        cookie = in_netns(netns, _netns_cookie)
        entries = pod_entries(spec, new_config_id(), userns.id_map(netns))
        follower = Follower(netns, lambda facts: self._follow(netns, facts))
        handle = PodHandle(netns, cookie, entries, namespace_entries(cookie, list(follower.facts.local),
                                                                     list(follower.facts.sources)), follower)
        self.pods[netns] = handle
        maps = self.compiled.maps
        try:
            self._write_namespace(None, handle.namespace)
            libbpf.map_update(maps["counters"], ctypes.c_uint64(cookie), (Counters * libbpf.possible_cpus())())
            self._write_spec(entries)
            handle.sk_lookup_link = self._attach_sk_lookup(netns, cookie)
            handle.listeners = self.register_listeners(netns)  # those listening already: no refusal window
            libbpf.map_update(maps["pods"], ctypes.c_uint64(cookie), entries.pod)  # now it is meshed
            handle.listeners = self.register_listeners(netns)  # and any that began listening meanwhile
            follower.start()
        except BaseException:
            self.remove_pod(netns)
            raise
        return handle

    def update_pod(self, netns: str, spec: CaptureSpec) -> None:
        """Change a meshed pod's spec in one step: the new configuration's lists are written beside
        the old ones, then one update of the pod's entry switches every program to them."""
        handle = self.pods[netns]
        entries = pod_entries(spec, new_config_id(), userns.id_map(netns))
        try:
            self._write_spec(entries)
            libbpf.map_update(self.compiled.maps["pods"], ctypes.c_uint64(handle.cookie), entries.pod)
        except BaseException:
            self._delete_spec(entries)
            raise
        old, handle.entries = handle.entries, entries
        self._delete_spec(old)
        handle.listeners = self.register_listeners(netns)

    def remove_pod(self, netns: str) -> None:
        """Unmesh the pod in one step (its entry in `pods` goes first), then clear the rest."""
        handle = self.pods.pop(netns, None)
        if handle is None:
            return
        maps = self.compiled.maps
        libbpf.map_delete(maps["pods"], ctypes.c_uint64(handle.cookie))
        handle.follower.stop()
        if handle.sk_lookup_link is not None:
            os.close(handle.sk_lookup_link)
        for family in (AF_INET, AF_INET6):
            libbpf.map_delete(maps["listeners"], ListenerKey(netns=handle.cookie, family=family))
        self._delete_spec(handle.entries)
        with self._lock:
            self._delete_namespace(handle.namespace)
        libbpf.map_delete(maps["counters"], ctypes.c_uint64(handle.cookie))

    def _write_spec(self, entries: PodEntries) -> None:
        maps, present = self.compiled.maps, ctypes.c_uint8(1)
        for name, keys in (("ports", entries.ports), ("groups", entries.groups), ("prefixes", entries.prefixes)):
            for key in keys:
                libbpf.map_update(maps[name], key, present)

    def _delete_spec(self, entries: PodEntries) -> None:
        maps = self.compiled.maps
        for name, keys in (("ports", entries.ports), ("groups", entries.groups), ("prefixes", entries.prefixes)):
            for key in keys:
                libbpf.map_delete(maps[name], key)

    def _write_namespace(self, old: NamespaceEntries | None, new: NamespaceEntries) -> None:
        """New local routes first, then the sources, then what is gone: a destination that stays
        local is local throughout."""
        maps, present = self.compiled.maps, ctypes.c_uint8(1)
        before = {bytes(key): key for key in old.local} if old else {}
        after = {bytes(key) for key in new.local}
        for key in new.local:
            if bytes(key) not in before:
                libbpf.map_update(maps["prefixes"], key, present)
        libbpf.map_update(maps["sources"], ctypes.c_uint64(new.netns), new.sources)
        for raw, key in before.items():
            if raw not in after:
                libbpf.map_delete(maps["prefixes"], key)

    def _delete_namespace(self, entries: NamespaceEntries) -> None:
        for key in entries.local:
            libbpf.map_delete(self.compiled.maps["prefixes"], key)
        libbpf.map_delete(self.compiled.maps["sources"], ctypes.c_uint64(entries.netns))

    def _follow(self, netns: str, facts: NamespaceFacts) -> None:
        """A follower saw the namespace change: rewrite its facts."""
        with self._lock:
            handle = self.pods.get(netns)
            if handle is None:
                return
            entries = namespace_entries(handle.cookie, list(facts.local), list(facts.sources))
            self._write_namespace(handle.namespace, entries)
            handle.namespace = entries

    def synced(self, netns: str) -> bool:
        """Whether the pod's namespace facts in the maps are the namespace's facts now."""
        return self.pods[netns].follower.synced()

    def _attach_sk_lookup(self, netns: str, cookie: int) -> int:
        program = self.compiled.objects.copy(SK_LOOKUP.name, {POD_NETNS_PLACEHOLDER: cookie})
        try:
            fd = os.open(userns.netns_path(netns), os.O_RDONLY)
            try:
                return libbpf.link_create(program, fd, SK_LOOKUP.attach_type)
            finally:
                os.close(fd)
        finally:
            os.close(program)  # the link holds the program

    def register_listeners(self, netns: str) -> list[int]:
        """Put the proxy's inbound listeners (IPv4 and IPv6) into the listener map: sockets on the
        inbound port held by a process of the proxy's uids or gids, the test sockops applies when a
        socket starts listening later."""
        handle = self.pods[netns]
        pod = handle.entries.pod
        if not pod.flags & IN_CAPTURE:
            return []
        uids, gids = set(pod.uids[:pod.n_uids]), set(pod.gids[:pod.n_gids])
        registered = []
        for family, inode in in_netns(netns, _listening_sockets, pod.inbound_port):
            for pid, fd, uid, gid in _socket_holders(netns, inode):
                if uid not in uids and gid not in gids:
                    continue
                copy = libbpf.pidfd_getfd(pid, fd)
                try:
                    libbpf.map_update(self.compiled.maps["listeners"], ListenerKey(netns=handle.cookie, family=family),
                                      ctypes.c_uint32(copy))
                finally:
                    os.close(copy)
                registered.append(family)
                break
        return sorted(set(registered))

    # -- what the kernel holds ----------------------------------------------------------------

    def counters(self, netns: str) -> dict[str, int]:
        """The pod's counters, summed over the CPUs."""
        per_cpu = libbpf.map_lookup(self.compiled.maps["counters"], ctypes.c_uint64(self.pods[netns].cookie),
                                    Counters * libbpf.possible_cpus())
        return {name: sum(getattr(cpu, name) for cpu in per_cpu) if per_cpu else 0 for name in COUNTERS}

    def prefix_entries(self, netns: str) -> int:
        """The pod's spec entries in the prefix trie, counted in the kernel's map."""
        owner = self.pods[netns].entries.config.to_bytes(8, sys.byteorder)
        return sum(bytes(key.owner) == owner for key in libbpf.map_keys(self.compiled.maps["prefixes"], PrefixKey))

    def handoffs_in_flight(self) -> int:
        """Records between an app's SYN and its proxy's side of the connection, node-wide."""
        return len(libbpf.map_keys(self.compiled.maps["handoffs"], Tuple))



# -- facts about a pod's namespace, read from inside it ---------------------------------------

def _netns_cookie() -> int:
    """The cookie of the calling thread's network namespace, as bpf_get_netns_cookie() gives it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        return struct.unpack("Q", probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def _listening_sockets(port: int) -> list[tuple[int, int]]:
    """(family, socket inode) of TCP sockets listening on `port`, in this thread's namespace."""
    found = []
    for family, table in ((AF_INET, "tcp"), (AF_INET6, "tcp6")):
        try:
            lines = Path(f"/proc/thread-self/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and int(fields[3], 16) == TCP_LISTEN:
                found.append((family, int(fields[9])))
    return found


def _socket_holders(netns: str, inode: int):
    """(pid, fd, real uid, real gid) of processes in the namespace holding the socket with this
    inode; the ids as the node sees them."""
    namespace = os.stat(userns.netns_path(netns)).st_ino
    target = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != namespace:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                                  if ":" in line)
                    yield int(pid), int(fd), int(status["Uid"].split()[0]), int(status["Gid"].split()[0])
                    break
        except OSError:
            continue
