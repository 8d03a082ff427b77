"""The parsers every input shares: an option's text to a CaptureSpec value (a port, a list of
CIDRs, '*', a group, ...), as istio-iptables reads it. Each takes the label of the field it
parses, for the error; the rules on the values are CaptureSpec's (see accel.spec)."""

from __future__ import annotations

import ipaddress

from ..spec import REDIRECT, WILDCARD, Cidr, SpecError, Wildcard, is_decimal


def split_list(text: str) -> list[str]:
    """Istio's config.Split: comma separated, empty items dropped ("80,81," is fine)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _list(text: str, field: str, parse_item, wildcard: bool, what: str):
    """A comma list of items, or '*' where the option allows it."""
    if text.strip() == WILDCARD:
        if not wildcard:
            raise SpecError(field, text, f"'*' is not allowed here; give a list of {what}")
        return WILDCARD
    return tuple(parse_item(item, field) for item in split_list(text))


def parse_port(text: str | int, field: str) -> int:
    value = str(text).strip()
    if not is_decimal(value):
        raise SpecError(field, text, "not a port number")
    return int(value)


def parse_ports(text: str, field: str, *, wildcard: bool = False) -> tuple[int, ...] | Wildcard:
    return _list(text, field, parse_port, wildcard, "ports")


def parse_id(text: str | int, field: str, what: str) -> int:
    value = str(text).strip()
    if not is_decimal(value):
        raise SpecError(field, text, f"not a numeric {what}")
    return int(value)


def parse_ids(text: str, field: str, what: str) -> tuple[int, ...]:
    return tuple(parse_id(item, field, what) for item in split_list(text))


def parse_cidr(text: str, field: str) -> Cidr:
    value = text.strip()
    address_text, slash, bits = value.partition("/")
    # Go's netip.ParsePrefix, which Istio uses, wants addr/bits with decimal bits and no zone.
    if not slash or not is_decimal(bits) or "%" in address_text:
        raise SpecError(field, text, "not a CIDR (expected address/prefix-length, e.g. 10.0.0.0/8)")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise SpecError(field, text, "not a CIDR: the address part is not an IP address") from None
    if int(bits) > address.max_prefixlen:
        raise SpecError(field, text, f"prefix length {int(bits)} is longer than {address.max_prefixlen}")
    return ipaddress.ip_interface(f"{address}/{int(bits)}")


def parse_cidrs(text: str, field: str, *, wildcard: bool = False) -> tuple[Cidr, ...] | Wildcard:
    return _list(text, field, parse_cidr, wildcard, "CIDRs")


def parse_address(text: str, field: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise SpecError(field, text, "not an IP address") from None


def parse_interfaces(text: str, field: str) -> tuple[str, ...]:
    return tuple(split_list(text))


def parse_group(text: str, field: str) -> str:
    """A group name or numeric GID (leading zeros dropped); iptables and nft resolve names when the
    rules load."""
    group = text.strip()
    return str(int(group)) if is_decimal(group) else group


def parse_groups(text: str, field: str, *, wildcard: bool = False) -> tuple[str, ...] | Wildcard:
    return _list(text, field, parse_group, wildcard, "groups")


def parse_mode(text: str, field: str) -> str:
    """An empty mode is REDIRECT: istio-iptables' -m defaults to "", which it treats as REDIRECT."""
    return text.strip() or REDIRECT


def parse_uint32(text: str | int, field: str, what: str) -> int:
    value = str(text).strip()
    if not is_decimal(value):
        raise SpecError(field, text, f"not a numeric {what}")
    return int(value)


_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def parse_bool(text: object, field: str) -> bool:
    """Go's strconv.ParseBool, which Istio's flags and env variables use."""
    if isinstance(text, bool):
        return text
    value = str(text).strip()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SpecError(field, text, "not a boolean (true/false/1/0)")
