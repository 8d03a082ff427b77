"""The eBPF backend: capture at the socket layer, with no NAT and no conntrack.

The programs are attached once, at the cgroup that holds the node's pods (the lab's own cgroup
in the lab; never the cgroup v2 root), and each meshed pod is map entries plus an sk_lookup link
in its namespace. A pod's sockets only see the programs if its processes live below that cgroup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cgroup import Cgroup
from ..ebpf import probe
from ..ebpf.maps import UnsupportedSpec, check_supported
from ..spec import CaptureSpec
from .base import Backend, BackendError, Target

if TYPE_CHECKING:
    from ..ebpf.datapath import Datapath


class EbpfBackend(Backend):
    def __init__(self, cgroup: Cgroup | None = None, shortcut: bool = False):
        self.cgroup = cgroup  # where to attach; else each target's node_cgroup
        self.shortcut = shortcut  # short-circuit each pod's app <-> proxy hops (bpf/shortcut.c)
        self.name = "ebpf+sockmap" if shortcut else "ebpf"
        self._datapaths: dict[str, Datapath] = {}  # by cgroup path
        self._pods: dict[str, Datapath] = {}  # netns -> the one meshing it

    def _cgroup_for(self, target: Target) -> Cgroup:
        cgroup = self.cgroup or getattr(target, "node_cgroup", None)
        if cgroup is None:
            raise BackendError(f"{self.name}: no cgroup to attach the programs at for {target.netns}")
        return cgroup

    def describe(self, target: Target) -> str:
        return (
            f"socket hooks at cgroup {self._cgroup_for(target).path.name} (connect, sendmsg, recvmsg, "
            "getsockopt, getpeername, sockops) and sk_lookup in the pod's namespace; no NAT, no conntrack"
            + ("; app <-> proxy data short-circuited (sk_msg)" if self.shortcut else "")
        )

    def apply(self, target: Target, spec: CaptureSpec) -> None:
        """Capture the pod as `spec` says; if it is captured already, switch it to `spec` in one
        step (every connect decides by the old spec or the new, never by a mixture or by none)."""
        try:
            check_supported(spec)
        except UnsupportedSpec as error:
            raise BackendError(
                f"{self.name}: cannot capture this spec exactly: {error}; the nftables backend can"
            ) from None
        missing = probe.missing(short_circuit=self.shortcut)
        if missing:
            raise BackendError(
                f"{self.name}: this kernel lacks " + "; ".join(f"{f.name} ({f.detail})" for f in missing)
            )
        from ..ebpf.datapath import Datapath, DatapathError  # bcc is only needed from here on

        if target.netns in self._pods:
            try:
                self._pods[target.netns].update_pod(target.netns, spec, shortcut=self.shortcut)
            except (DatapathError, UnsupportedSpec, OSError) as error:
                raise BackendError(f"{self.name}: {error}") from error
            return
        cgroup = self._cgroup_for(target)
        datapath = self._datapaths.get(str(cgroup.path))
        try:
            if datapath is None:
                datapath = self._datapaths[str(cgroup.path)] = Datapath.attach(cgroup)
            datapath.add_pod(target.netns, spec, shortcut=self.shortcut)
        except (DatapathError, UnsupportedSpec, OSError) as error:
            self._release_if_idle(datapath)
            raise BackendError(f"{self.name}: {error}") from error
        except BaseException:
            self._release_if_idle(datapath)
            raise
        self._pods[target.netns] = datapath

    def remove(self, target: Target) -> None:
        datapath = self._pods.pop(target.netns, None)
        if datapath is not None:
            datapath.remove_pod(target.netns)
            self._release_if_idle(datapath)

    def _release_if_idle(self, datapath: Datapath | None) -> None:
        if datapath is not None and not datapath.pods:
            datapath.close()
            assert datapath.cgroup is not None  # this backend's datapaths are attach()ed at one
            self._datapaths.pop(str(datapath.cgroup.path), None)

    def wait_synced(self, target: Target, timeout: float) -> bool:
        """Wait until what the datapath knows of the pod's namespace (its local routes and
        addresses) is what the namespace holds now: the follower's next read after a change."""
        datapath = self._pods.get(target.netns)
        return datapath is None or datapath.wait_synced(target.netns, timeout)

    def program_ids(self, target: Target) -> dict[int, str]:
        """The programs that run for the pod, by kernel id: the shared ones and its sk_lookup copy
        (for run-time statistics)."""
        from ..ebpf import libbpf

        datapath = self._pods[target.netns]
        ids = {libbpf.prog_info(fd).id: name for name, fd in datapath.compiled.programs.items()}
        link = datapath.pods[target.netns].sk_lookup_link
        if link is not None:
            ids[libbpf.link_info(link).prog_id] = "inbound"
        return ids

    def status(self, target: Target) -> dict:
        datapath = self._pods.get(target.netns)
        if datapath is None:
            return {"backend": self.name, "applied": False}
        handle = datapath.pods[target.netns]
        assert datapath.cgroup is not None  # attach()ed at one
        return {
            "backend": self.name,
            "applied": True,
            "cgroup": str(datapath.cgroup.path),
            "links": sorted(datapath.links),
            "sk_lookup": handle.sk_lookup_link is not None,
            "listeners": datapath.listeners(target.netns),
            "handoffs_in_flight": datapath.handoffs_in_flight(),
            "shortcut": handle.shortcut,
            "shortcut_sockets": datapath.shortcut_sockets(),
            "counters": datapath.counters(target.netns),
            "follower": datapath.follower_status(target.netns),
            "prefix_entries": datapath.prefix_entries(target.netns),
            "programs_from": datapath.compiled.objects.origin,
            "programs_cache": str(datapath.compiled.objects.cache_file),
        }
