"""The eBPF backend beyond the comparison matrix: a real proxy, concurrency, bounded state,
clean removal, pass-through of other getsockopt calls, and refusals that name what is missing."""

import json
import subprocess
import threading

import pytest

from accel import inputs, process
from accel.backends import BackendError, get_backend
from accel.ebpf import libbpf, programs
from accel.ebpf.inspect import bpf_objects, sk_lookup_links
from accel.ebpf.probe import _calls, _map, _program, probe
from accel.lab import Lab, LabPlan, SidecarConfig
from accel.lab.wait import wait_for
from tests.kernel_state import rule_state

pytestmark = pytest.mark.privileged

STOCK = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS), {})
APP = 1000
HAPROXY_CONFIG = """
global
    nbthread 1
    maxconn 2000
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend outbound
    bind :15001
    http-response set-header X-Proxy outbound
    default_backend original_destination
frontend inbound
    bind :15006
    http-response set-header X-Proxy inbound
    default_backend inbound_passthrough
backend original_destination
    server s 0.0.0.0:0
backend inbound_passthrough
    server s 0.0.0.0:0 source 127.0.0.6
"""


def host(address):
    return address.rsplit(":", 1)[0]


def http_through_haproxy(backend_name):
    """HTTP from the app to a service on the remote pod, and from the remote pod to the app."""
    plan = LabPlan(pod_tcp_ports=(), remote_tcp_ports=(), service_addresses=("203.0.113.10",))
    with Lab(plan) as lab:
        config = lab.workdir / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG)
        agent = lab._agent_command
        lab.start("remote", agent("http", "--name", "remote", "--port", "8080"), listens=(8080,))
        lab.start("pod", agent("http", "--name", "app", "--port", "8080"), listens=(8080,))
        lab.start("pod", ["haproxy", "-db", "-f", str(config)], uid=1337, gid=1337, listens=(15001, 15006))
        backend, pod = get_backend(backend_name), lab.pods["pod"]
        backend.apply(pod, STOCK)
        try:
            out = json.loads(lab.agent("pod", "http-get", "--url", "http://203.0.113.10:8080/out", uid=APP, gid=APP))
            into = json.loads(lab.agent("remote", "http-get", "--url", "http://198.18.0.10:8080/in", uid=APP, gid=APP))
        finally:
            backend.remove(pod)
    return [
        {
            "status": r["status"],
            "proxy": r.get("headers", {}).get("x-proxy"),
            "server": r["body"]["agent"] if isinstance(r.get("body"), dict) else None,
            "server_local": r["body"]["local"] if isinstance(r.get("body"), dict) else None,
            "server_peer": host(r["body"]["peer"]) if isinstance(r.get("body"), dict) else None,
        }
        for r in (out, into)
    ]


def test_haproxy_carries_http_under_ebpf_exactly_as_under_iptables():
    reference = http_through_haproxy("iptables")
    assert reference == [
        {
            "status": 200,
            "proxy": "outbound",
            "server": "remote",
            "server_local": "203.0.113.10:8080",
            "server_peer": "198.18.0.10",
        },
        {
            "status": 200,
            "proxy": "inbound",
            "server": "app",
            "server_local": "198.18.0.10:8080",
            "server_peer": "127.0.0.6",
        },
    ]
    assert http_through_haproxy("ebpf") == reference
    control = http_through_haproxy("none")
    assert [r["proxy"] for r in control] == [None, None]  # without capture HAProxy sees nothing


def test_concurrent_connections_reach_their_own_original_destination():
    """500 connections at once, to 500 different original destinations (50 addresses x 10 ports)."""
    addresses = [f"203.0.113.{i}" for i in range(1, 51)]
    ports = list(range(8081, 8091))
    plan = LabPlan(
        remote_tcp_ports=tuple(ports),
        service_addresses=tuple(addresses),
        sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337),
    )
    targets = [
        {"dst": a, "port": p, "token": f"burst-{i}"}
        for i, (a, p) in enumerate((a, p) for a in addresses for p in ports)
    ]
    with Lab(plan) as lab:
        backend, pod = get_backend("ebpf"), lab.pods["pod"]
        backend.apply(pod, STOCK)
        try:
            results = lab.burst("pod", targets, concurrency=500, uid=APP, gid=APP)
            events = {e["token"]: e for e in lab.events() if e["role"] == "sidecar"}
        finally:
            backend.remove(pod)
    assert len(results) == 500
    for target, result in zip(sorted(targets, key=lambda t: t["token"]), sorted(results, key=lambda r: r["token"])):
        wanted = f"{target['dst']}:{target['port']}"
        assert result["result"] == "ok", result
        assert result["reply"]["local"] == wanted  # the server it reached
        assert events[target["token"]]["so_original_dst"] == wanted  # what the proxy was told


