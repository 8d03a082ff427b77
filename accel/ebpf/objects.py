"""The datapath's kernel objects, compiled by bcc once per node and cached.

bcc compiles C at load time: seconds of CPU and clang's memory in every process that loads. What
it produces is small: each program's instructions, which refer to maps by file descriptor, and
each map's definition (with the BTF that typed maps such as socket storage need). The cache keeps
exactly that, as JSON in /var/cache/accel (ACCEL_CACHE_DIR), under a key of everything the
compilation depends on: the sources and headers (their text, not where they lie), the flags,
bcc's version, the running kernel. A later process (the next test, a CNI invocation, an agent
after a restart) creates the maps, writes their new descriptors into the instructions and loads
the programs without bcc; the verifier checks them as it checks any load. An entry that does
not load (a kernel rebuilt under the same release) is compiled again and replaced.

Compiling goes through the same path: bcc compiles and creates the maps, the record is read back
from them, bcc's objects are closed, and the record is loaded. So what runs is always what the
cache holds, and a record is written only after it has loaded once.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import json
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import btf, libbpf
from .libbpf_structs import MapInfo

FORMAT = 1
BPF_LD_IMM64 = 0x18
BPF_PSEUDO_MAP_FD = 1


class ObjectsError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("ACCEL_CACHE_DIR", "/var/cache/accel"))


@dataclass
class Objects:
    """Loaded programs and created maps, by name; they live as long as these descriptors."""

    programs: dict[str, int]
    maps: dict[str, dict]  # name -> {"fd": ..., and its definition}
    origin: str  # "compiled" or "cache"
    cache_file: Path
    btf: dict[str, bytes] = field(default_factory=dict)  # the maps' BTF blobs, by the label in their definition
    record: dict | None = None  # what they were made from
    _fds: list[int] = field(default_factory=list)
    _code: dict[str, tuple[int, int, bytes, str]] = field(default_factory=dict)  # relocated, for copy()

    def map_fd(self, name: str) -> int:
        try:
            return self.maps[name]["fd"]
        except KeyError:
            raise ObjectsError(f"no map {name} in the compiled datapath") from None

    def copy(self, name: str, constants: dict[int, int]) -> int:
        """Another instance of a program, each 64-bit constant (ld_imm64) of `constants` replaced by
        its value: for what a program cannot ask the kernel (sk_lookup, its netns cookie). The
        caller owns the returned fd."""
        prog_type, attach_type, original, license = self._code[name]
        code, found = bytearray(original), set()
        for index, opcode, source, low in _instructions(bytes(code)):
            if opcode != BPF_LD_IMM64 or source != 0 or (index + 1) * 8 >= len(code):
                continue
            value = (low & 0xFFFFFFFF) | struct.unpack_from("<i", code, (index + 1) * 8 + 4)[0] << 32 & (2**64 - 1)
            if value in constants:
                replacement = constants[value]
                struct.pack_into("<I", code, index * 8 + 4, replacement & 0xFFFFFFFF)
                struct.pack_into("<I", code, (index + 1) * 8 + 4, replacement >> 32)
                found.add(value)
        if found != set(constants):
            raise ObjectsError(f"{name}: no constant {', '.join(hex(c) for c in set(constants) - found)} to replace")
        return libbpf.prog_load(name, prog_type, attach_type, bytes(code), license)

    def close(self) -> None:
        for fd in reversed(self._fds):
            os.close(fd)
        self._fds.clear()


# Given a map's name and layout (see layout()), the descriptor of an existing map to use instead of
# creating one (a pinned map kept across an upgrade), or None.
Adopt = Callable[[str, dict], "int | None"]


def load(
    source: str,
    programs: dict[str, tuple[int, int]],
    include_dir: Path | None = None,
    cflags: tuple[str, ...] = (),
    adopt: Adopt | None = None,
) -> Objects:
    """The programs (name -> (program type, attach type)) of `source`, whose #includes come
    from `include_dir`: from the node's cache when it holds this compilation, else compiled by
    bcc and then cached. `adopt` may hand in existing maps: the programs then use those."""
    headers = {p.name: p.read_text() for p in sorted(include_dir.glob("*.h"))} if include_dir else {}
    key = _cache_key(source, headers, list(cflags), programs)
    path = cache_dir() / f"datapath-{key[:24]}.json"
    record = _read(path, key)
    if record is not None:
        try:
            return _instantiate(record, "cache", path, adopt)
        except OSError:
            pass  # the kernel refuses what it once took: compile afresh and replace the entry
    flags = [*([f"-I{include_dir}"] if include_dir else []), *cflags]
    record = _compile(source, flags, programs, key)
    objects = _instantiate(record, "compiled", path, adopt)
    _write(path, record)
    return objects


def load_record(path: Path, adopt: Adopt | None = None, load_programs: bool = True) -> Objects:
    """The objects of a record saved with save_record() (a node keeps its own copy, so that its
    pods can be changed whatever happens to the cache). Without `load_programs`, only the maps
    are opened and the programs kept for copy(): what changing a pod needs."""
    try:
        if not _trusted(path):
            raise ObjectsError(f"{path} could have been written by someone else: not loading it")
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ObjectsError(f"reading the datapath record {path}: {error}") from None
    return _instantiate(record, "record", path, adopt, load_programs)


def save_record(objects: Objects, path: Path) -> None:
    """Keep a copy of the record the objects came from (written atomically, 0600)."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".datapath-")
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(objects.record, handle)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def layout(definition: dict, btf_blob: bytes | None) -> dict:
    """What must not change for a map's entries to keep their meaning: its kind, sizes, capacity,
    flags, and its key's and value's members (name, offset, size) as the compiler laid them out."""
    shape = {k: definition[k] for k in ("type", "key_size", "value_size", "max_entries", "map_flags")}
    if btf_blob and definition.get("btf_value_type_id"):
        key, value = _members(btf_blob, definition["btf_key_type_id"], definition["btf_value_type_id"])
        shape["key"], shape["value"] = [list(m) for m in key], [list(m) for m in value]
    return shape


