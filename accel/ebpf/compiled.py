"""The datapath's programs and maps, loaded: from bpf/ (the node's cache, else bcc) or from a
node's saved record, their ctypes mirrors (maps.py) checked member by member against the
compiled BTF; and the one load a process's labs share."""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

from . import btf, libbpf, objects, probe
from .maps import MIRRORS, STRUCT_MIRRORS
from .programs import PROGRAMS, SHORTCUT

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
# The compilation unit, in order: the map readers first (bcc rewrites map access only in the
# main source), then one file per hook family.
SOURCES = ("lookups.c", "connect.c", "shortcut.c", "sockops.c", "sockopt.c", "peername.c", "inbound.c", "dns.c")
PROGRAM_TYPES = {p.name: (p.prog_type, p.attach_type) for p in PROGRAMS}
CFLAGS = ("-Wno-unused-function",)


class DatapathError(RuntimeError):
    pass


def bpf_dir() -> Path:
    """Where the C sources are: bpf/ of this checkout, or ACCEL_BPF_DIR (another version of them)."""
    return Path(os.environ.get("ACCEL_BPF_DIR", BPF_DIR))


def source_text() -> str:
    return "".join((bpf_dir() / name).read_text() for name in SOURCES)


class Compiled:
    """One load of the programs and maps (see objects.py), its ctypes mirrors checked."""

    def __init__(self, loaded: objects.Objects):
        self.objects = loaded
        try:
            self.programs = loaded.programs
            self.maps = {name: loaded.map_fd(name) for name in (*MIRRORS, "listeners", "shortcuts")}
            self._check_mirrors()
        except BaseException:
            loaded.close()
            raise

    @classmethod
    def load(cls, adopt: objects.Adopt | None = None) -> Compiled:
        """From bpf/ (the node's cache, else bcc); `adopt` may hand in existing maps."""
        try:
            return cls(objects.load(source_text(), PROGRAM_TYPES, bpf_dir(), CFLAGS, adopt))
        except objects.ObjectsError as error:
            raise DatapathError(str(error)) from error
        except OSError as error:
            raise DatapathError(f"loading the datapath: {error}") from error

    @classmethod
    def from_record(cls, path: Path, adopt: objects.Adopt, load_programs: bool = True) -> Compiled:
        """From a record saved by save_record() (a node's own copy), on existing maps."""
        try:
            return cls(objects.load_record(path, adopt, load_programs))
        except objects.ObjectsError as error:
            raise DatapathError(str(error)) from error
        except OSError as error:
            raise DatapathError(f"loading the datapath from {path}: {error}") from error

    def close(self) -> None:
        self.objects.close()

    def attach_shortcut(self) -> int:
        """A link from the short-circuit's sk_msg program to the map of short-circuited sockets
        (once per load: a map takes one program). Pods without the short-circuit never put a
        socket into that map, so for them it never runs."""
        return libbpf.link_create(self.programs[SHORTCUT.name], self.maps["shortcuts"], SHORTCUT.attach_type)

    def _check_mirrors(self):
        """accel/ebpf/maps.py mirrors bpf/accel.h: refuse to run if they drifted apart, member by
        member, as the compiler laid the structs out (the object's BTF)."""
        problems = []
        for name in MIRRORS:
            definition = self.objects.maps[name]
            blob = self.objects.btf.get(definition["btf"] or "")
            if blob is None:
                problems.append(f"map {name}: no BTF in the compiled object")
                continue
            problems += _mirror_problems(
                name, blob, definition["btf_key_type_id"], definition["btf_value_type_id"], MIRRORS[name]
            )
        for struct, mirror in STRUCT_MIRRORS.items():
            found = [
                (types, type_id)
                for types in map(objects.decoded_btf, self.objects.btf.values())
                if (type_id := types.find(struct, "struct")) is not None
            ]
            if not found:
                problems.append(f"struct {struct}: not in the compiled object's BTF")
            else:
                problems += [f"struct {struct}: {problem}" for problem in btf.mismatches(*found[0], mirror)]
        if problems:
            raise DatapathError("bpf/accel.h and accel/ebpf/maps.py differ: " + "; ".join(problems))


@functools.lru_cache(maxsize=64)
def _mirror_problems(name: str, blob: bytes, key_type: int, value_type: int, mirrors: tuple) -> tuple[str, ...]:
    """How map `name`'s key and value in `blob` differ from their mirrors (once a process for each)."""
    types = objects.decoded_btf(blob)
    return tuple(
        f"map {name} {side}: {problem}"
        for side, type_id, mirror in zip(("key", "value"), (key_type, value_type), mirrors)
        for problem in btf.mismatches(types, type_id, mirror)
    )


class SharedCompiled:
    """The process's one Compiled for labs: the datapaths of several labs share programs and maps
    (pods are keyed by their namespace's cookie), released with the last of them."""

    lock = threading.Lock()
    compiled: Compiled | None = None
    users = 0

    shortcut_link: int | None = None

    @classmethod
    def acquire(cls) -> Compiled:
        with cls.lock:
            if cls.compiled is None:
                compiled = Compiled.load()
                try:
                    if not probe.short_circuit_missing():  # else pods that ask for it are refused
                        cls.shortcut_link = compiled.attach_shortcut()
                except BaseException:
                    compiled.close()
                    raise
                cls.compiled = compiled
            cls.users += 1
            return cls.compiled

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.users -= 1
            if cls.users == 0 and cls.compiled is not None:
                if cls.shortcut_link is not None:  # short-circuited sockets keep the program until they close
                    os.close(cls.shortcut_link)
                    cls.shortcut_link = None
                cls.compiled.close()
                cls.compiled = None
