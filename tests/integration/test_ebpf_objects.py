"""The per-node cache of compiled programs: what it saves, and that it cannot be fooled."""

import ctypes
import json
import os
import stat
import subprocess
import sys

import pytest

from accel import inputs
from accel.backends import get_backend
from accel.ebpf import objects, programs
from accel.lab import Lab, LabPlan, SidecarConfig

pytestmark = pytest.mark.privileged

SOURCE = r"""
#define BPF_LICENSE Dual BSD/GPL
BPF_HASH(seen, u32, u64);
BPF_SK_STORAGE(notes, u64);
int tiny(struct bpf_sock_addr *ctx) {
    u32 key = ctx->user_port;
    u64 one = 1, *note = notes.sk_storage_get(ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (note)
        *note = 1;
    seen.update(&key, &one);
    return 1;
}
"""
PROGRAMS = {"tiny": (programs.PROG_CGROUP_SOCK_ADDR, programs.ATTACH_INET4_CONNECT)}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("ACCEL_CACHE_DIR", str(directory))
    return directory


def load():
    loaded = objects.load(SOURCE, PROGRAMS)
    loaded.close()
    return loaded.origin, loaded.cache_file


def test_compiles_once_then_loads_from_the_cache(cache):
    origin, path = load()
    assert origin == "compiled" and path.parent == cache
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(cache.stat().st_mode) == 0o700
    record = json.loads(path.read_text())
    assert record["maps"]["notes"]["btf"] and record["programs"]["tiny"]["relocations"]
    assert load() == ("cache", path)


def test_a_new_process_loads_without_bcc(cache):
    load()
    script = (
        "import sys; from accel.ebpf import objects, libbpf; "
        f"o = objects.load({SOURCE!r}, {PROGRAMS!r}); "
        "print(o.origin, 'bcc' in sys.modules, sorted(o.maps)); o.close()"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split(None, 2) == ["cache", "False", "['notes', 'seen']\n"]


@pytest.mark.parametrize("spoil", ["garbage", "other-key", "verifier-rejects", "group-writable"])
def test_a_spoiled_entry_is_compiled_again_and_replaced(cache, spoil):
    _, path = load()
    good = path.read_text()
    record = json.loads(good)
    if spoil == "garbage":
        path.write_text("{not json")
    elif spoil == "other-key":
        path.write_text(json.dumps({**record, "key": "0" * 64}))
    elif spoil == "verifier-rejects":  # one instruction: exit, with r0 never set
        record["programs"]["tiny"].update(instructions="lQAAAAAAAAA=", relocations=[])
        path.write_text(json.dumps(record))
    else:  # someone else could have written it: it would become kernel code
        path.chmod(0o620)
    assert load() == ("compiled", path)
    assert path.read_text() == good  # compilation is reproducible
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load() == ("cache", path)


def test_entries_for_other_sources_are_removed(cache):
    _, path = load()
    stale = cache / "datapath-0123456789abcdef01234567.json"
    stale.write_text("{}")
    os.chmod(stale, 0o600)
    objects.load(SOURCE + "\n/* changed */\n", PROGRAMS).close()
    assert not stale.exists() and not path.exists() and len(list(cache.glob("datapath-*.json"))) == 1


def test_headers_count_by_content_not_by_place(cache, tmp_path):
    source = '#include "port.h"\n' + SOURCE.replace("ctx->user_port", "ctx->user_port + PORT_OFFSET")
    first, second = tmp_path / "checkout-1", tmp_path / "checkout-2"
    for directory in (first, second):
        directory.mkdir()
        (directory / "port.h").write_text("#define PORT_OFFSET 0\n")

    def origin(directory):
        loaded = objects.load(source, PROGRAMS, directory)
        loaded.close()
        return loaded.origin

    assert [origin(first), origin(second)] == ["compiled", "cache"]  # same text, another place
    (second / "port.h").write_text("#define PORT_OFFSET 1\n")
    assert origin(second) == "compiled"  # a header changed: the cached code is not this code


def test_the_mirrors_are_checked_member_by_member_against_the_compiled_btf(monkeypatch):
    """A mirror whose members sit at other offsets than the compiler chose is refused by name,
    even when its size is right."""
    from accel.ebpf import compiled, maps

    class Drifted(ctypes.Structure):  # Origin with kind and port swapped: same size, other layout
        _fields_ = [
            ("addr", maps.U8x16),
            ("kind", ctypes.c_uint8),
            ("role", ctypes.c_uint8),
            ("port", ctypes.c_uint16),
            ("pad", ctypes.c_uint8 * 4),
        ]

    assert ctypes.sizeof(Drifted) == ctypes.sizeof(maps.Origin)
    monkeypatch.setitem(maps.MIRRORS, "handoffs", (maps.Tuple, Drifted))
    with pytest.raises(
        compiled.DatapathError, match="map handoffs value: member kind: offset 18 in the BPF object, 16 in the mirror"
    ):
        compiled.Compiled.load()


def test_a_struct_mirror_without_a_map_btf_is_checked_by_its_name(monkeypatch):
    """`listeners` is a hand-declared sockhash with no BTF of its own: its key's mirror is checked
    against the struct of that name, and a drifted one is refused."""
    from accel.ebpf import compiled, maps

    class Drifted(ctypes.Structure):  # ListenerKey with port and pad swapped: same size, other layout
        _fields_ = [
            ("netns", ctypes.c_uint64),
            ("family", ctypes.c_uint32),
            ("pad", ctypes.c_uint16),
            ("port", ctypes.c_uint16),
        ]

    monkeypatch.setitem(maps.STRUCT_MIRRORS, "accel_listener_key", Drifted)
    with pytest.raises(
        compiled.DatapathError,
        match="struct accel_listener_key: member port: offset 12 in the BPF object, 14 in the mirror",
    ):
        compiled.Compiled.load()


def test_the_datapath_captures_when_loaded_from_the_cache(cache):
    spec = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS), {})
    plan = LabPlan(service_addresses=("203.0.113.10",), sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337))
    origins = []
    with Lab(plan) as lab:
        pod = lab.pods["pod"]
        for token in ("first", "second"):
            backend = get_backend("ebpf")
            backend.apply(pod, spec)
            try:
                origins.append(backend.status(pod)["programs_from"])
                lab.client("pod", proto="tcp", dst="203.0.113.10", port=8080, token=token, uid=1000, gid=1000)
                assert [e["agent"] for e in lab.events(token)] == ["sidecar", "remote"]
            finally:
                backend.remove(pod)
    assert origins == ["compiled", "cache"]
