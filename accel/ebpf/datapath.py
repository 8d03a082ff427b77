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
import errno
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .. import faults, userns
from ..cgroup import Cgroup
from ..pod_routing import ALREADY, GONE, passthrough
from ..process import run
from ..spec import CaptureSpec
from . import libbpf
from .compiled import Compiled, DatapathError, SharedCompiled
from .follow import Follower, NamespaceFacts
from .maps import (
    AF_INET,
    AF_INET6,
    COUNTERS,
    POD_NETNS_PLACEHOLDER,
    PREFIX_LOCAL,
    PREFIX_V6,
    SHORTCUT_COUNTERS,
    Counters,
    GroupKey,
    ListenerKey,
    NamespaceEntries,
    Pod,
    PodEntries,
    PortKey,
    PrefixKey,
    ShortcutCounters,
    Sources,
    Tuple,
    namespace_entries,
    new_config_id,
    pod_entries,
)
from .maps import (
    IPV6 as IPV6_FLAG,
)
from .maps import (
    SHORTCUT as SHORTCUT_FLAG,
)
from .pod_sockets import netns_cookie, register_listeners
from .programs import CGROUP_PROGRAMS, SK_LOOKUP


@dataclass
class PodHandle:
    """A meshed pod as the datapath knows it: enough to change or remove it, also from another
    process (cookie, config id, netns and the pin of its sk_lookup link are all a node records)."""

    netns: str
    cookie: int
    config: int
    namespace: NamespaceEntries | None = None
    follower: Follower | None = None
    sk_lookup_link: int | None = None
    pin: Path | None = None  # where its sk_lookup link is pinned, on a node
    pod: Pod | None = None  # its entry in `pods`, once written
    shortcut: bool = False  # its app <-> proxy hops are short-circuited


