"""Renderers: pure functions from a CaptureSpec to the text a backend applies. No root needed."""

from .iptables import IptablesRules, render_iptables
from .nftables import render_nftables

RENDERERS = ("iptables", "nftables")

__all__ = ["RENDERERS", "IptablesRules", "render_iptables", "render_nftables", "render_text"]


def render_text(spec, backend: str) -> str:
    """The full text a backend would apply: iptables-restore blocks (IPv4 then IPv6) or nft -f."""
    if backend == "iptables":
        return render_iptables(spec).text
    if backend == "nftables":
        return render_nftables(spec)
    raise ValueError(f"unknown renderer {backend!r} (expected one of {', '.join(RENDERERS)})")
