"""Capture backends: one interface, so the lab, compare and bench never special-case one."""

from .base import Backend, BackendError, Target
from .ebpf import EbpfBackend
from .iptables import IptablesBackend
from .nftables import NftablesBackend
from .none import NoneBackend
from .runner import Runner

BACKEND_NAMES = (
    "iptables",
    "iptables-nft",
    "iptables-legacy",
    "nftables",
    "nftables-sets",
    "ebpf",
    "ebpf+sockmap",
    "none",
)


def get_backend(name: str) -> Backend:
    """A fresh backend by name: iptables (variant chosen as istio-iptables does), iptables-nft,
    iptables-legacy, nftables, nftables-sets (CIDR and port lists in sets), ebpf, ebpf+sockmap (its
    app <-> proxy hops short-circuited), none."""
    if name == "iptables":
        return IptablesBackend()
    if name.startswith("iptables-") and name[len("iptables-") :] in ("nft", "legacy"):
        return IptablesBackend(name[len("iptables-") :])
    if name == "nftables":
        return NftablesBackend()
    if name == "nftables-sets":
        return NftablesBackend(sets=True)
    if name == "ebpf":
        return EbpfBackend()
    if name == "ebpf+sockmap":
        return EbpfBackend(shortcut=True)
    if name == "none":
        return NoneBackend()
    raise KeyError(name)


__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendError",
    "Target",
    "get_backend",
    "EbpfBackend",
    "IptablesBackend",
    "NftablesBackend",
    "NoneBackend",
    "Runner",
]
