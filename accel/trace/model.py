"""What the tracers take and give: one flow, one verdict, and the error for what they do not know.

A Flow describes the first packet of a new connection the way netfilter sees it; a Verdict says
where that connection ends up. Both are plain values, so a table of (flow, verdict) pairs reads as
a specification of the capture, and two renderings can be compared flow by flow.
"""

from __future__ import annotations

import enum
import grp
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

OUTBOUND, INBOUND = "outbound", "inbound"
REDIRECT, TPROXY = "REDIRECT", "TPROXY"
PROTOCOLS = ("tcp", "udp")


class TraceError(ValueError):
    """A rule set the tracer cannot walk faithfully: a construct it does not model, or one the
    kernel (iptables-restore, nft) would refuse. Names the line, so a renderer change that emits a
    new shape fails loudly here instead of being traced as if the new part were absent."""

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}" if where else reason)


@dataclass(frozen=True, kw_only=True)
class Flow:
    """The first packet of a NEW connection (conntrack state NEW, no reply seen).

    direction: outbound = locally generated (walks OUTPUT; if it leaves by lo, or is redirected
    to a local port, it comes back in by lo through PREROUTING, as the kernel loops it); inbound =
    arrives at the pod (walks PREROUTING). An inbound flow with lo=True is the PREROUTING half of a
    local connection: its conntrack entry already exists, so nat is not consulted again and no CT
    zone can be attached; give the mark it left with (mark).

    uid/gid are the socket's owner (fsuid/fsgid of the file that opened it) and are required
    outbound. groups are its supplementary gids: neither iptables' --gid-owner (without
    --suppl-groups) nor nft's skgid looks at them, which is why a flow can carry them at all: a
    test can say they do not count.

    sport None means an ephemeral port no rule names; interface None means a non-lo interface
    no rule names (outbound: the one the route leaves by; inbound: the one it arrives on).
    """

    direction: str
    src: str
    dst: str
    dport: int
    protocol: str = "tcp"
    sport: int | None = None
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    lo: bool = False
    interface: str | None = None
    mark: int = 0  # the packet mark it starts with (SO_MARK outbound; what OUTPUT set, for inbound over lo)

    def __post_init__(self):
        if self.direction not in (OUTBOUND, INBOUND):
            raise ValueError(f"direction must be {OUTBOUND!r} or {INBOUND!r}, not {self.direction!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        source, destination = ipaddress.ip_address(self.src), ipaddress.ip_address(self.dst)
        if source.version != destination.version:
            raise ValueError(f"source {self.src} and destination {self.dst} are of different IP versions")
        for name in ("dport", "sport"):
            port = getattr(self, name)
            if port is not None and not (isinstance(port, int) and 1 <= port <= 65535):
                raise ValueError(f"{name} must be a port number, not {port!r}")
        if self.direction == OUTBOUND and (self.uid is None or self.gid is None):
            raise ValueError("an outbound flow needs the socket's uid and gid")
        if self.interface == "lo" and not self.lo:
            raise ValueError("interface 'lo' is lo=True")
        if self.lo and self.interface not in (None, "lo"):
            raise ValueError(f"lo=True, but interface {self.interface!r}")
        # The kernel routes loopback addresses only over lo (and drops them arriving elsewhere).
        for name, address in (("src", source), ("dst", destination)):
            if address.is_loopback and not self.lo:
                raise ValueError(f"{name} {address} is a loopback address: the packet uses lo (lo=True)")
        if not 0 <= self.mark <= 0xFFFFFFFF:
            raise ValueError(f"mark must be a 32-bit value, not {self.mark!r}")

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.dst).version

    @property
    def source(self) -> Address:
        return ipaddress.ip_address(self.src)

    @property
    def destination(self) -> Address:
        return ipaddress.ip_address(self.dst)


class Kind(enum.Enum):
    OUTBOUND = "outbound"  # to the proxy's outbound port (ISTIO_REDIRECT)
    INBOUND = "inbound"  # to the proxy's inbound port (ISTIO_IN_REDIRECT, or TPROXY)
    DNS = "dns"  # to the DNS proxy (ISTIO_OUTPUT_DNS)
    UNTOUCHED = "untouched"  # RETURN, fall-through, ACCEPT: delivered as addressed
    DROP = "drop"


@dataclass(frozen=True)
class Verdict:
    """Where the connection goes. Compared by kind, port and method (REDIRECT or TPROXY); the CT
    zone and the rules taken ride along for assertions and debugging, outside equality."""

    kind: Kind
    port: int | None = None
    via: str | None = None  # REDIRECT or TPROXY for a captured connection
    ct_zone: int | None = field(default=None, compare=False)
    path: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def outbound(cls, port: int) -> Verdict:
        return cls(Kind.OUTBOUND, port, REDIRECT)

    @classmethod
    def inbound(cls, port: int, via: str = REDIRECT) -> Verdict:
        return cls(Kind.INBOUND, port, via)

    @classmethod
    def dns(cls, port: int) -> Verdict:
        return cls(Kind.DNS, port, REDIRECT)

    @property
    def captured(self) -> bool:
        return self.kind in (Kind.OUTBOUND, Kind.INBOUND, Kind.DNS)

    def __str__(self) -> str:
        if self.captured:
            return f"{self.kind.value} {self.port} ({self.via})"
        return self.kind.value


UNTOUCHED = Verdict(Kind.UNTOUCHED)
DROPPED = Verdict(Kind.DROP)


def group_id(name: str, group_ids: Mapping[str, int] | None, where: str) -> int:
    """A group name as an owner match resolves it: from `group_ids` when given (a test's own
    groups), else from this machine's group database."""
    if group_ids is not None:
        if name not in group_ids:
            raise TraceError(where, f"group {name!r} does not resolve (not in group_ids)")
        return group_ids[name]
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise TraceError(where, f"group {name!r} does not resolve on this machine") from None
