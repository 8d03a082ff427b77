"""The words of an iptables-restore rule as the tracer reads them: interfaces, networks, ports and
marks, each refused with a TraceError naming the line when iptables would read it otherwise (or
accel's tracer does not understand it)."""

from __future__ import annotations

import ipaddress
import re

from .model import TraceError

_NUMBER = re.compile(r"0x[0-9a-fA-F]+|[0-9]+")


def interface_matches(actual: str | None, name: str) -> bool:
    """iptables' interface match: a trailing + matches any name it begins; None (an interface no
    rule names) matches none."""
    if actual is None:
        return False
    return actual.startswith(name[:-1]) if name.endswith("+") else actual == name


def read_network(text: str, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)  # the kernel clears host bits
    except ValueError:
        raise TraceError(where, f"{text!r} is not an address or CIDR") from None


def read_port(text: str, where: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise TraceError(where, f"{text!r} is not a port (ranges are not understood)")
    return int(text)


def read_mark(text: str, where: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    if not _NUMBER.fullmatch(value) or mask and not _NUMBER.fullmatch(mask):
        raise TraceError(where, f"{text!r} is not a mark (V or V/M)")
    number, bits = int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF
    if number > 0xFFFFFFFF or bits > 0xFFFFFFFF:
        raise TraceError(where, f"{text!r} is not a 32-bit mark")
    return number, bits