def test_records_live_with_the_sockets_and_nothing_node_wide_is_left_over_20000_connections():
    """A connection's record lives in its sockets' storage; the node-wide handoff map holds only
    handshakes in flight, so nothing there can be evicted from under a live connection."""
    plan = LabPlan(
        remote_tcp_ports=tuple(range(8081, 8091)),
        service_addresses=("203.0.113.10", "203.0.113.11"),
        sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337),
    )
    targets = [{"dst": f"203.0.113.1{i % 2}", "port": 8081 + i % 10, "token": f"n{i}"} for i in range(20000)]
    with Lab(plan) as lab:
        backend, pod = get_backend("ebpf"), lab.pods["pod"]
        backend.apply(pod, STOCK)
        peak, done = [0], threading.Event()

        def watch():
            while not done.wait(0.05):
                peak[0] = max(peak[0], backend.status(pod)["handoffs_in_flight"])

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            results = lab.burst("pod", targets, concurrency=32, uid=APP, gid=APP, timeout=600)
        finally:
            done.set()
            watcher.join()
        status = backend.status(pod)
        sidecar = {e["token"]: e["so_original_dst"] for e in lab.events() if e["role"] == "sidecar"}
        backend.remove(pod)
    assert sum(r["result"] == "ok" for r in results) == 20000
    assert all(sidecar[t["token"]] == f"{t['dst']}:{t['port']}" for t in targets)
    assert peak[0] <= 64, f"{peak[0]} handoffs at once with 32 connections in flight"
    assert status["handoffs_in_flight"] == 0
    counters = status["counters"]
    assert counters["outbound"] == 20000
    assert (counters["handoff_failed"], counters["lost"], counters["no_memory"]) == (0, 0, 0)


def test_removal_leaves_no_bpf_object_and_the_pod_as_before():
    plan = LabPlan(service_addresses=("203.0.113.10",), sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337))
    before = bpf_objects()
    with Lab(plan) as lab:
        pod = lab.pods["pod"]

        def outbound():
            lab.client("pod", proto="tcp", dst="203.0.113.10", port=8080, token=token, uid=APP, gid=APP)
            return [e["agent"] for e in lab.events(token)]

        token = "t0"
        direct, rules = outbound(), rule_state(pod.netns)
        backend = get_backend("ebpf")
        backend.apply(pod, STOCK)
        status = backend.status(pod)
        token = "t1"
        captured = outbound()
        attached, lookups = bpf_objects(), sk_lookup_links(pod.netns)
        backend.remove(pod)
        token = "t2"
        after = outbound()
        assert rule_state(pod.netns) == rules  # and never a netfilter rule along the way
        assert len(lookups) == 1 and sk_lookup_links(pod.netns) == []
    assert (direct, captured, after) == (["remote"], ["sidecar", "remote"], ["remote"])
    assert status["applied"] and status["sk_lookup"]
    assert status["listeners"] == {"outbound": ["ipv4", "ipv6"], "inbound": ["ipv4", "ipv6"]}
    assert {name for _, name in attached["prog"] - before["prog"]} >= {"connect4", "getsockopt", "inbound", "sockops"}
    assert attached["link"] - before["link"]
    wait_for(lambda: bpf_objects() == before)  # maps are freed after an RCU grace period
    assert bpf_objects() == before


def without_and_with_ebpf(pod, read):
    """read() in the pod as it is, then with the stock spec applied by ebpf (removed after)."""
    plain = read()
    backend = get_backend("ebpf")
    backend.apply(pod, STOCK)
    try:
        return plain, read()
    finally:
        backend.remove(pod)