class Datapath:
    """Programs and maps (`compiled`) and the links that attach them at one cgroup (a node's, or a
    lab's), serving every pod below it. A lab's datapath attaches its own links and lives as long
    as the process; a node's is opened from its pins by each short-lived accel command."""

    def __init__(
        self, compiled: Compiled, links: dict[str, int] | None = None, cgroup: Cgroup | None = None, release=None
    ):
        self.compiled, self.cgroup, self._release = compiled, cgroup, release
        self.links: dict[str, int] = links or {}
        self.pods: dict[str, PodHandle] = {}
        self._lock = threading.Lock()  # the followers write beside the caller

    @classmethod
    def attach(cls, cgroup: Cgroup) -> Datapath:
        """The process's shared programs, attached at `cgroup` with links of this datapath's own."""
        datapath = cls(SharedCompiled.acquire(), cgroup=cgroup, release=SharedCompiled.release)
        try:
            datapath.links = attach_links(datapath.compiled, cgroup.path)
        except BaseException:
            datapath.close()
            raise
        return datapath

    def close(self) -> None:
        """Detach everything (pods first), and release the programs if no one else uses them."""
        for netns in list(self.pods):
            self.remove_pod(netns)
        for fd in self.links.values():
            os.close(fd)
        self.links.clear()
        if self._release is not None:
            self._release()
            self._release = None

    # -- pods -------------------------------------------------------------------------------

    def add_pod(
        self,
        netns: str,
        spec: CaptureSpec,
        *,
        follow: bool = True,
        pin: Path | None = None,
        config: int | None = None,
        shortcut: bool = False,
    ) -> PodHandle:
        """Mesh the pod in network namespace `netns` (a name in /run/netns or a path). Everything
        is written before the pod's entry in `pods`, whose write makes it meshed in one step; the
        sk_lookup link passes everything until then. Undone entirely if a step fails. `follow`:
        keep its local routes and addresses in step from a thread of this process; `pin`: pin
        its sk_lookup link there (a node's pod outlives this process); `config`: the id of its
        lists (a node records it before writing them, to find them again if this process dies);
        `shortcut`: short-circuit its app <-> proxy hops (bpf/shortcut.c)."""
        if netns in self.pods:
            raise DatapathError(f"{netns} is already meshed by this datapath")
        cookie = netns_cookie(netns)
        entries = pod_entries(spec, config or new_config_id(), userns.id_map(netns), shortcut)
        _pod_routing(netns, spec.enable_ipv6, "add")  # before its facts are read: ::6 is one of its local addresses
        follower = Follower(netns, lambda facts: self._follow(netns, facts))
        handle = PodHandle(netns, cookie, entries.config, pin=pin, shortcut=shortcut)
        handle.namespace = namespace_entries(cookie, list(follower.facts.local), list(follower.facts.sources))
        self.pods[netns] = handle
        try:
            self.write_namespace(None, handle.namespace)
            self.update("counters", ctypes.c_uint64(cookie), (Counters * libbpf.possible_cpus())())
            self.update("shortcut_counters", ctypes.c_uint64(cookie), (ShortcutCounters * libbpf.possible_cpus())())
            self.write_spec(entries)
            handle.sk_lookup_link = self._attach_sk_lookup(netns, cookie)
            if pin is not None:
                libbpf.obj_pin(handle.sk_lookup_link, str(pin))
            handle.pod = entries.pod
            self.register_listeners(netns)  # those listening already: no refusal window
            faults.point("pod-add:entries")
            self.write_pod(cookie, entries.pod)  # now it is meshed
            self.register_listeners(netns)  # and any that began listening meanwhile
            if follow:
                handle.follower = follower
                follower.start()
            else:
                follower.stop()
        except BaseException:
            if handle.follower is None:
                follower.stop()
            self.remove_pod(netns)
            _pod_routing(netns, spec.enable_ipv6, "del")
            raise
        return handle

    def pod_entries_in_maps(self) -> dict[int, Pod]:
        """Every pod's entry in `pods`, by netns cookie, whoever wrote it."""
        maps = self.compiled.maps
        return {
            key.value: libbpf.map_lookup(maps["pods"], key, Pod)
            for key in libbpf.map_keys(maps["pods"], ctypes.c_uint64)
        }

    def adopt_pod(self, netns: str, cookie: int, config: int, pin: Path | None) -> PodHandle:
        """A pod another process meshed (a node's), to change or remove from this one."""
        handle = self.pods[netns] = PodHandle(netns, cookie, config, pin=pin)
        pod = libbpf.map_lookup(self.compiled.maps["pods"], ctypes.c_uint64(cookie), Pod)
        handle.pod = pod if pod is not None and pod.config == config else None
        handle.shortcut = bool(handle.pod is not None and handle.pod.flags & SHORTCUT_FLAG)
        return handle

    def update_pod(
        self, netns: str, spec: CaptureSpec, config: int | None = None, shortcut: bool | None = None
    ) -> None:
        """Change a meshed pod's spec (and short-circuit, if given) in one step: the new
        configuration's lists are written beside the old ones, then one update of the pod's entry
        switches every program to them. Turning the short-circuit off leaves the hops already in
        it as they are until they close (taking a socket out would lose what its queue holds)."""
        handle = self.pods[netns]
        shortcut = handle.shortcut if shortcut is None else shortcut
        entries = pod_entries(spec, config or new_config_id(), userns.id_map(netns), shortcut)
        _pod_routing(netns, spec.enable_ipv6, "add")  # a pod that gains IPv6 (one that loses it keeps ::6)
        try:
            self.write_spec(entries)
            self.write_pod(handle.cookie, entries.pod)
        except BaseException:
            self._delete_config(entries.config)
            raise
        old, handle.config, handle.pod, handle.shortcut = handle.config, entries.config, entries.pod, shortcut
        self._delete_config(old)
        ports = {entries.pod.proxy_port, entries.pod.inbound_port}
        for key in self._listener_keys(handle.cookie):
            if key.port not in ports:  # the proxy's old port: captured connections no longer go there
                libbpf.map_delete(self.compiled.maps["listeners"], key)
        self.register_listeners(netns)

    def remove_pod(self, netns: str) -> None:
        """Unmesh the pod in one step (its entry in `pods` goes first), then clear the rest: its
        lists (by configuration id), its namespace's facts and counters (by cookie), its
        listeners and its sk_lookup link (and pin)."""
        handle = self.pods.pop(netns, None)
        if handle is None:
            return
        maps = self.compiled.maps
        libbpf.map_delete(maps["pods"], ctypes.c_uint64(handle.cookie))
        faults.point("pod-del:uncaptured")
        if handle.follower is not None:
            handle.follower.stop()
        if handle.sk_lookup_link is not None:
            os.close(handle.sk_lookup_link)
        if handle.pin is not None:
            handle.pin.unlink(missing_ok=True)  # the last reference: the link detaches
        for key in self._listener_keys(handle.cookie):
            libbpf.map_delete(maps["listeners"], key)
        self._delete_config(handle.config)
        with self._lock:
            self._delete_namespace(handle.cookie)
        libbpf.map_delete(maps["counters"], ctypes.c_uint64(handle.cookie))
        libbpf.map_delete(maps["shortcut_counters"], ctypes.c_uint64(handle.cookie))
        if handle.pod is not None and handle.pod.flags & IPV6_FLAG:
            _pod_routing(handle.netns, True, "del")

    def update(self, name: str, key, value) -> None:
        """One map update; a full map is named, with its capacity (the caller undoes the rest)."""
        try:
            libbpf.map_update(self.compiled.maps[name], key, value)
        except OSError as error:
            if error.errno not in (errno.E2BIG, errno.ENOSPC):  # a full hash, a full trie
                raise
            capacity = libbpf.map_info(self.compiled.maps[name]).max_entries
            raise DatapathError(
                f"map {name} is full ({capacity:,} entries, node-wide): this pod does not "
                "fit; remove pods or raise its capacity in bpf/accel.h"
            ) from None

    def write_spec(self, entries: PodEntries) -> None:
        present = ctypes.c_uint8(1)
        for name, keys in (("ports", entries.ports), ("groups", entries.groups), ("prefixes", entries.prefixes)):
            for key in keys:
                self.update(name, key, present)

    def write_pod(self, cookie: int, pod) -> None:
        self.update("pods", ctypes.c_uint64(cookie), pod)

    def _delete_config(self, config: int) -> None:
        """Every list entry of a configuration, found in the maps themselves: also those of a pod
        added by a process that died half-way."""
        maps, owner = self.compiled.maps, config.to_bytes(8, sys.byteorder)
        for key in libbpf.map_keys(maps["ports"], PortKey):
            if key.config == config:
                libbpf.map_delete(maps["ports"], key)
        for key in libbpf.map_keys(maps["groups"], GroupKey):
            if key.config == config:
                libbpf.map_delete(maps["groups"], key)
        for key in libbpf.map_keys(maps["prefixes"], PrefixKey):
            if bytes(key.owner) == owner and key.kind & ~PREFIX_V6 != PREFIX_LOCAL:
                libbpf.map_delete(maps["prefixes"], key)

    def write_namespace(self, old: NamespaceEntries | None, new: NamespaceEntries) -> None:
        """New local routes first, then the sources, then what is gone: a destination that stays
        local is local throughout."""
        maps, present = self.compiled.maps, ctypes.c_uint8(1)
        before = {bytes(key): key for key in old.local} if old else {}
        after = {bytes(key) for key in new.local}
        for key in new.local:
            if bytes(key) not in before:
                self.update("prefixes", key, present)
        self.update("sources", ctypes.c_uint64(new.netns), new.sources)
        for raw, key in before.items():
            if raw not in after:
                libbpf.map_delete(maps["prefixes"], key)

    def namespace_in_maps(self, cookie: int) -> NamespaceEntries:
        """The facts of a pod's namespace as the maps hold them now (written by any process)."""
        maps, owner = self.compiled.maps, cookie.to_bytes(8, sys.byteorder)
        local = [
            key
            for key in libbpf.map_keys(maps["prefixes"], PrefixKey)
            if bytes(key.owner) == owner and key.kind & ~PREFIX_V6 == PREFIX_LOCAL
        ]
        sources = libbpf.map_lookup(maps["sources"], ctypes.c_uint64(cookie), Sources) or Sources()
        return NamespaceEntries(cookie, local, sources)

    def _delete_namespace(self, cookie: int) -> None:
        maps, owner = self.compiled.maps, cookie.to_bytes(8, sys.byteorder)
        for key in libbpf.map_keys(maps["prefixes"], PrefixKey):
            if bytes(key.owner) == owner and key.kind & ~PREFIX_V6 == PREFIX_LOCAL:
                libbpf.map_delete(maps["prefixes"], key)
        libbpf.map_delete(maps["sources"], ctypes.c_uint64(cookie))

    def _follow(self, netns: str, facts: NamespaceFacts) -> None:
        """A follower saw the namespace change: rewrite its facts."""
        with self._lock:
            handle = self.pods.get(netns)
            if handle is None:
                return
            self.write_facts(handle, facts)

    def write_facts(self, handle: PodHandle, facts: NamespaceFacts) -> None:
        entries = namespace_entries(handle.cookie, list(facts.local), list(facts.sources))
        self.write_namespace(handle.namespace, entries)
        handle.namespace = entries

    def wait_synced(self, netns: str, timeout: float) -> bool:
        """Wait until the pod's namespace facts in the maps are the namespace's facts now."""
        follower = self.pods[netns].follower
        return follower is not None and follower.wait_synced(timeout)

    def follower_status(self, netns: str) -> dict | None:
        """The pod's follower: whether it follows, the failure it retries (or stopped on), and how
        often it read everything anew after an event was lost or a read or write failed."""
        follower = self.pods[netns].follower
        if follower is None:
            return None
        return {
            "following": follower.stopped is None,
            "error": None if follower.error is None else repr(follower.error),
            "resyncs": follower.resyncs,
        }

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

    def register_listeners(self, netns: str) -> None:
        """Put the proxy's listeners that listen already into the listener map (sockops puts in
        those that start listening later)."""
        handle = self.pods[netns]
        if handle.pod is not None:
            register_listeners(self.compiled.maps["listeners"], netns, handle.cookie, handle.pod)

    def _listener_keys(self, cookie: int) -> list[ListenerKey]:
        return [key for key in libbpf.map_keys(self.compiled.maps["listeners"], ListenerKey) if key.netns == cookie]

    def listeners(self, netns: str) -> dict[str, list[str]]:
        """The pod's registered listeners, as the map holds them: {"outbound": ["ipv4", ...],
        "inbound": [...]}, the families sk_lookup can hand captured connections to."""
        handle = self.pods[netns]
        pod = handle.pod
        found: dict[str, list[str]] = {"outbound": [], "inbound": []}
        for key in self._listener_keys(handle.cookie):
            family = {AF_INET: "ipv4", AF_INET6: "ipv6"}.get(key.family, str(key.family))
            for role, port in (
                ("outbound", pod.proxy_port if pod else None),
                ("inbound", pod.inbound_port if pod else None),
            ):
                if key.port == port:
                    found[role].append(family)
        return {role: sorted(families) for role, families in found.items()}

    # -- what the kernel holds ----------------------------------------------------------------

    def counters(self, netns: str) -> dict[str, int]:
        """The pod's counters, summed over the CPUs."""
        return read_counters(
            self.compiled.maps["counters"], self.pods[netns].cookie, self.compiled.maps["shortcut_counters"]
        )

    def shortcut_sockets(self) -> int:
        """Sockets in the short-circuit now, node-wide (both ends of each hop)."""
        return len(libbpf.map_keys(self.compiled.maps["shortcuts"], Tuple))

    def prefix_entries(self, netns: str) -> int:
        """The pod's spec entries in the prefix trie, counted in the kernel's map."""
        owner = self.pods[netns].config.to_bytes(8, sys.byteorder)
        return sum(bytes(key.owner) == owner for key in libbpf.map_keys(self.compiled.maps["prefixes"], PrefixKey))

    def handoffs_in_flight(self) -> int:
        """Records between an app's SYN and its proxy's side of the connection, node-wide."""
        return len(libbpf.map_keys(self.compiled.maps["handoffs"], Tuple))


