"""Reading the input files: JSON documents and resolv.conf. Whatever keeps a file from being read
as one is a SpecError naming the file and why, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from ..spec import SpecError


def _read_bytes(path: str, label: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:  # missing, a directory, permission denied, ...
        raise SpecError(label, path, f"cannot read file: {error.strerror or error}") from None
    except ValueError as error:  # a NUL in the path
        raise SpecError(label, path, f"cannot read file: {error}") from None


_JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def load_json(path: str, label: str) -> dict:
    """The JSON object in the file at path (label: the option that named it)."""
    data = _read_bytes(path, label)
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise SpecError(
            label, path, f"not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})"
        ) from None
    except json.JSONDecodeError as error:
        raise SpecError(label, path, f"not valid JSON: {error.msg} at line {error.lineno}") from None
    except ValueError as error:  # e.g. a number longer than Python converts
        raise SpecError(label, path, f"not valid JSON: {error}") from None
    except RecursionError:
        raise SpecError(label, path, "JSON nested deeper than Python's recursion limit") from None
    if not isinstance(document, dict):
        raise SpecError(label, path, f"expected a JSON object, not {_JSON_KINDS[type(document)]}")
    return document


def read_nameservers(path: str, label: str = "--resolv-conf") -> list[str]:
    """The addresses of resolv.conf's nameserver lines, as Istio reads them (miekg/dns: whitespace-split
    lines of bytes, so bytes that are not UTF-8 only matter on a nameserver line, which then holds no address)."""
    text = _read_bytes(path, label).decode("utf-8", "surrogateescape")
    servers = []
    for line in text.split("\n"):
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append(words[1])
    return servers
