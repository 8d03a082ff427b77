"""A reader of the kernel's BTF type format, enough to compare a compiled object's structs with their ctypes mirrors.

The datapath's maps are written from Python through ctypes structures that must match bpf/accel.h byte for byte;
the compiled object's BTF is the only record of the layout the compiler actually chose, so that is what the
mirrors are checked against. Only little-endian BTF is read: it is what every target of this project produces.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import NamedTuple, TypeGuard

MAGIC = 0xEB9F
HEADER = struct.Struct("<HBBIIIII")
TYPE = struct.Struct("<III")

KINDS = {
    1: "int",
    2: "ptr",
    3: "array",
    4: "struct",
    5: "union",
    6: "enum",
    7: "fwd",
    8: "typedef",
    9: "volatile",
    10: "const",
    11: "restrict",
    12: "func",
    13: "func_proto",
    14: "var",
    15: "datasec",
    16: "float",
    17: "decl_tag",
    18: "type_tag",
    19: "enum64",
}
# bytes of kind-specific data after each btf_type: (fixed, per vlen entry); the type section can only be walked with it
_EXTRA = {
    "int": (4, 0),
    "array": (12, 0),
    "struct": (0, 12),
    "union": (0, 12),
    "enum": (0, 8),
    "enum64": (0, 12),
    "func_proto": (0, 8),
    "var": (4, 0),
    "datasec": (0, 12),
    "decl_tag": (4, 0),
}
_MODIFIERS = {"typedef", "volatile", "const", "restrict", "type_tag"}
_SIZED = {"int", "struct", "union", "enum", "enum64", "float", "datasec"}
# kinds whose third word is a type id rather than a size
_REFERS = _MODIFIERS | {"ptr", "func", "var", "decl_tag"}
_POINTER_SIZE = 8  # BPF is a 64-bit target whatever the host


class BtfError(ValueError):
    """Data that is not (little-endian) BTF, or a question the types cannot answer."""


class Member(NamedTuple):
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int  # 0 unless a bitfield


@dataclass(frozen=True)
class BtfType:
    kind: str
    name: str
    size: int | None = None  # for the kinds that record one (int, struct, union, enum, float, datasec)
    type_id: int | None = None  # what a ptr/modifier/typedef/func/var refers to, or an array's element type
    count: int | None = None  # an array's number of elements
    members: tuple[Member, ...] = ()  # struct and union only


class Btf:
    """The types of one BTF blob, decoded on demand: vmlinux has ~100k types and a check needs a handful."""

    def __init__(self, data: bytes) -> None:
        if len(data) < HEADER.size:
            raise BtfError(f"{len(data)} bytes is too short for a BTF header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = HEADER.unpack_from(data)
        if magic != MAGIC:
            order = "big-endian BTF is not supported" if magic == 0x9FEB else f"bad magic {magic:#06x}"
            raise BtfError(order)
        # offsets count from the end of the header, whose length newer kernels may grow
        types = (hdr_len + type_off, hdr_len + type_off + type_len)
        strings = (hdr_len + str_off, hdr_len + str_off + str_len)
        if hdr_len < HEADER.size or max(types[1], strings[1]) > len(data):
            raise BtfError("BTF sections run past the end of the data")
        self._data = bytes(data)
        self._strings = strings
        self._offsets = [0]  # by type id; id 0 is void and has no record
        self._cache: dict[int, BtfType] = {}
        offset, end = types
        while offset < end:
            if offset + TYPE.size > end:
                raise BtfError(f"truncated type record at byte {offset}")
            info = TYPE.unpack_from(data, offset)[1]
            kind = KINDS.get((info >> 24) & 0x1F)
            if kind is None:
                raise BtfError(f"type {len(self._offsets)}: unknown kind {(info >> 24) & 0x1F}")
            fixed, each = _EXTRA.get(kind, (0, 0))
            self._offsets.append(offset)
            offset += TYPE.size + fixed + each * (info & 0xFFFF)
        if offset != end:
            raise BtfError("the last type record runs past the type section")

    def __len__(self) -> int:
        """The number of type ids, void included, so valid ids are range(1, len(btf))."""
        return len(self._offsets)

    def _string(self, offset: int) -> str:
        start, end = self._strings
        if offset >= end - start:
            raise BtfError(f"string offset {offset} is past the string section")
        stop = self._data.find(b"\0", start + offset, end)
        return self._data[start + offset : stop if stop >= 0 else end].decode()

    def type(self, type_id: int) -> BtfType:
        """The decoded type; void (0) is kind "void" so callers can walk references without special cases."""
        if type_id == 0:
            return BtfType("void", "")
        if not 0 < type_id < len(self._offsets):
            raise BtfError(f"no type {type_id}")
        if type_id in self._cache:
            return self._cache[type_id]
        offset = self._offsets[type_id]
        name_off, info, size_or_type = TYPE.unpack_from(self._data, offset)
        kind, vlen, kind_flag = KINDS[(info >> 24) & 0x1F], info & 0xFFFF, info >> 31
        name = self._string(name_off)
        extra = offset + TYPE.size
        if kind == "array":
            element, _index, count = struct.unpack_from("<III", self._data, extra)
            result = BtfType(kind, name, type_id=element, count=count)
        elif kind in ("struct", "union"):
            members = []
            for i in range(vlen):
                member_name, member_type, bits = struct.unpack_from("<III", self._data, extra + 12 * i)
                # with kind_flag the bitfield size shares the word with the offset
                bit_offset, bitfield = (bits & 0xFFFFFF, bits >> 24) if kind_flag else (bits, 0)
                members.append(Member(self._string(member_name), member_type, bit_offset, bitfield))
            result = BtfType(kind, name, size=size_or_type, members=tuple(members))
        elif kind in _SIZED:
            result = BtfType(kind, name, size=size_or_type)
        elif kind in _REFERS:
            result = BtfType(kind, name, type_id=size_or_type)
        else:  # fwd, func_proto: nothing a layout check needs
            result = BtfType(kind, name)
        self._cache[type_id] = result
        return result

    def find(self, name: str, kind: str) -> int | None:
        """The first type id with this name and kind: a struct's name alone is ambiguous with its typedef."""
        for type_id in range(1, len(self._offsets)):
            name_off, info, _ = TYPE.unpack_from(self._data, self._offsets[type_id])
            if KINDS[(info >> 24) & 0x1F] == kind and self._string(name_off) == name:
                return type_id
        return None

    def resolve(self, type_id: int) -> int:
        """The id under any typedefs and qualifiers, which do not change a layout."""
        current = type_id
        for _ in range(64):  # a loop of typedefs would be malformed BTF; do not hang on it
            t = self.type(current)
            if t.kind not in _MODIFIERS:
                return current
            assert t.type_id is not None  # type() gives every modifier the id it refers to
            current = t.type_id
        raise BtfError(f"type {type_id}: typedef chain too long (a loop?)")

    def size_of(self, type_id: int) -> int:
        """Bytes the type occupies, as sizeof() would say in BPF C."""
        t = self.type(self.resolve(type_id))
        if t.kind == "array":
            assert t.type_id is not None and t.count is not None  # type() sets both for an array
            return self.size_of(t.type_id) * t.count
        if t.kind == "ptr":
            return _POINTER_SIZE
        if t.kind == "var":
            assert t.type_id is not None  # type() sets it for a var
            return self.size_of(t.type_id)
        if t.size is None:
            raise BtfError(f"type {type_id} ({t.kind} {t.name!r}) has no size")
        return t.size