def _pod_routing(netns: str, ipv6: bool, verb: str) -> None:
    """What istio-iptables sets up beside its rules that eBPF needs too (accel/pod_routing.py): on
    an IPv6 pod, ::6 on lo. A namespace gone already has nothing to remove."""
    for argv in passthrough(ipv6, verb):
        result = run(argv, netns=netns)
        if result.returncode != 0 and not any(words in result.stderr for words in ALREADY + GONE):
            if verb == "add":
                raise DatapathError(f"{' '.join(argv)} in {netns}: {result.stderr.strip()}")


def attach_links(compiled: Compiled, cgroup: Path) -> dict[str, int]:
    """A link from each cgroup program to the cgroup (closing a link's last reference detaches)."""
    links: dict[str, int] = {}
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for program in CGROUP_PROGRAMS:
            links[program.name] = libbpf.link_create(compiled.programs[program.name], fd, program.attach_type)
    except BaseException:
        for link in links.values():
            os.close(link)
        raise
    finally:
        os.close(fd)
    return links


def read_counters(counters_map: int, cookie: int, shortcut_map: int | None = None) -> dict[str, int]:
    """A pod's counters, summed over the CPUs (zeros if it has none); with `shortcut_map`, also
    what the short-circuit carried (shortcut_messages, shortcut_bytes)."""
    cpus = libbpf.possible_cpus()
    per_cpu = libbpf.map_lookup(counters_map, ctypes.c_uint64(cookie), Counters * cpus)
    counted = {name: sum(getattr(cpu, name) for cpu in per_cpu) if per_cpu else 0 for name in COUNTERS}
    if shortcut_map is not None:
        carried = libbpf.map_lookup(shortcut_map, ctypes.c_uint64(cookie), ShortcutCounters * cpus)
        counted.update(
            {
                f"shortcut_{name}": sum(getattr(cpu, name) for cpu in carried) if carried else 0
                for name in SHORTCUT_COUNTERS
            }
        )
    return counted