def test_other_getsockopt_calls_pass_through_even_above_a_page():
    """iptables-legacy-save reads its rules with getsockopt and buffers larger than a page."""
    rules = (
        "*filter\n" + "".join(f"-A INPUT -s 10.{i // 250}.{i % 250}.0/24 -j ACCEPT\n" for i in range(400)) + "COMMIT\n"
    )
    plan = LabPlan(sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337))
    with Lab(plan) as lab:
        pod = lab.pods["pod"]
        process.run(["iptables-legacy-restore"], input=rules, netns=pod.netns).check_returncode()

        def save():
            result = process.run(["iptables-legacy-save", "-t", "filter"], netns=pod.netns, cgroup=pod.cgroup)
            assert result.returncode == 0, result.stderr
            return [line for line in result.stdout.splitlines() if not line.startswith("#")]

        plain, hooked = without_and_with_ebpf(pod, save)
    assert len(plain) > 400 and hooked == plain


# Options read from a connected TCP socket: their value as the kernel gives it, but for what
# changes by itself (TCP_INFO's timers and counters).
GETSOCKOPT_SCRIPT = r"""
import ctypes, json, socket
libc = ctypes.CDLL(None, use_errno=True)
def large(level, name, size):  # Python's getsockopt stops at 1024 bytes
    buffer, length = ctypes.create_string_buffer(size), ctypes.c_uint32(size)
    if libc.getsockopt(client.fileno(), level, name, buffer, ctypes.byref(length)) != 0:
        return f"errno {ctypes.get_errno()}"
    return [length.value, buffer.raw[:8].hex()]
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
client = socket.create_connection(listener.getsockname()); server, _ = listener.accept()
def ask(level, name, size):
    try:
        return client.getsockopt(level, name, size).hex()
    except OSError as error:
        return f"errno {error.errno}"
info = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
print(json.dumps({
    "tcp_info": [len(info), info[:8].hex()],  # state, ca_state, retransmits, probes, backoff, options, wscale
    "peercred": ask(socket.SOL_SOCKET, socket.SO_PEERCRED, 12),  # none for TCP: the same none either way
    "ip_options": ask(socket.IPPROTO_IP, socket.IP_OPTIONS, 40),
    "ip_tos": ask(socket.IPPROTO_IP, socket.IP_TOS, 4),
    "so_type": ask(socket.SOL_SOCKET, socket.SO_TYPE, 4),
    "tcp_congestion": ask(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16),
    "large_optval": large(socket.IPPROTO_TCP, socket.TCP_INFO, 8192),
    "large_unknown": large(socket.SOL_SOCKET, 12345, 8192),
    "unknown_option": ask(socket.SOL_SOCKET, 12345, 4),
}))
"""


@pytest.mark.parametrize("uid", [APP, 1337])
def test_getsockopt_answers_only_the_proxys_original_destination(uid):
    """The getsockopt hook changes nothing but SO_ORIGINAL_DST of redirected connections: other
    options, from an app (uid 1000) and from the proxy's uid, read the same with and without it."""
    with Lab(LabPlan(sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337))) as lab:
        pod = lab.pods["pod"]

        def read():
            result = process.run(
                ["/usr/bin/python3", "-I", "-S", "-c", GETSOCKOPT_SCRIPT],
                netns=pod.netns,
                cgroup=pod.cgroup,
                uid=uid,
                gid=uid,
            )
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        plain, hooked = without_and_with_ebpf(pod, read)
    assert plain["tcp_info"][0] > 100 and plain["large_optval"][0] > 100
    assert hooked == plain


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-c", "eth1"], "--istio-exclude-interfaces"),
        (["-k", "eth1"], "--kube-virt-interfaces"),
        (["--drop-invalid"], "--drop-invalid"),
    ],
)
def test_refuses_what_socket_hooks_cannot_reproduce(args, needle):
    spec = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS) + args, {})
    before = bpf_objects()
    with Lab(LabPlan()) as lab:
        with pytest.raises(BackendError, match=needle):
            get_backend("ebpf").apply(lab.pods["pod"], spec)
    assert bpf_objects() == before


