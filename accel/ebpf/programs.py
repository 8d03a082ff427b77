"""The eBPF datapath's programs: what each is, where it attaches, what it does. Pure (no libbpf, no
kernel): the loader attaches from this table, and `accel render --backend ebpf` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass

# enum bpf_prog_type
PROG_SOCK_OPS = 13
PROG_SK_MSG = 16
PROG_CGROUP_SOCK_ADDR = 18
PROG_CGROUP_SOCKOPT = 25
PROG_SK_LOOKUP = 30
# enum bpf_attach_type
ATTACH_CGROUP_SOCK_OPS = 3
ATTACH_SK_MSG_VERDICT = 7
ATTACH_INET4_CONNECT, ATTACH_INET6_CONNECT = 10, 11
ATTACH_UDP4_SENDMSG, ATTACH_UDP6_SENDMSG = 14, 15
ATTACH_UDP4_RECVMSG, ATTACH_UDP6_RECVMSG = 19, 20
ATTACH_CGROUP_GETSOCKOPT = 21
ATTACH_INET4_GETPEERNAME, ATTACH_INET6_GETPEERNAME = 29, 30
ATTACH_SK_LOOKUP = 36

NODE_CGROUP = "node cgroup"  # attached once, at the cgroup above every pod
POD_NETNS = "pod's netns"  # one link (and program copy) per pod
SHORTCUTS_MAP = "shortcuts map"  # attached to the sockhash of short-circuited sockets: runs only for them


@dataclass(frozen=True)
class Program:
    name: str  # its function in bpf/*.c
    hook: str  # as bpftool names where it runs
    prog_type: int
    attach_type: int
    attached_at: str
    does: str


PROGRAMS = (
    Program(
        "connect4",
        "cgroup/connect4",
        PROG_CGROUP_SOCK_ADDR,
        ATTACH_INET4_CONNECT,
        NODE_CGROUP,
        "TCP connect -> the proxy on a port of its destination's own (DNS over TCP -> DNS port)",
    ),
    Program(
        "connect6",
        "cgroup/connect6",
        PROG_CGROUP_SOCK_ADDR,
        ATTACH_INET6_CONNECT,
        NODE_CGROUP,
        "the same for IPv6 sockets, IPv4-mapped addresses as IPv4",
    ),
    Program(
        "sendmsg4",
        "cgroup/sendmsg4",
        PROG_CGROUP_SOCK_ADDR,
        ATTACH_UDP4_SENDMSG,
        NODE_CGROUP,
        "DNS over UDP -> DNS port",
    ),
    Program(
        "sendmsg6",
        "cgroup/sendmsg6",
        PROG_CGROUP_SOCK_ADDR,
        ATTACH_UDP6_SENDMSG,
        NODE_CGROUP,
        "the same for IPv6 sockets",
    ),
    Program(
        "recvmsg4",
        "cgroup/recvmsg4",
        PROG_CGROUP_SOCK_ADDR,
        ATTACH_UDP4_RECVMSG,
        NODE_CGROUP,
        "DNS replies appear to come from the server asked",
    ),
    Program(
        "recvmsg6",
        "cgroup/recvmsg6",
        PROG_CGROUP_SOCK_ADDR,
        ATTACH_UDP6_RECVMSG,
        NODE_CGROUP,
        "the same for IPv6 sockets",
    ),
    Program(
        "getpeername4",
        "cgroup/getpeername4",
        PROG_CGROUP_SOCK_ADDR,
        ATTACH_INET4_GETPEERNAME,
        NODE_CGROUP,
        "the app's getpeername() returns the original destination",
    ),
    Program(
        "getpeername6",
        "cgroup/getpeername6",
        PROG_CGROUP_SOCK_ADDR,
        ATTACH_INET6_GETPEERNAME,
        NODE_CGROUP,
        "the same for IPv6 sockets",
    ),
    Program(
        "getsockopt",
        "cgroup/getsockopt",
        PROG_CGROUP_SOCKOPT,
        ATTACH_CGROUP_GETSOCKOPT,
        NODE_CGROUP,
        "SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST for the proxy; every other call passes through",
    ),
    Program(
        "sockops",
        "sockops",
        PROG_SOCK_OPS,
        ATTACH_CGROUP_SOCK_OPS,
        NODE_CGROUP,
        "hands a redirected connection's record from the app's socket to the proxy's; registers the proxy's listeners",
    ),
    Program(
        "inbound",
        "sk_lookup",
        PROG_SK_LOOKUP,
        ATTACH_SK_LOOKUP,
        POD_NETNS,
        "captured connects -> the proxy's outbound listener, inbound TCP -> its inbound "
        "listener, no NAT (a copy per pod)",
    ),
    Program(
        "shortcut",
        "sk_msg",
        PROG_SK_MSG,
        ATTACH_SK_MSG_VERDICT,
        SHORTCUTS_MAP,
        "data between an app and its proxy straight into the other end's receive queue (pods with the short-circuit)",
    ),
)
BY_NAME = {program.name: program for program in PROGRAMS}
CGROUP_PROGRAMS = tuple(p for p in PROGRAMS if p.attached_at == NODE_CGROUP)
SK_LOOKUP = BY_NAME["inbound"]
SHORTCUT = BY_NAME["shortcut"]
# What a node pins as a link of its own: the cgroup programs and the map's program.
LINKED_PROGRAMS = (*CGROUP_PROGRAMS, SHORTCUT)
