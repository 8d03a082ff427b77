"""The sockops program's account by callback: how often the kernel calls it for each op, and
what each call costs.

bpf_stats gives a program's runs and time, not which op a run was for; this kernel has no
kprobes and refuses tracing (fentry) programs, so the datapath's program cannot be watched from
outside. Instead two small sockops programs of the benchmark's own bracket it. Cgroup programs
run the lowest cgroup's first, then its parent's, each cgroup's in the order they were linked:

    pod's cgroup:  overhead_start, overhead_end, op_start   (linked here, in this order)
    node's cgroup: the datapath's sockops, op_end           (op_end linked after the datapath's)

op_start counts the call by op and notes the time; op_end adds the time since to the op's total.
That span is the datapath's program plus one hand-over between programs and one clock read, which
overhead_start/overhead_end measure on their own (the same hand-over, nothing between) and which
is taken off. A call that another socket's callback interrupts on the same CPU is not timed (the
inner one takes the slot); its count still is. Only the lab's own cgroups are linked, and only for
the run that measures: closing the links detaches.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

# enum bpf_sock_ops_op (include/uapi/linux/bpf.h)
SOCK_OPS = (
    "VOID",
    "TIMEOUT_INIT",
    "RWND_INIT",
    "TCP_CONNECT",
    "ACTIVE_ESTABLISHED",
    "PASSIVE_ESTABLISHED",
    "NEEDS_ECN",
    "BASE_RTT",
    "RTO",
    "RETRANS",
    "STATE",
    "TCP_LISTEN",
    "RTT",
    "PARSE_HDR_OPT",
    "HDR_OPT_LEN",
    "WRITE_HDR_OPT",
)

SPAN_KINDS = ("op_timed", "op_ns", "overhead_timed", "overhead_ns")  # the enum in SOURCE
SOURCE = r"""
#include <uapi/linux/bpf.h>
#define OPS %d
/* spans[] holds, op by op: the bracketed calls timed, their ns, the overhead pairs timed, their ns */
enum { OP_TIMED, OP_NS, OVERHEAD_TIMED, OVERHEAD_NS, KINDS };
/* slot 0: op_start -> op_end, around the datapath; slot 1: overhead_start -> overhead_end */
BPF_PERCPU_ARRAY(started, u64, 2);
BPF_PERCPU_ARRAY(op_calls, u64, OPS);
BPF_PERCPU_ARRAY(spans, u64, KINDS * OPS);

static __always_inline void start(int slot)
{
	u64 *t = started.lookup(&slot);

	if (t)
		*t = bpf_ktime_get_ns();
}

/* the span since start(slot), added to the op's entries of kind `timed` and the one after it */
static __always_inline void stop(int slot, u32 op, int timed)
{
	u64 now = bpf_ktime_get_ns();
	u64 *t = started.lookup(&slot);

	if (!t || !*t || op >= OPS)
		return;
	u64 span = now - *t;
	int count_key = timed * OPS + op, ns_key = (timed + 1) * OPS + op;

	*t = 0;
	u64 *count = spans.lookup(&count_key);
	u64 *ns = spans.lookup(&ns_key);

	if (count && ns) {
		*count += 1;
		*ns += span;
	}
}

int overhead_start(struct bpf_sock_ops *skops) { start(1); return 1; }

int overhead_end(struct bpf_sock_ops *skops)
{
	stop(1, skops->op, OVERHEAD_TIMED);
	return 1;
}

int op_start(struct bpf_sock_ops *skops)
{
	int key = skops->op;
	u64 *calls = op_calls.lookup(&key);

	if (calls)
		*calls += 1;
	start(0);
	return 1;
}

int op_end(struct bpf_sock_ops *skops)
{
	stop(0, skops->op, OP_TIMED);
	return 1;
}
""" % len(SOCK_OPS)


class OpAccountError(RuntimeError):
    pass


class OpAccount:
    """The bracketing programs, loaded; linked() around a run, then read()."""

    def __init__(self):
        try:
            from bcc import BPF  # Debian's python3-bpfcc
        except ImportError as error:
            raise OpAccountError(f"the sockops account needs bcc (python3-bpfcc): {error}") from None
        self._bpf = BPF(text=SOURCE.encode())
        self._programs = {
            name: self._bpf.load_func(name.encode(), BPF.SOCK_OPS).fd
            for name in ("overhead_start", "overhead_end", "op_start", "op_end")
        }

    def close(self) -> None:
        self._bpf.cleanup()

    def __enter__(self) -> OpAccount:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def linked(self, pod_cgroups: list[Path], node_cgroup: Path) -> Iterator[None]:
        """The programs linked to the pods' cgroups and the node's (where the datapath already is)
        for the duration; every link closed after, also on failure."""
        from ..ebpf import libbpf, programs

        links: list[int] = []
        try:
            for cgroup, names in [
                *((path, ("overhead_start", "overhead_end", "op_start")) for path in pod_cgroups),
                (node_cgroup, ("op_end",)),
            ]:
                fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    for name in names:
                        links.append(libbpf.link_create(self._programs[name], fd, programs.ATTACH_CGROUP_SOCK_OPS))
                finally:
                    os.close(fd)
            yield
        finally:
            for link in reversed(links):
                os.close(link)

    def read(self, connections: int) -> dict[str, dict[str, float]]:
        """Per op the datapath saw: calls a connection, and ns a call (the hand-over taken off)
        with its total a connection."""
        ops = len(SOCK_OPS)
        totals = {"op_calls": [self._sum("op_calls", op) for op in range(ops)]}
        for kind, name in enumerate(SPAN_KINDS):
            totals[name] = [self._sum("spans", kind * ops + op) for op in range(ops)]
        return account(totals, connections)

    def _sum(self, table: str, index: int) -> int:
        return int(self._bpf[table.encode()].sum(ctypes.c_int(index)).value)


def account(totals: dict[str, list[int]], connections: int) -> dict[str, dict[str, float]]:
    """The counters' totals (op_calls, op_timed, op_ns, overhead_timed, overhead_ns, each indexed
    by op) as {op name: {runs, ns_per_run, ns}} per connection, ops never called left out, the
    most costly first. ns_per_run is never below 0: an op too cheap to tell from the hand-over."""
    connections = max(connections, 1)
    rows = {}
    for op, name in enumerate(SOCK_OPS):
        calls = totals["op_calls"][op]
        if not calls:
            continue
        timed, overhead_timed = totals["op_timed"][op], totals["overhead_timed"][op]
        per_run = totals["op_ns"][op] / timed if timed else 0.0
        overhead = totals["overhead_ns"][op] / overhead_timed if overhead_timed else 0.0
        net = max(per_run - overhead, 0.0)
        rows[name] = {
            "runs": round(calls / connections, 2),
            "ns_per_run": round(net, 1),
            "ns": round(net * calls / connections, 1),
        }
    return dict(sorted(rows.items(), key=lambda item: (-item[1]["ns"], -item[1]["runs"], item[0])))
