"""The eBPF datapath: the programs (compiled once per node, see objects.py), attached at one
cgroup with bpf_links; meshed pods are entries in its maps plus one sk_lookup link in each pod's
namespace.

Everything lives as long as its file descriptors: closing the links detaches the programs, and
when the last datapath of the process is closed the compiled programs and maps are released, so
nothing of accel stays in the kernel. (Pinning, for a datapath that outlives the process, is the
node agent's business.)
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .. import process
from ..cgroup import Cgroup
from ..process import in_netns
from ..spec import CaptureSpec
from . import libbpf, objects
from .maps import MIRRORS, AF_INET, AF_INET6, ListenerKey, PodEntries, pod_entries

BPF_DIR = Path(os.environ.get("ACCEL_BPF_DIR", Path(__file__).resolve().parents[2] / "bpf"))
# The compilation unit, in order: the map readers first (bcc rewrites map access only in the
# main source), then one file per hook family.
SOURCES = ("config.c", "connect.c", "sockops.c", "sockopt.c", "peername.c", "inbound.c", "dns.c")
# program -> (program type, attach type)
CGROUP_PROGRAMS = {
    "connect4": (libbpf.PROG_CGROUP_SOCK_ADDR, libbpf.ATTACH_INET4_CONNECT),
    "connect6": (libbpf.PROG_CGROUP_SOCK_ADDR, libbpf.ATTACH_INET6_CONNECT),
    "sendmsg4": (libbpf.PROG_CGROUP_SOCK_ADDR, libbpf.ATTACH_UDP4_SENDMSG),
    "sendmsg6": (libbpf.PROG_CGROUP_SOCK_ADDR, libbpf.ATTACH_UDP6_SENDMSG),
    "recvmsg4": (libbpf.PROG_CGROUP_SOCK_ADDR, libbpf.ATTACH_UDP4_RECVMSG),
    "recvmsg6": (libbpf.PROG_CGROUP_SOCK_ADDR, libbpf.ATTACH_UDP6_RECVMSG),
    "getpeername4": (libbpf.PROG_CGROUP_SOCK_ADDR, libbpf.ATTACH_INET4_GETPEERNAME),
    "getpeername6": (libbpf.PROG_CGROUP_SOCK_ADDR, libbpf.ATTACH_INET6_GETPEERNAME),
    "getsockopt": (libbpf.PROG_CGROUP_SOCKOPT, libbpf.ATTACH_CGROUP_GETSOCKOPT),
    "sockops": (libbpf.PROG_SOCK_OPS, libbpf.ATTACH_CGROUP_SOCK_OPS),
}
SK_LOOKUP_PROGRAM = "inbound"
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
        programs = {**CGROUP_PROGRAMS, SK_LOOKUP_PROGRAM: (libbpf.PROG_SK_LOOKUP, libbpf.ATTACH_SK_LOOKUP)}
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
        """accel/ebpf/maps.py mirrors bpf/accel.h: refuse to run if they drifted apart."""
        for name, (key_type, value_type) in MIRRORS.items():
            definition = self.objects.maps[name]
            sizes = (definition["key_size"], definition["value_size"])
            if sizes != (ctypes.sizeof(key_type), ctypes.sizeof(value_type)):
                raise DatapathError(f"map {name}: bpf/accel.h has key/value sizes {sizes}, accel/ebpf/maps.py "
                                    f"{(ctypes.sizeof(key_type), ctypes.sizeof(value_type))}")

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
    entries: PodEntries
    sk_lookup_link: int | None
    listeners: list[int] = field(default_factory=list)  # address families registered


class Datapath:
    """The programs attached at one cgroup (a node's, or a lab's), serving every pod below it."""

    def __init__(self, cgroup: Cgroup):
        self.cgroup = cgroup
        self.compiled = _Compiled.acquire()
        self.links: dict[str, int] = {}
        self.pods: dict[str, PodHandle] = {}
        try:
            fd = os.open(cgroup.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for name, (_, attach) in CGROUP_PROGRAMS.items():
                    self.links[name] = libbpf.link_create(self.compiled.programs[name], fd, attach)
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
        """Mesh the pod in network namespace `netns`: map entries, then its sk_lookup link, then
        its proxy's inbound listener if it already listens. Undone entirely if a step fails."""
        if netns in self.pods:
            raise DatapathError(f"{netns} is already meshed by this datapath")
        cookie, local, addresses = _namespace_facts(netns)
        entries = pod_entries(spec, cookie, local, addresses)
        handle = PodHandle(netns, entries, None)
        self.pods[netns] = handle
        try:
            self._write(entries)
            if spec.captures_inbound:
                fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
                try:
                    handle.sk_lookup_link = libbpf.link_create(self.compiled.programs[SK_LOOKUP_PROGRAM], fd,
                                                               libbpf.ATTACH_SK_LOOKUP)
                finally:
                    os.close(fd)
                handle.listeners = self.register_listeners(netns, spec.inbound_capture_port)
        except BaseException:
            self.remove_pod(netns)
            raise
        return handle

    def remove_pod(self, netns: str) -> None:
        handle = self.pods.pop(netns, None)
        if handle is None:
            return
        if handle.sk_lookup_link is not None:
            os.close(handle.sk_lookup_link)
        maps, entries = self.compiled.maps, handle.entries
        for family in (AF_INET, AF_INET6):
            libbpf.map_delete(maps["listeners"], ListenerKey(netns=entries.netns, family=family))
        for key in entries.ports:
            libbpf.map_delete(maps["ports"], key)
        for key in entries.groups:
            libbpf.map_delete(maps["groups"], key)
        for key in entries.prefixes:
            libbpf.map_delete(maps["prefixes"], key)
        for key in entries.addresses:
            libbpf.map_delete(maps["pod_addresses"], key)
        libbpf.map_delete(maps["pods"], ctypes.c_uint64(entries.netns))

    def _write(self, entries: PodEntries) -> None:
        maps, present = self.compiled.maps, ctypes.c_uint8(1)
        for key in entries.ports:
            libbpf.map_update(maps["ports"], key, present)
        for key in entries.groups:
            libbpf.map_update(maps["groups"], key, present)
        for key in entries.prefixes:
            libbpf.map_update(maps["prefixes"], key, present)
        for key in entries.addresses:
            libbpf.map_update(maps["pod_addresses"], key, ctypes.c_uint64(entries.netns))
        libbpf.map_update(maps["pods"], ctypes.c_uint64(entries.netns), entries.pod)  # last: now it is meshed

    def register_listeners(self, netns: str, port: int) -> list[int]:
        """Put the pod's proxy inbound listeners (IPv4 and IPv6) into the listener map. Listeners
        that appear later are registered by the sockops program when they listen()."""
        cookie = self.pods[netns].entries.netns
        registered = []
        for family, inode in in_netns(netns, _listening_sockets, port):
            owner = _socket_owner(netns, inode)
            if owner is None:
                continue
            fd = libbpf.pidfd_getfd(*owner)
            try:
                libbpf.map_update(self.compiled.maps["listeners"], ListenerKey(netns=cookie, family=family),
                                  ctypes.c_uint32(fd))
            finally:
                os.close(fd)
            registered.append(family)
        return registered

    def prefix_entries(self, netns: str) -> int:
        """The pod's entries in the prefix trie, counted in the kernel's map."""
        from .maps import PrefixKey

        cookie = self.pods[netns].entries.netns.to_bytes(8, sys.byteorder)
        return sum(bytes(key.netns) == cookie for key in libbpf.map_keys(self.compiled.maps["prefixes"], PrefixKey))

    def origins_in_flight(self) -> int:
        """Entries in the 4-tuple map: connections between apps and proxies right now."""
        from .maps import Tuple

        return len(libbpf.map_keys(self.compiled.maps["tuple_origins"], Tuple))


