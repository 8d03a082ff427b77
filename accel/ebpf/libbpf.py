"""What bcc's Python API lacks, from libbpf (Debian's libbpf1) through ctypes.

bpf_link attachments (cgroup hooks and sk_lookup), raw map updates (bcc has no SOCKHASH
table), program loads and map creation (for the compiled-program cache and the probes), BTF,
and pidfd_getfd to borrow a proxy's listening socket. Errors come back as OSError with the
kernel's errno. The structures the calls take and fill in: libbpf_structs.py.
"""

from __future__ import annotations

import ctypes
import os

from .libbpf_structs import BtfInfo, LinkInfo, MapCreateOpts, MapInfo, ProgInfo, ProgLoadOpts, ProgStats, TestRunOpts

_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
_libc = ctypes.CDLL(None, use_errno=True)

# (program and attach types: accel/ebpf/programs.py)
# enum bpf_map_type
MAP_HASH = 1
MAP_LRU_HASH = 9
MAP_LPM_TRIE = 11
MAP_SOCKHASH = 18
MAP_SK_STORAGE = 24
# enum bpf_func_id
FUNC_GET_CURRENT_UID_GID = 15
FUNC_SK_STORAGE_GET, FUNC_SK_STORAGE_DELETE = 107, 108
FUNC_GET_NETNS_COOKIE = 122
FUNC_MSG_REDIRECT_HASH = 71
FUNC_SK_ASSIGN = 124
FUNC_SET_RETVAL = 187
BPF_ANY = 0
SYS_PIDFD_GETFD = 438


def _error(what: str, result: int = -1) -> OSError:
    """The OSError of a call that just failed, with the kernel's errno (else -result)."""
    error = ctypes.get_errno() or -result
    return OSError(error, f"{what}: {os.strerror(error)}")


def _check(result: int, what: str) -> int:
    if result < 0:
        raise _error(what, result)
    return result


_lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_lib.bpf_link_create.restype = ctypes.c_int


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """A bpf_link from a program to a cgroup or a network namespace: closing it detaches."""
    return _check(_lib.bpf_link_create(prog_fd, target_fd, attach_type, None), "bpf_link_create")


for _name in ("bpf_map_update_elem", "bpf_map_lookup_elem"):
    getattr(_lib, _name).restype = ctypes.c_int
_lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
_lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
_lib.bpf_map_delete_elem.restype = ctypes.c_int
_lib.bpf_map_get_next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_lib.bpf_map_get_next_key.restype = ctypes.c_int


def map_update(map_fd: int, key, value, flags: int = BPF_ANY) -> None:
    _check(_lib.bpf_map_update_elem(map_fd, ctypes.byref(key), ctypes.byref(value), flags), "map update")


def map_delete(map_fd: int, key) -> bool:
    """Delete a key; False if it was not there."""
    if _lib.bpf_map_delete_elem(map_fd, ctypes.byref(key)) == 0:
        return True
    if ctypes.get_errno() == 2:  # ENOENT
        return False
    raise _error("map delete")


def map_lookup(map_fd: int, key, value_type):
    value = value_type()
    if _lib.bpf_map_lookup_elem(map_fd, ctypes.byref(key), ctypes.byref(value)) == 0:
        return value
    if ctypes.get_errno() == 2:
        return None
    raise _error("map lookup")


def map_keys(map_fd: int, key_type) -> list:
    keys: list = []
    previous = None
    while True:
        key = key_type()
        if (
            _lib.bpf_map_get_next_key(
                map_fd, ctypes.byref(previous) if previous is not None else None, ctypes.byref(key)
            )
            != 0
        ):
            return keys
        keys.append(key)
        previous = key


_lib.bpf_prog_load.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.POINTER(ProgLoadOpts),
]
_lib.bpf_prog_load.restype = ctypes.c_int


_lib.bpf_map_create.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.c_uint32,
    ctypes.c_void_p,
]
_lib.bpf_map_create.restype = ctypes.c_int