def test_probe_finds_every_feature_and_can_fail():
    assert all(feature.ok for feature in probe()), [f for f in probe() if not f.ok]
    assert not _program(programs.PROG_CGROUP_SOCK_ADDR, 1000)[0]  # an attach type no kernel has
    assert not _map(libbpf.MAP_SK_STORAGE, 4, 4, 1)[0]  # socket storage without BTF types
    # sk_lookup programs cannot ask for their namespace's cookie (hence a program copy per pod)
    assert not _calls(programs.PROG_SK_LOOKUP, programs.ATTACH_SK_LOOKUP, libbpf.FUNC_GET_NETNS_COOKIE)
    assert _calls(programs.PROG_SK_LOOKUP, programs.ATTACH_SK_LOOKUP, libbpf.FUNC_SK_ASSIGN)


def test_a_local_route_for_a_whole_range_counts_as_local():
    """AnyIP: `ip route add local 10.77.0.0/16 dev lo` makes a range local. The proxy's own
    connection into it is hairpinned to its inbound listener under iptables (-o lo); the eBPF
    datapath must look it up in its prefix trie, not only among single local addresses."""
    plan = LabPlan(sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337))
    outcomes = {}
    with Lab(plan) as lab:
        pod = lab.pods["pod"]
        process.run(["ip", "route", "add", "local", "10.77.0.0/16", "dev", "lo"], netns=pod.netns).check_returncode()
        for name in ("iptables", "ebpf", "none"):
            backend = get_backend(name)
            backend.apply(pod, STOCK)
            try:
                lab.client("pod", proto="tcp", dst="10.77.0.5", port=8080, token=name, uid=1337, gid=1337)
                outcomes[name] = [e["agent"] for e in lab.events(name)]
            finally:
                backend.remove(pod)
    assert outcomes["iptables"] == ["sidecar", "pod"]
    assert outcomes["ebpf"] == outcomes["iptables"]
    assert outcomes["none"] == ["pod"]


APP_HOLDS_ESTABLISHED = """
import socket, struct, sys
sockets = []
for _ in range({count}):
    s = socket.socket()
    s.settimeout(5)
    s.connect(("203.0.113.10", 8081))  # returns at the SYN-ACK: the app's side is established
    sockets.append(s)
print("connected", flush=True)
sys.stdin.readline()
for s in sockets:  # linger 0: a reset, so the app's socket closes at once, never seen by the proxy
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
print("closed", flush=True)
"""


def test_a_record_the_proxy_never_took_goes_with_the_apps_socket():
    """The app's socket watches its state only until the proxy's side takes the record. When the
    proxy's side never comes (the pod drops the handshake's last ACK), the app's side is still
    established, its record still waiting; closing the app's socket must remove it."""
    count = 16
    plan = LabPlan(
        remote_tcp_ports=(8081,),
        service_addresses=("203.0.113.10",),
        sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337),
    )
    with Lab(plan) as lab:
        backend, pod = get_backend("ebpf"), lab.pods["pod"]
        # the app's pure ACKs to the proxy's spread ports (1-1023) go nowhere: its SYN-ACKs do
        process.run(
            ["nft", "-f", "-"],
            netns=pod.netns,
            check=True,
            input=(
                "table inet accel_test { chain out { type filter hook output priority 0; "
                "tcp dport 1-1023 tcp flags & (syn | ack | fin | rst) == ack drop; }; }\n"
            ),
        )
        backend.apply(pod, STOCK)
        app = process.spawn(
            ["/usr/bin/python3", "-I", "-S", "-c", APP_HOLDS_ESTABLISHED.format(count=count)],
            netns=pod.netns,
            cgroup=pod.cgroup,
            uid=APP,
            gid=APP,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert app.stdout.readline().strip() == "connected", app.stderr.read()
            waiting = backend.status(pod)["handoffs_in_flight"]
            app.stdin.write("close\n")
            app.stdin.flush()
            assert app.stdout.readline().strip() == "closed", app.stderr.read()
            left = (
                wait_for(lambda: backend.status(pod)["handoffs_in_flight"] == 0, 5)
                or backend.status(pod)["handoffs_in_flight"]
            )
        finally:
            app.kill()
            app.wait()
            backend.remove(pod)
    assert waiting == count, "the proxy's side took records it should never have seen"
    assert left is True, f"{left} records outlived the app's sockets"
