"""The addresses cases go to, taken from the spec itself (one its CIDRs capture, one they exclude,
one outside them) or from the lab (the pods' own), and the special ones the cases need."""

from __future__ import annotations

import ipaddress

from ..lab import LAB_NETWORKS, POD_ADDRESSES
from ..spec import WILDCARD, CaptureSpec, Cidr

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# Destinations for "a service address", tried in order within whatever the spec includes.
SERVICE_CANDIDATES = {
    4: ("203.0.113.10", "198.51.100.10", "192.0.2.10", "10.96.0.10", "100.64.0.10", "172.16.0.10"),
    6: ("2001:db8:5e::10", "2001:db8:5f::10", "fd00:5e::10"),
}
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
UNSPECIFIED = {4: "0.0.0.0", 6: "::"}
# An address the pod gets after capture is applied (on lo): local from then on, as for iptables.
ADDED_AFTER_APPLY = "198.18.0.14"
# An address the pod has when capture is applied and loses after: remote from then on (the remote
# pod answers it).
REMOVED_AFTER_APPLY = "203.0.113.77"
LAB_NETS = [ipaddress.ip_network(n) for n in LAB_NETWORKS]


def pod_address(version: int, role: str) -> str:
    return POD_ADDRESSES[role][0 if version == 4 else 1]


def _usable(address: Address, allow_loopback: bool) -> bool:
    if address.is_loopback:
        return allow_loopback
    return not (
        address.is_multicast
        or address.is_unspecified
        or address.is_link_local
        or address.is_reserved
        or any(address in lab for lab in LAB_NETS)
        or (address.version == 4 and address in ipaddress.ip_network("0.0.0.0/8"))
    )


def _hosts(cidr: Cidr) -> list[Address]:
    """A few addresses inside a CIDR: known service addresses first, then low hosts."""
    network = cidr.network
    picks = [ipaddress.ip_address(a) for a in SERVICE_CANDIDATES[network.version] if ipaddress.ip_address(a) in network]
    for offset in (10, 1):
        if offset < network.num_addresses:
            picks.append(network[offset])
    return picks + [cidr.ip]


def _excluded(spec: CaptureSpec, version: int, address) -> bool:
    return any(address in c.network for c in spec.outbound_exclude(version))


def captured_by_cidr(spec: CaptureSpec, version: int, address) -> bool:
    include = spec.outbound_include(version)
    return (include == WILDCARD or any(address in c.network for c in include)) and not _excluded(spec, version, address)


def service_address(spec: CaptureSpec, version: int) -> str | None:
    """An address the spec captures by CIDR (-i), not excluded (-x)."""
    include = spec.outbound_include(version)
    if include == WILDCARD:
        candidates = [(ipaddress.ip_address(a), False) for a in SERVICE_CANDIDATES[version]]
    else:
        candidates = [(host, cidr.ip.is_loopback) for cidr in include for host in _hosts(cidr)]
    for address, loopback_ok in candidates:
        if _usable(address, loopback_ok) and not _excluded(spec, version, address):
            return str(address)
    return None


def outside_address(spec: CaptureSpec, version: int) -> str | None:
    """An address outside the include list (and not excluded): uncaptured unless a port says so."""
    include = spec.outbound_include(version)
    if include == WILDCARD:
        return None
    for text in SERVICE_CANDIDATES[version]:
        address = ipaddress.ip_address(text)
        if not any(address in c.network for c in include) and not _excluded(spec, version, address):
            return text
    return None


def excluded_address(spec: CaptureSpec, version: int) -> str | None:
    for cidr in spec.outbound_exclude(version):
        for address in _hosts(cidr):
            if _usable(address, allow_loopback=False):
                return str(address)
    return None