def pidfd_getfd(pid: int, fd: int) -> int:
    """A copy, in this process, of another process's file descriptor (pidfd_getfd(2), Linux 5.6)."""
    pidfd = os.pidfd_open(pid)
    try:
        return _check(_libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0), f"pidfd_getfd({pid}, {fd})")
    finally:
        os.close(pidfd)


# -- object info, BTF, and named loads: what the per-node cache of compiled programs needs -----

_lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
_lib.bpf_obj_get_info_by_fd.restype = ctypes.c_int
_lib.bpf_btf_get_fd_by_id.argtypes = [ctypes.c_uint32]
_lib.bpf_btf_get_fd_by_id.restype = ctypes.c_int
_lib.bpf_btf_load.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_lib.bpf_btf_load.restype = ctypes.c_int


def _info(fd: int, info) -> None:
    length = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(length)), "bpf_obj_get_info_by_fd")


def map_info(map_fd: int) -> MapInfo:
    info = MapInfo()
    _info(map_fd, info)
    return info


def btf_data(btf_id: int) -> bytes:
    """The raw BTF blob the kernel holds under this id (what a loader uploaded)."""
    fd = _check(_lib.bpf_btf_get_fd_by_id(btf_id), f"bpf_btf_get_fd_by_id({btf_id})")
    try:
        info = BtfInfo()
        _info(fd, info)  # first call: the size
        buffer = ctypes.create_string_buffer(info.btf_size)
        info = BtfInfo(btf=ctypes.addressof(buffer), btf_size=len(buffer))
        _info(fd, info)
        return buffer.raw[: info.btf_size]
    finally:
        os.close(fd)


def btf_load(data: bytes) -> int:
    buffer = ctypes.create_string_buffer(data, len(data))
    return _check(_lib.bpf_btf_load(buffer, len(data), None), "bpf_btf_load")


def map_create(name: str, info: dict, btf_fd: int = 0) -> int:
    """A map as `info` defines it (type, key_size, value_size, max_entries, map_flags, and for a
    typed map the BTF key and value type ids, which come from btf_fd)."""
    opts = MapCreateOpts(sz=ctypes.sizeof(MapCreateOpts), map_flags=info["map_flags"])
    if info.get("btf_value_type_id"):
        opts.btf_fd, opts.btf_key_type_id = btf_fd, info["btf_key_type_id"]
        opts.btf_value_type_id = info["btf_value_type_id"]
    return _check(
        _lib.bpf_map_create(
            info["type"],
            name.encode()[:15],
            info["key_size"],
            info["value_size"],
            info["max_entries"],
            ctypes.byref(opts),
        ),
        f"bpf_map_create({name})",
    )


def prog_load(name: str, prog_type: int, attach_type: int, instructions: bytes, license: str) -> int:
    """Load a program under its own name; a verifier refusal comes back with the verifier's log."""
    opts = ProgLoadOpts(sz=ctypes.sizeof(ProgLoadOpts), expected_attach_type=attach_type, log_level=0)
    buffer = ctypes.create_string_buffer(instructions, len(instructions))
    fd = _lib.bpf_prog_load(
        prog_type, name.encode()[:15], license.encode(), buffer, len(instructions) // 8, ctypes.byref(opts)
    )
    if fd >= 0:
        return fd
    error = ctypes.get_errno()
    log = ctypes.create_string_buffer(1 << 20)  # load again, only to hear why
    opts = ProgLoadOpts(
        sz=ctypes.sizeof(ProgLoadOpts),
        expected_attach_type=attach_type,
        log_level=1,
        log_size=len(log),
        log_buf=ctypes.cast(log, ctypes.c_char_p),
    )
    _lib.bpf_prog_load(
        prog_type, name.encode()[:15], license.encode(), buffer, len(instructions) // 8, ctypes.byref(opts)
    )
    tail = log.value.decode(errors="replace").strip().splitlines()[-3:]
    raise OSError(error, f"loading {name}: {os.strerror(error)}" + (f": {' / '.join(tail)}" if tail else ""))