@functools.lru_cache(maxsize=64)
def _members(btf_blob: bytes, key_type: int, value_type: int) -> tuple[tuple, tuple]:
    # Every map of one load shares one BTF blob: decode it once a process, not once a map.
    types = decoded_btf(btf_blob)
    return tuple(btf.layout(types, key_type)), tuple(btf.layout(types, value_type))


@functools.lru_cache(maxsize=4)
def decoded_btf(btf_blob: bytes) -> btf.Btf:
    """A BTF blob's types, decoded once a process."""
    return btf.Btf(btf_blob)


PADDING_PREFIX = "pad"  # members named so are padding: the programs always write them as zeros


def compatible(pinned: dict, wanted: dict) -> bool:
    """Whether a map laid out as `pinned` keeps its entries' meaning for programs that want
    `wanted` (both from layout()): equal but for members a newer struct puts where the pinned one
    had padding. Those read as zero in every pinned entry, because the programs write padding as
    zeros, and zero is what such a member means by 'not set'."""
    if pinned == wanted:
        return True
    if any(pinned.get(k) != wanted.get(k) for k in set(pinned) | set(wanted) if k not in ("key", "value")):
        return False
    return all(_members_compatible(pinned.get(part), wanted.get(part)) for part in ("key", "value"))


def _members_compatible(old: list | None, new: list | None) -> bool:
    if old is None or new is None:
        return old == new
    padding = [(offset, offset + size) for name, offset, size in old if name.startswith(PADDING_PREFIX)]
    kept = [member for member in old if not member[0].startswith(PADDING_PREFIX)]
    added = [member for member in new if member not in kept]
    if any(member not in new for member in kept):
        return False  # a member of the pinned layout moved, changed size or went
    return all(any(start <= offset and offset + size <= end for start, end in padding) for name, offset, size in added)