def layout(btf: Btf, type_id: int) -> list[tuple[str, int, int]]:
    """(name, byte offset, byte size) per member of a struct or union, else one ("", 0, size) for the whole type.

    A bitfield is reported as the storage unit of its declared type that holds it, which is also what ctypes
    reports, so only where the unit sits is compared, not the bits inside it.
    """
    t = btf.type(btf.resolve(type_id))
    if t.kind not in ("struct", "union"):
        return [("", 0, btf.size_of(type_id))]
    result = []
    for member in t.members:
        size = btf.size_of(member.type_id)
        offset = (member.bit_offset // (8 * size)) * size if member.bitfield_size else member.bit_offset // 8
        result.append((member.name, offset, size))
    return result


def _is_record(ctype: type) -> TypeGuard[type[ctypes.Structure | ctypes.Union]]:
    return isinstance(ctype, type) and issubclass(ctype, (ctypes.Structure, ctypes.Union))


def ctypes_layout(ctype: type) -> list[tuple[str, int, int]]:
    """The same triples as layout() for a ctypes Structure/Union, or ("", 0, sizeof) for a scalar or array."""
    if not _is_record(ctype):
        return [("", 0, ctypes.sizeof(ctype))]
    result = []
    for field in ctype._fields_:
        name, field_type = field[0], field[1]
        # a bitfield descriptor's .size packs bit width and position; its unit is the declared type
        size = ctypes.sizeof(field_type) if len(field) > 2 else getattr(ctype, name).size
        result.append((name, getattr(ctype, name).offset, size))
    return result


def mismatches(btf: Btf, type_id: int, ctype: type) -> list[str]:
    """Every way the ctypes mirror differs from the BPF object's type, one readable line each; [] if none."""
    problems = []
    is_struct = btf.type(btf.resolve(type_id)).kind in ("struct", "union")
    if is_struct != _is_record(ctype):
        problems.append(
            "kind: "
            + (
                "a struct in the BPF object, not in the mirror"
                if is_struct
                else "a struct in the mirror, not in the BPF object"
            )
        )
    elif is_struct:
        ours = {name: (offset, size) for name, offset, size in layout(btf, type_id)}
        theirs = {name: (offset, size) for name, offset, size in ctypes_layout(ctype)}
        for name, (offset, size) in ours.items():
            label = name or "(anonymous)"
            if name not in theirs:
                problems.append(f"member {label}: in the BPF object, missing from the mirror")
                continue
            their_offset, their_size = theirs[name]
            if offset != their_offset:
                problems.append(f"member {label}: offset {offset} in the BPF object, {their_offset} in the mirror")
            if size != their_size:
                problems.append(f"member {label}: size {size} in the BPF object, {their_size} in the mirror")
        problems += [
            f"member {name}: in the mirror, missing from the BPF object" for name in theirs if name not in ours
        ]
    size, their_size = btf.size_of(type_id), ctypes.sizeof(ctype)
    if size != their_size:
        problems.append(f"total size: {size} in the BPF object, {their_size} in the mirror")
    return problems
