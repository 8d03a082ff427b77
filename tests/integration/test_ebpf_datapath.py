"""What the eBPF datapath must never do, beyond the comparison matrix: misroute a connection whose
record was lost, hand inbound traffic to a socket that is not the proxy's, open a window during a
spec change or a removal, let a connection out uncaptured when it cannot keep its record, or keep
an old destination on a reused socket. Each test sends real traffic through a lab."""

import json
import threading

import pytest

from accel import inputs, process
from accel.backends import get_backend
from accel.ebpf import libbpf
from accel.ebpf.maps import Origin, Tuple
from accel.lab import Lab, LabPlan, MeshedPod, SidecarConfig
from accel.lab.wait import wait_for

pytestmark = pytest.mark.privileged

STOCK = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS), {})
STOCK_IPV6 = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS), {}, enable_ipv6=True)
APP = 1000
SIDECAR = SidecarConfig(15001, 15006, 15053, 1337, 1337)
SERVICE = "203.0.113.10"


def start_squatter(lab, code):
    lab.start("pod", ["/usr/bin/python3", "-c", code], uid=APP, gid=APP)
    assert wait_for(lambda: "[::]:15006" in process.run(["ss", "-Hltn"], netns=lab.pods["pod"].netns).stdout)


def sidecar_answer(lab, token):
    return next((e["so_original_dst"] for e in lab.events(token) if e["role"] == "sidecar"), None)


def test_a_lost_record_is_answered_with_enoent_never_a_made_up_destination():
    """When a redirected connection's record cannot be handed to the proxy's side (here: the
    node-wide handoff map is full), the proxy hears ENOENT, as from netfilter without an entry,
    never its own address (which would send it into itself)."""
    with Lab(LabPlan(service_addresses=(SERVICE,), sidecar=SIDECAR)) as lab:
        backend, pod = get_backend("ebpf"), lab.pods["pod"]
        backend.apply(pod, STOCK)
        try:
            handoffs = backend._pods[pod.netns].compiled.maps["handoffs"]
            info = libbpf.map_info(handoffs)
            fillers = [
                Tuple(netns=0xF111, local_port=i % 65536, remote_port=i // 65536) for i in range(info.max_entries)
            ]
            for key in fillers:
                libbpf.map_update(handoffs, key, Origin())
            lab.client("pod", proto="tcp", dst=SERVICE, port=8080, token="lost", uid=APP, gid=APP)
            lost = sidecar_answer(lab, "lost")
            counters = backend.status(pod)["counters"]
            for key in fillers:
                libbpf.map_delete(handoffs, key)
            lab.client("pod", proto="tcp", dst=SERVICE, port=8080, token="found", uid=APP, gid=APP)
            found = sidecar_answer(lab, "found")
        finally:
            backend.remove(pod)
    assert lost == "error:ENOENT"
    assert (counters["handoff_failed"], counters["lost"]) == (1, 1)
    assert found == f"{SERVICE}:8080"


@pytest.mark.parametrize("order", ["listening-before-apply", "listening-after-apply"])
def test_only_the_proxys_sockets_take_captured_inbound_traffic(order):
    """An app socket on the inbound capture port never becomes the inbound listener. Here the
    proxy listens on IPv4 only and an app (uid 1000) listens on [::]:15006: captured IPv6 inbound
    is refused rather than handed to the app. (iptables would hand it to the app: REDIRECT
    delivers to whichever socket holds the port.)"""
    plan = LabPlan(ipv6=True, sidecar=SIDECAR, meshed=(MeshedPod("pod", inbound_families=(4,)),))
    squatter = (
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET6)\n"
        "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
        "s.bind(('::', 15006)); s.listen(); time.sleep(600)\n"
    )
    with Lab(plan) as lab:
        backend, pod = get_backend("ebpf"), lab.pods["pod"]
        if order == "listening-before-apply":
            start_squatter(lab, squatter)
        backend.apply(pod, STOCK_IPV6)
        try:
            if order == "listening-after-apply":
                start_squatter(lab, squatter)
            v6 = lab.client("remote", proto="tcp", dst="2001:db8:18::10", port=8080, token="v6", uid=0, gid=0)
            v4 = lab.client("remote", proto="tcp", dst="198.18.0.10", port=8080, token="v4", uid=0, gid=0)
            v4_path = [e["agent"] for e in lab.events("v4")]
            status = backend.status(pod)
        finally:
            backend.remove(pod)
    assert v6["result"] == "refused"
    assert v4["result"] == "ok" and v4_path == ["sidecar", "pod"]
    assert status["listeners"]["inbound"] == ["ipv4"]
    assert status["counters"]["refused"] == 1
    assert status["counters"]["foreign_listener"] == (1 if order == "listening-after-apply" else 0)