_lib.libbpf_num_possible_cpus.restype = ctypes.c_int


def possible_cpus() -> int:
    """How many values a per-CPU map holds for each key."""
    return _check(_lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


# -- pins and links: what a datapath that outlives its process needs ------------------------------

_lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
_lib.bpf_obj_pin.restype = ctypes.c_int
_lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
_lib.bpf_obj_get.restype = ctypes.c_int
_lib.bpf_link_update.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_lib.bpf_link_update.restype = ctypes.c_int
_lib.bpf_link_detach.argtypes = [ctypes.c_int]
_lib.bpf_link_detach.restype = ctypes.c_int


def obj_pin(fd: int, path: str) -> None:
    """Pin a program, map or link in bpffs: it lives on after every descriptor is closed."""
    _check(_lib.bpf_obj_pin(fd, path.encode()), f"pinning {path}")


def obj_get(path: str) -> int:
    """A descriptor of a pinned object."""
    return _check(_lib.bpf_obj_get(path.encode()), f"opening the pin {path}")


def link_update(link_fd: int, prog_fd: int) -> None:
    """Swap the program behind a link in one step (BPF_LINK_UPDATE): no moment without one."""
    _check(_lib.bpf_link_update(link_fd, prog_fd, None), "bpf_link_update")


def link_detach(link_fd: int) -> None:
    """Detach a link's program now, even while pins or descriptors still hold the link."""
    _check(_lib.bpf_link_detach(link_fd), "bpf_link_detach")


def prog_info(prog_fd: int) -> ProgInfo:
    info = ProgInfo()
    _info(prog_fd, info)
    return info


def link_info(link_fd: int) -> LinkInfo:
    """id, program id, and for a cgroup link the cgroup id (for netns links the netns inode)."""
    info = LinkInfo()
    _info(link_fd, info)
    return info


def prog_stats(prog_id: int) -> tuple[int, int]:
    """(run time in ns, runs) of a program by id, counted while statistics are enabled."""
    fd = prog_get_fd_by_id(prog_id)
    try:
        info = ProgStats()
        _info(fd, info)
        return info.run_time_ns, info.run_cnt
    finally:
        os.close(fd)


_lib.bpf_enable_stats.argtypes = [ctypes.c_int]
_lib.bpf_enable_stats.restype = ctypes.c_int
STATS_RUN_TIME = 0


def enable_stats() -> int:
    """BPF_ENABLE_STATS: every program's run time is counted while the returned fd is open (and
    only then: closing it turns the counting off, unlike the kernel.bpf_stats_enabled sysctl)."""
    return _check(_lib.bpf_enable_stats(STATS_RUN_TIME), "bpf_enable_stats")


_lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(TestRunOpts)]
_lib.bpf_prog_test_run_opts.restype = ctypes.c_int


def prog_test_run(prog_fd: int, data: bytes) -> int:
    """BPF_PROG_RUN: run a program once on `data` (a packet, for the types that take one); what it
    returned."""
    buffer = ctypes.create_string_buffer(data, len(data))
    opts = TestRunOpts(
        sz=ctypes.sizeof(TestRunOpts), data_in=ctypes.cast(buffer, ctypes.c_void_p), data_size_in=len(data), repeat=1
    )
    _check(_lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "bpf_prog_test_run")
    return opts.retval


_lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
_lib.bpf_prog_get_fd_by_id.restype = ctypes.c_int


def prog_get_fd_by_id(prog_id: int) -> int:
    return _check(_lib.bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id({prog_id})")


def map_count(map_fd: int, key_size: int) -> int:
    """How many keys a map holds (walked with get_next_key; any key type)."""
    count, previous, key = 0, None, ctypes.create_string_buffer(key_size)
    following = ctypes.create_string_buffer(key_size)
    while _lib.bpf_map_get_next_key(map_fd, previous, following) == 0:
        count += 1
        ctypes.memmove(key, following, key_size)
        previous = key
    return count