# -- facts about a pod's namespace, read from inside it ---------------------------------------

def _netns_cookie() -> int:
    """The cookie of the calling thread's network namespace, as bpf_get_netns_cookie() gives it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        return struct.unpack("Q", probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def _namespace_facts(netns: str):
    """(netns cookie, local routes, the pod's addresses): the local routes are what the pod
    sends out by lo; the addresses are how others reach it."""
    def ip_json(*argv):
        result = process.run(["ip", "-j", *argv], netns=netns)
        if result.returncode != 0:
            raise DatapathError(f"ip {' '.join(argv)} in {netns}: {result.stderr.strip()}")
        return json.loads(result.stdout or "[]")

    local = [f"{r['dst']}" if "/" in r["dst"] else f"{r['dst']}/{128 if ':' in r['dst'] else 32}"
             for family in ("-4", "-6") for r in ip_json(family, "route", "show", "table", "local")
             if r.get("type") == "local"]
    addresses = []
    for link in ip_json("addr", "show"):
        for entry in link.get("addr_info", []):
            address = ipaddress.ip_address(entry["local"])
            if not (address.is_loopback or address.is_link_local or str(address) == "::6"):
                addresses.append(address)
    return in_netns(netns, _netns_cookie), local, addresses


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


def _socket_owner(netns: str, inode: int) -> tuple[int, int] | None:
    """(pid, fd) of a process in the namespace holding the socket with this inode."""
    namespace = os.stat(f"/run/netns/{netns}").st_ino
    target = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != namespace:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return int(pid), int(fd)
        except OSError:
            continue
    return None