def layout_of_map(map_fd: int) -> dict:
    """layout() of a map the kernel holds (e.g. a pinned one), from its info and its BTF."""
    info = libbpf.map_info(map_fd)
    return layout(_definition(info), libbpf.btf_data(info.btf_id) if info.btf_id else None)


def _definition(info: MapInfo) -> dict:
    """A map's definition as a compiled entry records it, from the kernel's bpf_map_info."""
    return {
        "type": info.type,
        "key_size": info.key_size,
        "value_size": info.value_size,
        "max_entries": info.max_entries,
        "map_flags": info.map_flags,
        "btf_key_type_id": info.btf_key_type_id,
        "btf_value_type_id": info.btf_value_type_id,
    }


def _cache_key(source: str, headers: dict[str, str], cflags: list[str], programs: dict) -> str:
    """What the compiled code depends on: the text compiled (not where it lies), bcc, the kernel."""
    spec = importlib.util.find_spec("bcc")
    bcc_version = "absent"
    if spec and spec.submodule_search_locations:
        version_file = Path(list(spec.submodule_search_locations)[0]) / "version.py"
        bcc_version = version_file.read_text() if version_file.exists() else "unknown"
    uname = os.uname()
    material = json.dumps(
        {
            "format": FORMAT,
            "source": source,
            "headers": headers,
            "cflags": cflags,
            "programs": programs,
            "bcc": bcc_version,
            "kernel": [uname.release, uname.version, uname.machine],
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


# -- compiling -----------------------------------------------------------------------------------


def _compile(source: str, cflags: list[str], programs: dict, key: str) -> dict:
    try:
        from bcc import BPF, lib  # Debian's python3-bpfcc: only needed when the cache misses
    except ImportError as error:
        raise ObjectsError(
            f"bcc is not installed (python3-bpfcc) and the cache has no compiled datapath for this kernel: {error}"
        ) from None
    with _stderr_kept() as said:
        try:
            bpf = BPF(text=source.encode(), cflags=cflags)
        except Exception as error:
            # bcc names what failed (clang's error, the map the kernel would not create) on its
            # own stderr, and only "Failed to compile" in the exception
            cause = "; ".join(line for line in said().splitlines() if line.strip())[-2000:]
            raise ObjectsError(f"compiling the datapath: {cause or error}") from error
    try:
        maps: dict[str, dict] = {}
        by_fd: dict[int, str] = {}
        btfs: dict[str, str] = {}  # label -> the blob, base64
        labels: dict[int, str] = {}  # kernel BTF id -> label
        for name, fd in _tables(lib, bpf.module):
            info = libbpf.map_info(fd)
            maps[name] = {**_definition(info), "btf": None}
            if info.btf_value_type_id:  # labelled by order, not by kernel id: records are reproducible
                label = labels.setdefault(info.btf_id, str(len(labels)))
                btfs.setdefault(label, base64.b64encode(libbpf.btf_data(info.btf_id)).decode())
                maps[name]["btf"] = label
            by_fd[fd] = name
        compiled = {}
        for name, (prog_type, attach_type) in programs.items():
            instructions, relocations = _unbind_maps(bytes(bpf.dump_func(name.encode())), by_fd, name)
            compiled[name] = {
                "type": prog_type,
                "attach": attach_type,
                "relocations": relocations,
                "instructions": base64.b64encode(instructions).decode(),
            }
        license = lib.bpf_module_license(bpf.module).decode()
    finally:
        bpf.cleanup()
    return {"format": FORMAT, "key": key, "license": license, "btf": btfs, "maps": maps, "programs": compiled}


@contextlib.contextmanager
def _stderr_kept():
    """What the process writes to file descriptor 2 meanwhile (bcc's C++ and clang write there),
    kept from the terminal; yields a function that returns it."""
    saved, kept = os.dup(2), tempfile.TemporaryFile()
    os.dup2(kept.fileno(), 2)
    try:
        yield lambda: (kept.seek(0), kept.read().decode(errors="replace"))[1]
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        kept.close()


def _tables(lib, module) -> list[tuple[str, int]]:
    """(name, fd) of every map bcc created for the module. bcc's Python binding does not declare
    these three functions, so they get prototypes of their own here (not on bcc's shared handle)."""
    count = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p)(("bpf_num_tables", lib))
    name = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t)(("bpf_table_name", lib))
    fd = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)(("bpf_table_fd_id", lib))
    return [(name(module, index).decode(), fd(module, index)) for index in range(count(module))]