def run_traffic(lab, tokens, results):
    """Connections from the app to the service, four at a time, in a thread of their own."""
    targets = [{"dst": SERVICE, "port": 8080, "token": t} for t in tokens]
    results.extend(lab.burst("pod", targets, concurrency=4, uid=APP, gid=APP, timeout=300))


def test_a_spec_change_switches_in_one_step_with_traffic_flowing():
    """Both specs capture the service; the second also excludes 2,000 other ranges. Thirty
    switches back and forth while connections flow: every one of them is captured."""
    other = ",".join(f"10.{i // 250}.{i % 250}.0/24" for i in range(2000))
    specs = [STOCK, inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS) + ["-x", other], {})]
    tokens = [f"s{i}" for i in range(1500)]
    with Lab(LabPlan(service_addresses=(SERVICE,), sidecar=SIDECAR)) as lab:
        backend, pod = get_backend("ebpf"), lab.pods["pod"]
        backend.apply(pod, STOCK)
        results = []
        traffic = threading.Thread(target=run_traffic, args=(lab, tokens, results))
        traffic.start()
        try:
            for switch in range(30):
                backend.apply(pod, specs[(switch + 1) % 2])
        finally:
            traffic.join()
            prefixes = backend.status(pod)["prefix_entries"]
            backend.remove(pod)
        captured = {e["token"] for e in lab.events() if e["role"] == "sidecar"}
    assert len(results) == len(tokens) and all(r["result"] == "ok" for r in results)
    assert captured == set(tokens)
    assert prefixes == 0  # the last switch was back to the stock spec: no list of another spec is left


def test_removal_uncaptures_in_one_step_with_traffic_flowing():
    """The spec excludes the service's range (first of 3,000 exclusions): nothing to the service
    is ever captured, also while the pod is removed and added again twenty times; a removal that
    took the lists away before the pod's entry would capture some."""
    ranges = ["203.0.113.0/24"] + [f"10.{i // 250}.{i % 250}.0/24" for i in range(2999)]
    spec = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS) + ["-x", ",".join(ranges)], {})
    tokens = [f"r{i}" for i in range(1500)]
    with Lab(LabPlan(service_addresses=(SERVICE,), sidecar=SIDECAR)) as lab:
        backend, pod = get_backend("ebpf"), lab.pods["pod"]
        results = []
        traffic = threading.Thread(target=run_traffic, args=(lab, tokens, results))
        traffic.start()
        try:
            while traffic.is_alive():
                backend.apply(pod, spec)
                backend.remove(pod)
        finally:
            traffic.join()
            backend.remove(pod)
        captured = [e["token"] for e in lab.events() if e["role"] == "sidecar"]
    assert len(results) == len(tokens) and all(r["result"] == "ok" for r in results)
    assert captured == []


@pytest.mark.parametrize("backend_name", ["iptables", "ebpf"])
def test_a_reused_socket_does_not_keep_an_earlier_destination(backend_name):
    """A TCP socket whose captured connect failed (no proxy listens) connects again, uncaptured,
    to 127.0.0.1:8080: getpeername() names that, as under iptables, not the first destination."""
    with Lab(LabPlan(service_addresses=(SERVICE,))) as lab:
        backend, pod = get_backend(backend_name), lab.pods["pod"]
        backend.apply(pod, STOCK)
        try:
            seen = lab.client(
                "pod",
                proto="tcp",
                dst="127.0.0.1",
                port=8080,
                token="again",
                uid=APP,
                gid=APP,
                first=("connect", f"{SERVICE}:8080"),
            )
        finally:
            backend.remove(pod)
    assert seen["first"] == "ECONNREFUSED"
    assert seen["result"] == "ok" and seen["peername"] == "127.0.0.1:8080"


