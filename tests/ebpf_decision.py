"""The datapath's capture decisions (bpf/decide.h) under BPF_PROG_RUN, asked what the packet
tracer is asked: one flow of a pod with a spec, and the verdict.

tests/bpf/decide_run.c is compiled with the datapath's own map declarations (bpf/accel.h) and
map readers (bpf/lookups.c); a pod's entries are written by the datapath's own code
(maps.pod_entries, Datapath.write_spec/write_namespace/write_pod), so what runs is what a pod
gets, minus the hooks' plumbing: connect4 and sk_lookup call exactly these two functions."""

from __future__ import annotations

import ctypes
import ipaddress
from contextlib import contextmanager
from pathlib import Path

from accel.ebpf import btf, libbpf, objects
from accel.ebpf.compiled import BPF_DIR, CFLAGS, Compiled
from accel.ebpf.datapath import Datapath
from accel.ebpf.maps import U8x16, mapped, namespace_entries, new_config_id, pod_entries
from accel.spec import CaptureSpec
from accel.trace import UNTOUCHED, Flow, Verdict

SOURCE = Path(__file__).resolve().parent / "bpf" / "decide_run.c"
PROG_XDP = 6
VERDICT_PASS, VERDICT_OUTBOUND, VERDICT_INBOUND, VERDICT_DNS = 0, 1, 2, 3  # bpf/decide.h
DIRECTION_OUTBOUND, DIRECTION_INBOUND, NO_POD = 0, 1, 100  # tests/bpf/decide_run.c
ETHERNET = bytes(14)  # XDP's test run wants a packet at least this long; the program ignores it


class AccelFlow(ctypes.Structure):  # struct accel_flow (bpf/decide.h)
    _fields_ = [
        ("dst", U8x16),
        ("port", ctypes.c_uint16),
        ("tcp", ctypes.c_uint8),
        ("v4", ctypes.c_uint8),
        ("passthrough", ctypes.c_uint8),
        ("self", ctypes.c_uint8),
        ("local", ctypes.c_uint8),
        ("from_loopback", ctypes.c_uint8),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
    ]


class Request(ctypes.Structure):  # struct decide_request (tests/bpf/decide_run.c)
    _fields_ = [
        ("netns", ctypes.c_uint64),
        ("flow", AccelFlow),
        ("direction", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class Decisions:
    """The compiled decision program and its maps; pods are added with pod()."""

    def __init__(self):
        source = (BPF_DIR / "lookups.c").read_text() + SOURCE.read_text()
        loaded = objects.load(source, {"decide_run": (PROG_XDP, 0)}, BPF_DIR, CFLAGS)
        try:
            self.compiled = Compiled(loaded)
            self.program = loaded.programs["decide_run"]
            self.requests = loaded.map_fd("decide_requests")
            self._check_mirror(loaded)
        except BaseException:
            loaded.close()
            raise
        self.datapath = Datapath(self.compiled)
        self._next_cookie = 0x5E5E0000

    def _check_mirror(self, loaded: objects.Objects) -> None:
        definition = loaded.maps["decide_requests"]
        problems = btf.mismatches(btf.Btf(loaded.btf[definition["btf"]]), definition["btf_value_type_id"], Request)
        if problems:
            raise AssertionError(f"tests/ebpf_decision.py's Request mirrors decide_run.c wrongly: {problems}")

    def close(self) -> None:
        self.compiled.close()

    @contextmanager
    def pod(self, spec: CaptureSpec, local: list[str], addresses: list[str]):
        """A pod with `spec` whose namespace has these local networks and source addresses, as the
        datapath writes one; yields what asks it (see Pod.verdict). Its entries go afterwards."""
        self._next_cookie += 1
        cookie = self._next_cookie
        entries = pod_entries(spec, new_config_id())
        namespace = namespace_entries(cookie, local, [ipaddress.ip_address(a) for a in addresses])
        self.datapath.write_spec(entries)
        self.datapath.write_namespace(None, namespace)
        self.datapath.write_pod(cookie, entries.pod)
        try:
            yield Pod(self, spec, cookie)
        finally:
            libbpf.map_delete(self.compiled.maps["pods"], ctypes.c_uint64(cookie))
            self.datapath._delete_config(entries.config)
            for key in namespace.local:
                libbpf.map_delete(self.compiled.maps["prefixes"], key)
            libbpf.map_delete(self.compiled.maps["sources"], ctypes.c_uint64(cookie))

    def run(self, request: Request) -> int:
        libbpf.map_update(self.requests, ctypes.c_uint32(0), request)
        return libbpf.prog_test_run(self.program, ETHERNET)


class Pod:
    def __init__(self, decisions: Decisions, spec: CaptureSpec, cookie: int):
        self.decisions, self.spec, self.cookie = decisions, spec, cookie

    def raw(self, flow: Flow) -> int:
        """The program's answer (a VERDICT_*) for the tracer's flow: outbound as connect4 (or
        sendmsg4/6) fills its flow; inbound as sk_lookup asks, only for TCP, as inbound.c does."""
        address = ipaddress.ip_address(flow.src if flow.direction == "inbound" else flow.dst)
        if flow.direction == "inbound" and flow.protocol != "tcp":
            return VERDICT_PASS  # inbound.c leaves anything but TCP before deciding
        source = ipaddress.ip_address(flow.src)
        passthrough = source == ipaddress.ip_address("127.0.0.6" if source.version == 4 else "::6")
        request = Request(
            netns=self.cookie, direction=DIRECTION_INBOUND if flow.direction == "inbound" else DIRECTION_OUTBOUND
        )
        request.flow.dst = U8x16(*mapped(address))
        request.flow.port = flow.dport
        request.flow.tcp = flow.protocol == "tcp"
        request.flow.v4 = address.version == 4
        request.flow.passthrough = passthrough and flow.direction == "outbound"
        request.flow.from_loopback = source.is_loopback and flow.direction == "outbound"
        request.flow.uid = flow.uid or 0
        request.flow.gid = flow.gid or 0
        request.flow.mark = flow.mark
        answer = self.decisions.run(request)
        if answer == NO_POD:
            raise AssertionError(f"pod {self.cookie:#x} is not in the maps")
        return answer

    def verdict(self, flow: Flow) -> Verdict:
        """The answer as the tracer's Verdict (kind and port; how it is delivered is not compared)."""
        answer = self.raw(flow)
        if answer == VERDICT_OUTBOUND:
            return Verdict.outbound(self.spec.proxy_port)
        if answer == VERDICT_INBOUND:
            return Verdict.inbound(self.spec.inbound_capture_port)
        if answer == VERDICT_DNS:
            from accel import constants

            return Verdict.dns(constants.DNS_PROXY_PORT)
        assert answer == VERDICT_PASS, answer
        return UNTOUCHED
