"""Renderers: pure functions from a CaptureSpec to the text a backend applies. No root needed."""

from .ebpf import render_ebpf, render_ebpf_text
from .iptables import IptablesRules, render_iptables
from .nftables import render_nftables

RENDERERS = ("iptables", "nftables", "ebpf")

__all__ = [
    "RENDERERS",
    "IptablesRules",
    "render_ebpf",
    "render_ebpf_text",
    "render_iptables",
    "render_nftables",
    "render_text",
]


def render_text(spec, backend: str) -> str:
    """The full text a backend would apply: iptables-restore blocks (IPv4 then IPv6), nft -f, or the
    eBPF datapath's programs and map entries."""
    if backend == "iptables":
        return render_iptables(spec).text
    if backend == "nftables":
        return render_nftables(spec)
    if backend == "ebpf":
        return render_ebpf_text(spec)
    raise ValueError(f"unknown renderer {backend!r} (expected one of {', '.join(RENDERERS)})")
