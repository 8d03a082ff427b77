"""The BTF reader against hand-built blobs (every byte known) and against this kernel's own vmlinux."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest

from accel.ebpf.btf import Btf, BtfError, BtfType, Member, ctypes_layout, layout, mismatches

INT, PTR, ARRAY, STRUCT, TYPEDEF, CONST = 1, 2, 3, 4, 8, 10


class Blob:
    """Assembles BTF the way a compiler lays it out: a header, the type records, then the strings."""

    def __init__(self) -> None:
        self.types = b""
        self.strings = b"\0"
        self.count = 0

    def name(self, name: str) -> int:
        if not name:
            return 0
        offset = len(self.strings)
        self.strings += name.encode() + b"\0"
        return offset

    def add(self, name: str, kind: int, third: int, extra: bytes = b"", vlen: int = 0, kind_flag: int = 0) -> int:
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.name(name), info, third) + extra
        self.count += 1
        return self.count

    def add_int(self, name: str, size: int) -> int:
        return self.add(name, INT, size, struct.pack("<I", size * 8))

    def add_array(self, element: int, count: int, index: int = 1) -> int:
        return self.add("", ARRAY, 0, struct.pack("<III", element, index, count))

    def add_struct(self, name: str, size: int, members: list[tuple[str, int, int]], kind_flag: int = 0) -> int:
        extra = b"".join(struct.pack("<III", self.name(m), t, offset) for m, t, offset in members)
        return self.add(name, STRUCT, size, extra, vlen=len(members), kind_flag=kind_flag)

    def build(self, magic: int = 0xEB9F) -> bytes:
        header = struct.pack("<HBBIIIII", magic, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings))
        return header + self.types + self.strings


def plain() -> tuple[Btf, dict[str, int]]:
    """struct plain { int a; int arr[4]; u32 t; }, with u32 a typedef of const unsigned int."""
    b = Blob()
    ids = {"int": b.add_int("int", 4), "uint": b.add_int("unsigned int", 4)}
    ids["const"] = b.add("", CONST, ids["uint"])
    ids["u32"] = b.add("u32", TYPEDEF, ids["const"])
    ids["arr"] = b.add_array(ids["int"], 4)
    ids["ptr"] = b.add("", PTR, ids["int"])
    ids["plain"] = b.add_struct("plain", 24, [("a", ids["int"], 0), ("arr", ids["arr"], 32), ("t", ids["u32"], 160)])
    return Btf(b.build()), ids


class Plain(ctypes.Structure):
    _fields_ = [("a", ctypes.c_int), ("arr", ctypes.c_int * 4), ("t", ctypes.c_uint32)]


def test_types_decode():
    btf, ids = plain()
    assert len(btf) == 8
    assert btf.type(0) == BtfType("void", "")
    assert btf.type(ids["int"]) == BtfType("int", "int", size=4)
    assert btf.type(ids["u32"]) == BtfType("typedef", "u32", type_id=ids["const"])
    assert btf.type(ids["arr"]) == BtfType("array", "", type_id=ids["int"], count=4)
    assert btf.type(ids["plain"]) == BtfType(
        "struct",
        "plain",
        size=24,
        members=(Member("a", ids["int"], 0, 0), Member("arr", ids["arr"], 32, 0), Member("t", ids["u32"], 160, 0)),
    )
    assert btf.find("u32", "typedef") == ids["u32"]
    assert btf.find("u32", "struct") is None
    with pytest.raises(BtfError):
        btf.type(len(btf))


def test_resolve_and_size_of():
    btf, ids = plain()
    assert btf.resolve(ids["u32"]) == ids["uint"]
    assert btf.resolve(ids["plain"]) == ids["plain"]
    assert [btf.size_of(ids[k]) for k in ("u32", "arr", "ptr", "plain")] == [4, 16, 8, 24]
    with pytest.raises(BtfError):
        btf.size_of(0)


def test_layout_of_struct_and_scalar():
    btf, ids = plain()
    assert layout(btf, ids["plain"]) == [("a", 0, 4), ("arr", 4, 16), ("t", 20, 4)]
    assert layout(btf, ids["u32"]) == [("", 0, 4)]
    assert ctypes_layout(Plain) == layout(btf, ids["plain"])
    assert ctypes_layout(ctypes.c_uint8 * 3) == [("", 0, 3)]


def test_matching_mirror_has_no_mismatches():
    btf, ids = plain()
    assert mismatches(btf, ids["plain"], Plain) == []
    assert mismatches(btf, ids["u32"], ctypes.c_uint32) == []
    assert mismatches(btf, ids["u32"], ctypes.c_uint16) == ["total size: 4 in the BPF object, 2 in the mirror"]


def test_mismatch_finds_wrong_offset():
    class Shifted(ctypes.Structure):
        _fields_ = [("a", ctypes.c_int), ("arr", ctypes.c_int * 4), ("pad", ctypes.c_uint32), ("t", ctypes.c_uint32)]

    btf, ids = plain()
    assert mismatches(btf, ids["plain"], Shifted) == [
        "member t: offset 20 in the BPF object, 24 in the mirror",
        "member pad: in the mirror, missing from the BPF object",
        "total size: 24 in the BPF object, 28 in the mirror",
    ]


def test_mismatch_finds_missing_member_and_wrong_size():
    class Short(ctypes.Structure):
        _fields_ = [("a", ctypes.c_int), ("arr", ctypes.c_int * 5)]

    btf, ids = plain()
    assert mismatches(btf, ids["plain"], Short) == [
        "member arr: size 16 in the BPF object, 20 in the mirror",
        "member t: in the BPF object, missing from the mirror",
    ]


def test_packed_struct():
    # struct __attribute__((packed)) { u32 prefixlen; u8 netns[8]; u8 kind; u8 addr[16]; }: the LPM key shape
    b = Blob()
    u32, u8 = b.add_int("unsigned int", 4), b.add_int("unsigned char", 1)
    netns, addr = b.add_array(u8, 8), b.add_array(u8, 16)
    key = b.add_struct("key", 29, [("prefixlen", u32, 0), ("netns", netns, 32), ("kind", u8, 96), ("addr", addr, 104)])
    btf = Btf(b.build())

    fields = [
        ("prefixlen", ctypes.c_uint32),
        ("netns", ctypes.c_uint8 * 8),
        ("kind", ctypes.c_uint8),
        ("addr", ctypes.c_uint8 * 16),
    ]
    packed = type("Packed", (ctypes.Structure,), {"_pack_": 1, "_fields_": fields})
    aligned = type("Aligned", (ctypes.Structure,), {"_fields_": fields})
    assert layout(btf, key) == [("prefixlen", 0, 4), ("netns", 4, 8), ("kind", 12, 1), ("addr", 13, 16)]
    assert mismatches(btf, key, packed) == []
    # forgetting _pack_ moves nothing here (all u8 after the u32) but pads the end
    assert mismatches(btf, key, aligned) == ["total size: 29 in the BPF object, 32 in the mirror"]


def test_bitfields_with_kind_flag():
    # struct bits { unsigned int a:3, b:5, d:12; unsigned short c; }: d starts in the unit's second byte
    b = Blob()
    uint, ushort = b.add_int("unsigned int", 4), b.add_int("unsigned short", 2)
    bits = b.add_struct(
        "bits",
        8,
        [("a", uint, (3 << 24) | 0), ("b", uint, (5 << 24) | 3), ("d", uint, (12 << 24) | 8), ("c", ushort, 32)],
        kind_flag=1,
    )
    btf = Btf(b.build())

    assert btf.type(bits).members == (
        Member("a", uint, 0, 3),
        Member("b", uint, 3, 5),
        Member("d", uint, 8, 12),
        Member("c", ushort, 32, 0),
    )
    # a bitfield is placed by its storage unit, as ctypes reports it, not by the byte its bits start in
    assert layout(btf, bits) == [("a", 0, 4), ("b", 0, 4), ("d", 0, 4), ("c", 4, 2)]

    class Bits(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint, 3), ("b", ctypes.c_uint, 5), ("d", ctypes.c_uint, 12), ("c", ctypes.c_ushort)]

    assert mismatches(btf, bits, Bits) == []


def test_bitfield_word_without_kind_flag_is_all_offset():
    b = Blob()
    uint = b.add_int("unsigned int", 4)
    s = b.add_struct("s", 8, [("x", uint, (5 << 24) | 3)])
    assert Btf(b.build()).type(s).members == (Member("x", uint, (5 << 24) | 3, 0),)


@pytest.mark.parametrize(
    "data, message",
    [
        (Blob().build(magic=0x9FEB), "big-endian"),
        (b"\0" * 24, "bad magic"),
        (Blob().build()[:20], "too short"),
    ],
)
def test_rejects_what_is_not_little_endian_btf(data, message):
    with pytest.raises(BtfError, match=message):
        Btf(data)


def test_rejects_truncated_type_section():
    b = Blob()
    b.add_struct("s", 4, [("x", b.add_int("int", 4), 0)])
    data = bytearray(b.build())
    struct.pack_into("<I", data, 12, len(b.types) - 4)  # type_len now cuts the member record short
    with pytest.raises(BtfError):
        Btf(bytes(data))


def test_vmlinux():
    path = Path("/sys/kernel/btf/vmlinux")
    btf = Btf(path.read_bytes())
    sock_addr = btf.find("bpf_sock_addr", "struct")
    assert sock_addr is not None
    assert ("user_port", 24, 4) in layout(btf, sock_addr)
    sockaddr_in = btf.find("sockaddr_in", "struct")
    assert sockaddr_in is not None and btf.size_of(sockaddr_in) == 16

    class SockaddrIn(ctypes.Structure):
        _fields_ = [
            ("sin_family", ctypes.c_ushort),
            ("sin_port", ctypes.c_uint16),
            ("sin_addr", ctypes.c_uint32),
            ("__pad", ctypes.c_uint8 * 8),
        ]

    assert mismatches(btf, sockaddr_in, SockaddrIn) == []


# -- which pinned layouts a newer accel adopts (objects.compatible) ------------------------------


def _layout(value, **definition):
    return {
        "type": 1,
        "key_size": 8,
        "value_size": 24,
        "max_entries": 64,
        "map_flags": 0,
        **definition,
        "key": [["", 0, 8]],
        "value": [list(member) for member in value],
    }


OLD_ORIGIN = [("addr", 0, 16), ("port", 16, 2), ("kind", 18, 1), ("role", 19, 1), ("pad", 20, 4)]


@pytest.mark.parametrize(
    "new, ok",
    [
        (OLD_ORIGIN, True),
        ([*OLD_ORIGIN[:4], ("shortcut", 20, 1), ("pad", 21, 3)], True),  # a member where padding was
        ([*OLD_ORIGIN[:4], ("shortcut", 20, 2), ("extra", 22, 2)], True),
        ([*OLD_ORIGIN[:4], ("shortcut", 19, 2), ("pad", 21, 3)], False),  # over a member, not padding
        ([("addr", 0, 16), ("port", 16, 2), ("role", 18, 1), ("kind", 19, 1), ("pad", 20, 4)], False),  # moved
        ([*OLD_ORIGIN[:3], ("pad", 19, 5)], False),  # a member went
        ([*OLD_ORIGIN[:4], ("wide", 20, 8)], False),  # past the padding
    ],
)
def test_a_pinned_map_is_adopted_only_when_new_members_fill_its_padding(new, ok):
    from accel.ebpf.objects import compatible

    assert compatible(_layout(OLD_ORIGIN), _layout(new)) is ok


def test_capacity_flags_and_sizes_must_match_exactly():
    from accel.ebpf.objects import compatible

    for change in ({"max_entries": 128}, {"map_flags": 1}, {"value_size": 32}, {"type": 2}):
        assert not compatible(_layout(OLD_ORIGIN), _layout(OLD_ORIGIN, **change)), change