def _instructions(code: bytes):
    for index in range(0, len(code) // 8):
        opcode, registers, offset, immediate = struct.unpack_from("<BBhi", code, index * 8)
        yield index, opcode, registers >> 4, immediate


def _unbind_maps(code: bytes, by_fd: dict[int, str], program: str) -> tuple[bytes, list]:
    """Replace each map descriptor in the instructions by a reference to the map's name."""
    unbound, relocations = bytearray(code), []
    for index, opcode, source, immediate in _instructions(bytes(unbound)):
        if opcode != BPF_LD_IMM64 or source == 0:
            continue
        if source != BPF_PSEUDO_MAP_FD or immediate not in by_fd:
            raise ObjectsError(
                f"{program}: instruction {index} loads a pseudo value of kind {source} "
                f"({immediate}) that the cache cannot relocate"
            )
        relocations.append([index, by_fd[immediate]])
        struct.pack_into("<i", unbound, index * 8 + 4, 0)
    return bytes(unbound), relocations


# -- loading a record ----------------------------------------------------------------------------


def _instantiate(
    record: dict, origin: str, path: Path, adopt: Adopt | None = None, load_programs: bool = True
) -> Objects:
    objects = Objects({}, {}, origin, path, record=record)
    try:
        btf_fds = {}
        for btf_id, blob in record["btf"].items():
            objects.btf[btf_id] = base64.b64decode(blob)
            btf_fds[btf_id] = libbpf.btf_load(objects.btf[btf_id])
            objects._fds.append(btf_fds[btf_id])
        for name, definition in record["maps"].items():
            given = adopt(name, layout(definition, objects.btf.get(definition["btf"] or ""))) if adopt else None
            fd = (
                os.dup(given)
                if given is not None
                else libbpf.map_create(name, definition, btf_fds.get(definition["btf"], 0))
            )
            objects._fds.append(fd)
            objects.maps[name] = {"fd": fd, "adopted": given is not None, **definition}
        for name, program in record["programs"].items():
            code = bytearray(base64.b64decode(program["instructions"]))
            for index, map_name in program["relocations"]:
                struct.pack_into("<i", code, index * 8 + 4, objects.maps[map_name]["fd"])
            objects._code[name] = (program["type"], program["attach"], bytes(code), record["license"])
            if load_programs:
                fd = libbpf.prog_load(name, program["type"], program["attach"], bytes(code), record["license"])
                objects._fds.append(fd)
                objects.programs[name] = fd
        for fd in btf_fds.values():  # the maps hold their BTF now
            os.close(fd)
            objects._fds.remove(fd)
    except BaseException:
        objects.close()
        raise
    return objects


# -- the cache file ------------------------------------------------------------------------------


def _trusted(path: Path) -> bool:
    """Only a file and directory that no one but us could have written: it becomes kernel code."""
    for item in (path.parent, path):
        status = item.stat()
        if status.st_uid != os.geteuid() or status.st_mode & 0o022:
            return False
    return True


def _read(path: Path, key: str) -> dict | None:
    try:
        if not _trusted(path):
            return None
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("key") != key:
        return None
    return record


def _write(path: Path, record: dict) -> None:
    """Atomically, and best effort: a node that cannot cache still runs, compiling each time."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".datapath-")
        try:
            with os.fdopen(descriptor, "w") as handle:
                json.dump(record, handle)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        for stale in path.parent.glob("datapath-*.json"):  # entries of other sources or kernels
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError:
        pass
