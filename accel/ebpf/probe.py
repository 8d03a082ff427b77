"""What the kernel offers the eBPF datapath, found by trying each thing, never from version strings.

Each probe loads a two-instruction program with the hook's expected attach type, creates a map of
the type (socket storage with a one-type BTF of its own), or loads a program that calls a helper
and hears whether the verifier knows the helper for that program type. Nothing is attached but
the probe's own sk_msg program to the probe's own sockhash, for the instant of the check.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..cgroup import CgroupError, cgroup2_mount
from . import libbpf, programs

RETURN_1 = bytes([0xB7, 0, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])  # r0 = 1; exit
BPF_F_NO_PREALLOC = 1
PROBE = "accel_probe"  # the name bpftool would show, for the instant a probe object exists


CAPTURE, SHORT_CIRCUIT = "capture", "short-circuit"


@dataclass(frozen=True)
class Feature:
    name: str
    ok: bool
    detail: str
    needed_for: str = CAPTURE  # or SHORT_CIRCUIT: only pods that ask for it (--sockmap) need it


def _program(prog_type: int, attach_type: int = 0) -> tuple[bool, str]:
    try:
        os.close(libbpf.prog_load(PROBE, prog_type, attach_type, RETURN_1, "Dual BSD/GPL"))
        return True, "loads"
    except OSError as error:
        return False, str(error.strerror)


def _map(map_type: int, key: int, value: int, flags: int = 0) -> tuple[bool, str]:
    try:
        os.close(
            libbpf.map_create(
                PROBE, {"type": map_type, "key_size": key, "value_size": value, "max_entries": 16, "map_flags": flags}
            )
        )
        return True, "creates"
    except OSError as error:
        return False, str(error.strerror)


def _int_btf() -> bytes:
    """The smallest BTF: one type, a signed 32-bit int named "int" (id 1)."""
    types = struct.pack("<IIII", 1, 1 << 24, 4, (1 << 24) | 32)  # name "int", KIND_INT, 4 bytes; signed, 32 bits
    strings = b"\0int\0"
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def _socket_storage() -> tuple[bool, str]:
    """Socket storage maps exist only with BTF for their key and value: load some, then create one."""
    try:
        btf = libbpf.btf_load(_int_btf())
    except OSError as error:
        return False, f"BTF load: {error.strerror}"
    try:
        os.close(
            libbpf.map_create(
                PROBE,
                {
                    "type": libbpf.MAP_SK_STORAGE,
                    "key_size": 4,
                    "value_size": 4,
                    "max_entries": 0,
                    "map_flags": BPF_F_NO_PREALLOC,
                    "btf_key_type_id": 1,
                    "btf_value_type_id": 1,
                },
                btf,
            )
        )
        return True, "creates"
    except OSError as error:
        return False, str(error.strerror)
    finally:
        os.close(btf)


def _calls(prog_type: int, attach_type: int, helper: int) -> bool:
    """Whether a program of this type (and attach type) may call the helper: load one that calls
    it with zeroed arguments. The verifier refuses an unknown or forbidden helper by name; any
    other refusal (an argument it does not like) means the call itself is allowed."""
    code = b"".join(struct.pack("<BBhi", 0xB7, register, 0, 0) for register in (2, 3, 4, 5))  # r2..r5 = 0
    code += struct.pack("<BBhi", 0x85, 0, 0, helper) + RETURN_1  # call helper; r0 = 1; exit
    try:
        os.close(libbpf.prog_load(PROBE, prog_type, attach_type, code, "Dual BSD/GPL"))
        return True
    except OSError as error:
        return not any(words in str(error) for words in ("unknown func", "cannot use helper", "invalid func"))


def _helper(prog_types: dict[str, tuple[int, int]], helper: int) -> tuple[bool, str]:
    missing = [name for name, (prog_type, attach) in prog_types.items() if not _calls(prog_type, attach, helper)]
    if missing:
        return False, f"not callable from {', '.join(missing)}"
    return True, f"callable from {', '.join(prog_types)}"


def _cgroup2() -> tuple[bool, str]:
    try:
        return True, str(cgroup2_mount())
    except CgroupError as error:
        return False, str(error)


def _btf() -> tuple[bool, str]:
    path = Path("/sys/kernel/btf/vmlinux")
    return (True, str(path)) if path.exists() else (False, f"{path} missing (socket storage maps need BTF)")


def _pidfd_getfd() -> tuple[bool, str]:
    try:
        os.close(libbpf.pidfd_getfd(os.getpid(), 0))
        return True, "works"
    except OSError as error:
        return False, str(error.strerror)


def _sockmap_link() -> tuple[bool, str]:
    """An sk_msg program linked to a sockhash (BPF_LINK_TYPE_SOCKMAP), both the probe's own and
    gone at once: what a node pins, and upgrades in place."""
    try:
        program = libbpf.prog_load(
            PROBE, programs.PROG_SK_MSG, programs.ATTACH_SK_MSG_VERDICT, RETURN_1, "Dual BSD/GPL"
        )
    except OSError as error:
        return False, f"sk_msg: {error.strerror}"
    try:
        sockhash = libbpf.map_create(
            PROBE, {"type": libbpf.MAP_SOCKHASH, "key_size": 16, "value_size": 4, "max_entries": 16, "map_flags": 0}
        )
        try:
            os.close(libbpf.link_create(program, sockhash, programs.ATTACH_SK_MSG_VERDICT))
            return True, "links"
        except OSError as error:
            return False, f"{error.strerror} (Linux 6.10 or later)"
        finally:
            os.close(sockhash)
    finally:
        os.close(program)


def probe() -> list[Feature]:
    """Every kernel feature the eBPF backend needs (and its short-circuit), with whether this kernel has it."""
    sock_addr = programs.PROG_CGROUP_SOCK_ADDR
    connect = (sock_addr, programs.ATTACH_INET4_CONNECT)
    sockops = (programs.PROG_SOCK_OPS, programs.ATTACH_CGROUP_SOCK_OPS)
    sockopt = (programs.PROG_CGROUP_SOCKOPT, programs.ATTACH_CGROUP_GETSOCKOPT)
    checks = {
        "bpf syscall": lambda: _map(libbpf.MAP_HASH, 4, 4),
        "cgroup v2 mount": _cgroup2,
        "cgroup connect4/6 hooks": lambda: _all(
            _program(sock_addr, programs.ATTACH_INET4_CONNECT), _program(sock_addr, programs.ATTACH_INET6_CONNECT)
        ),
        "cgroup sendmsg/recvmsg hooks": lambda: _all(
            *(
                _program(sock_addr, a)
                for a in (
                    programs.ATTACH_UDP4_SENDMSG,
                    programs.ATTACH_UDP6_SENDMSG,
                    programs.ATTACH_UDP4_RECVMSG,
                    programs.ATTACH_UDP6_RECVMSG,
                )
            )
        ),
        "cgroup getsockopt hook": lambda: _program(programs.PROG_CGROUP_SOCKOPT, programs.ATTACH_CGROUP_GETSOCKOPT),
        "cgroup getpeername hooks": lambda: _all(
            _program(sock_addr, programs.ATTACH_INET4_GETPEERNAME),
            _program(sock_addr, programs.ATTACH_INET6_GETPEERNAME),
        ),
        "sockops": lambda: _program(programs.PROG_SOCK_OPS),
        "sk_lookup": lambda: _program(programs.PROG_SK_LOOKUP, programs.ATTACH_SK_LOOKUP),
        "LPM trie map": lambda: _map(libbpf.MAP_LPM_TRIE, 8, 1, BPF_F_NO_PREALLOC),
        "sockhash map": lambda: _map(libbpf.MAP_SOCKHASH, 16, 4),
        "LRU hash map": lambda: _map(libbpf.MAP_LRU_HASH, 8, 8),
        "socket storage map": _socket_storage,
        "netns cookie helper": lambda: _helper(
            {"sock_addr": connect, "sockops": sockops, "sockopt": sockopt}, libbpf.FUNC_GET_NETNS_COOKIE
        ),
        "caller's uid/gid in sockops (who listens)": lambda: _helper(
            {"sock_addr": connect, "sockops": sockops}, libbpf.FUNC_GET_CURRENT_UID_GID
        ),
        "socket storage helpers": lambda: _all(
            _helper({"sock_addr": connect, "sockops": sockops, "sockopt": sockopt}, libbpf.FUNC_SK_STORAGE_GET),
            _helper({"sock_addr": connect}, libbpf.FUNC_SK_STORAGE_DELETE),
        ),
        "error returns from hooks (bpf_set_retval)": lambda: _helper(
            {"sock_addr": connect, "sockopt": sockopt}, libbpf.FUNC_SET_RETVAL
        ),
        "sk_assign in sk_lookup": lambda: _helper(
            {"sk_lookup": (programs.PROG_SK_LOOKUP, programs.ATTACH_SK_LOOKUP)}, libbpf.FUNC_SK_ASSIGN
        ),
        "BTF": _btf,
        "pidfd_getfd": _pidfd_getfd,
    }
    # The short-circuit's program loads with the others (the datapath is one object)...
    sk_msg = {"sk_msg": (programs.PROG_SK_MSG, programs.ATTACH_SK_MSG_VERDICT)}
    checks.update(
        {
            "sk_msg programs": lambda: _program(programs.PROG_SK_MSG, programs.ATTACH_SK_MSG_VERDICT),
            "msg_redirect_hash, netns cookie and socket storage in sk_msg": lambda: _all(
                _helper(sk_msg, libbpf.FUNC_MSG_REDIRECT_HASH),
                _helper(sk_msg, libbpf.FUNC_GET_NETNS_COOKIE),
                _helper(sk_msg, libbpf.FUNC_SK_STORAGE_GET),
            ),
        }
    )
    return [Feature(name, *check()) for name, check in checks.items()] + short_circuit_features()


def short_circuit_features() -> list[Feature]:
    """...but runs only once linked to its map: what pods that ask for the short-circuit need."""
    return [Feature("sk_msg links to a sockhash", *_sockmap_link(), SHORT_CIRCUIT)]


def short_circuit_missing() -> list[Feature]:
    return [feature for feature in short_circuit_features() if not feature.ok]


def _all(*results: tuple[bool, str]) -> tuple[bool, str]:
    failed = [detail for ok, detail in results if not ok]
    return (False, "; ".join(failed)) if failed else (True, "; ".join(dict.fromkeys(d for _, d in results)))


def missing(short_circuit: bool = False) -> list[Feature]:
    """What the kernel lacks for capture (and, with `short_circuit`, for the short-circuit too)."""
    return [f for f in probe() if not f.ok and (f.needed_for == CAPTURE or short_circuit)]