def test_no_memory_for_a_record_fails_the_connect_and_never_lets_it_out_uncaptured():
    """Socket storage is charged to the socket's option memory: with net.core.optmem_max at 0 in
    the pod, no record can be kept. The connect fails (ENOBUFS) and is counted; none of it reaches
    the service around the proxy."""
    with Lab(LabPlan(service_addresses=(SERVICE,), sidecar=SIDECAR)) as lab:
        backend, pod = get_backend("ebpf"), lab.pods["pod"]
        backend.apply(pod, STOCK)
        try:
            process.run(["sysctl", "-q", "-w", "net.core.optmem_max=0"], netns=pod.netns).check_returncode()
            starved = lab.client("pod", proto="tcp", dst=SERVICE, port=8080, token="starved", uid=APP, gid=APP)
            counters = backend.status(pod)["counters"]
            process.run(["sysctl", "-q", "-w", "net.core.optmem_max=131072"], netns=pod.netns).check_returncode()
            fed = lab.client("pod", proto="tcp", dst=SERVICE, port=8080, token="fed", uid=APP, gid=APP)
            paths = {token: [e["agent"] for e in lab.events(token)] for token in ("starved", "fed")}
        finally:
            backend.remove(pod)
    assert starved["result"] == "error:ENOBUFS" and paths["starved"] == []
    assert counters["no_memory"] == 1
    assert fed["result"] == "ok" and paths["fed"] == ["sidecar", "remote"]


@pytest.mark.parametrize("backend_name", ["iptables", "ebpf"])
def test_a_ping_socket_to_port_53_is_not_dns(backend_name):
    """An ICMP echo socket connected to a DNS server's port 53 is not UDP: DNS capture leaves it
    alone (the connect hooks run for ping sockets too), and the echo comes back from the server."""
    spec = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS) + ["--redirect-dns", "--capture-all-dns"], {})
    with Lab(LabPlan(sidecar=SIDECAR)) as lab:
        backend, pod = get_backend(backend_name), lab.pods["pod"]
        backend.apply(pod, spec)
        try:
            seen = lab.client("pod", proto="ping", dst="198.18.0.53", port=53, token="ping", uid=APP, gid=APP)
        finally:
            backend.remove(pod)
    assert seen["result"] == "ok" and seen["reply_from"] == "198.18.0.53"


@pytest.mark.parametrize("backend_name", ["iptables", "ebpf"])
def test_mptcp_is_captured_as_tcp(backend_name):
    """MPTCP's subflows are TCP to iptables' -p tcp, so they are captured; the eBPF hooks see the
    subflow's connect. (One known difference: getpeername() on the MPTCP socket itself shows the
    proxy's address under eBPF; docs/ebpf.md, Limits, says so.)"""
    with Lab(LabPlan(service_addresses=(SERVICE,), sidecar=SIDECAR)) as lab:
        backend, pod = get_backend(backend_name), lab.pods["pod"]
        backend.apply(pod, STOCK)
        try:
            seen = lab.client("pod", proto="mptcp", dst=SERVICE, port=8080, token="mp", uid=APP, gid=APP)
            path, answer = [e["agent"] for e in lab.events("mp")], sidecar_answer(lab, "mp")
        finally:
            backend.remove(pod)
    assert seen["result"] == "ok"
    assert path == ["sidecar", "remote"] and answer == f"{SERVICE}:8080"


@pytest.mark.parametrize("backend_name, captured", [("iptables", True), ("ebpf", False)])
def test_a_process_outside_the_attach_cgroup(backend_name, captured):
    """The eBPF hooks run for sockets of processes below the cgroup they are attached at; a
    process in the pod's network namespace but outside that cgroup is not captured, where
    iptables, which acts on the namespace's packets, captures it. docs/ebpf.md, Limits, says so."""
    with Lab(LabPlan(service_addresses=(SERVICE,), sidecar=SIDECAR)) as lab:
        backend, pod = get_backend(backend_name), lab.pods["pod"]
        backend.apply(pod, STOCK)
        try:
            outside = process.run(
                lab._agent_command(
                    "client", "--proto", "tcp", "--dst", SERVICE, "--port", "8080", "--token", "outside"
                ),
                netns=pod.netns,
                uid=APP,
                gid=APP,
            )
            path = [e["agent"] for e in lab.events("outside")]
        finally:
            backend.remove(pod)
    assert json.loads(outside.stdout)["result"] == "ok", outside.stderr
    assert path == (["sidecar", "remote"] if captured else ["remote"])
