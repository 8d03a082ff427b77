"""accel on a node: up, pods by command, status, metrics, follow, down; restarts, upgrades and kills
under traffic. Every test runs the real `accel` command as its own process against a lab whose
cgroup, bpffs directory and state directory are the test's own (never the node's defaults)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from accel import process
from accel.ebpf.inspect import bpf_objects
from accel.lab.wait import free_port, wait_for
from accel.netns import Netns
from accel.node.metrics import scrape
from accel.node.paths import bpffs_mounted_at
from tests.kernel_state import rule_state
from tests.node_lab import ACCEL, APP, SERVICE, STOCK, TOP, another_accel, node  # noqa: F401 (node: a fixture)

pytestmark = pytest.mark.privileged


def cgroup_attachments(path: Path) -> str:
    return process.run(["bpftool", "cgroup", "show", str(path)], check=True).stdout.strip()


def test_up_pins_once_and_down_leaves_nothing(node):
    pod = node.lab.pods["pod"]
    before, rules = bpf_objects(), rule_state(pod.netns)
    assert cgroup_attachments(node.lab.cgroup.path) == ""
    loaded = node.json("up")
    assert loaded["backend"] == "ebpf" and loaded["action"] == "loaded"
    assert bpffs_mounted_at(node.bpffs) == node.bpffs  # no bpffs was there: up mounted one
    assert sorted(p.name for p in (node.bpffs / "accel" / "links").iterdir()) == sorted(loaded["links"])
    again = node.json("up")
    assert again["action"] == "unchanged"
    assert again["links"] == loaded["links"] and again["programs"] == loaded["programs"]  # adopted, same ids
    assert node.accel("up").stdout.count("nothing to change") == 1
    assert node.first_hop("before") == "remote"
    assert node.json("pod", "add", "--netns", pod.netns, "--id", "pod-a", "--", *STOCK)["outcome"] == "added"
    assert node.first_hop("captured") == "sidecar"
    status = node.json("status")
    assert status["up"] and status["problems"] == [] and all(link["attached"] for link in status["links"])
    assert [p["id"] for p in status["pods"]] == ["pod-a"] and status["pods"][0]["counters"]["outbound"] == 1
    assert {m["name"]: m["entries"] for m in status["maps"]}["pods"] == 1
    assert stat_mode(node.state) == 0o700
    removed = node.json("down")
    assert removed["pods"] == ["pod-a"] and not node.state.exists() and not (node.bpffs / "accel").exists()
    assert bpffs_mounted_at(node.bpffs) is None  # the mount up made is gone too
    assert node.first_hop("after") == "remote"
    assert cgroup_attachments(node.lab.cgroup.path) == ""
    assert rule_state(pod.netns) == rules  # and never a rule along the way
    wait_for(lambda: bpf_objects() == before)  # maps are freed after an RCU grace period
    assert bpf_objects() == before
    assert node.accel("down").stdout.strip() == "nothing to remove: accel was not up here"


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_pod_add_is_idempotent_switches_in_one_step_and_del_is_idempotent(node):
    pod = node.lab.pods["pod"]
    node.accel("up")
    add = ("pod", "add", "--netns", pod.netns, "--id", "pod-a")
    assert node.json(*add, "--", *STOCK)["outcome"] == "added"
    assert node.json(*add, "--", *STOCK)["outcome"] == "unchanged"
    assert node.first_hop("stock") == "sidecar"
    assert node.json(*add, "--", *STOCK, "-x", "203.0.113.0/24")["outcome"] == "replaced"
    assert node.first_hop("excluded") == "remote"
    records = json.loads(node.accel("pod", "list", "--json").stdout)
    assert [(r["id"], r["phase"], r["spec"]["OutboundIPRangesExclude"]) for r in records] == [
        ("pod-a", "ready", "203.0.113.0/24")
    ]
    assert node.json("pod", "del", "--id", "pod-a")["outcome"] == "removed"
    assert node.json("pod", "del", "--id", "pod-a")["outcome"] == "absent"
    assert node.first_hop("released") == "remote"
    maps = {m["name"]: m["entries"] for m in node.json("status")["maps"]}
    assert (maps["pods"], maps["ports"], maps["prefixes"], maps["sources"], maps["counters"]) == (0, 0, 0, 0, 0)


def test_twenty_pods_added_and_removed_at_once(node):
    node.accel("up")
    with contextlib.ExitStack() as stack:
        namespaces = [stack.enter_context(Netns.scratch("accel-test")) for _ in range(20)]

        def run_all(argvs):
            children = [
                subprocess.Popen(
                    [ACCEL, *argv], env=node.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
                for argv in argvs
            ]
            return [(child.wait(timeout=120), child.stderr.read()) for child in children]

        added = run_all(
            [["pod", "add", "--netns", ns.name, "--id", f"p{i}", "--", *STOCK] for i, ns in enumerate(namespaces)]
        )
        assert all(code == 0 for code, _ in added), added
        status = node.json("status")
        assert len(status["pods"]) == 20 and all(p["phase"] == "ready" for p in status["pods"])
        assert {m["name"]: m["entries"] for m in status["maps"]}["pods"] == 20
        removed = run_all([["pod", "del", "--id", f"p{i}"] for i in range(20)])
        assert all(code == 0 for code, _ in removed), removed
        status = node.json("status")
        assert status["pods"] == [] and {m["name"]: m["entries"] for m in status["maps"]}["pods"] == 0


def test_status_says_what_is_wrong_and_up_cleans_it(node):
    node.accel("up")
    gone = Netns.scratch("accel-test").create()
    node.accel("pod", "add", "--netns", gone.name, "--id", "gone", "--", *STOCK)
    gone.remove()
    status = node.accel("status", "--json", check=False)
    assert status.returncode == 1
    assert "pod gone: its network namespace" in status.stderr
    assert node.accel("pod", "del", "--id", "gone").returncode == 0  # also when the namespace is gone
    node.accel("pod", "add", "--netns", node.lab.pods["pod"].netns, "--id", "pod-a", "--", *STOCK)
    gone = Netns.scratch("accel-test").create()
    node.accel("pod", "add", "--netns", gone.name, "--id", "gone-too", "--", *STOCK)
    gone.remove()
    reconciled = node.json("up")["reconciled"]
    assert any("gone-too" in line and "gone" in line for line in reconciled)
    assert node.accel("status").returncode == 0


def test_metrics_read_the_pinned_state(node):
    node.accel("up")
    node.accel("pod", "add", "--netns", node.lab.pods["pod"].netns, "--id", "pod-a", "--", *STOCK)
    for number in range(3):
        assert node.first_hop(f"m{number}") == "sidecar"
    port, pid_file = free_port(), node.root / "run" / "agent.pid"
    metrics = subprocess.Popen(
        [ACCEL, "metrics", "--listen", f"127.0.0.1:{port}", "--pid-file", str(pid_file)],
        env=node.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: _answers(port), timeout=20), metrics.stderr
        text = scrape(port)
        assert pid_file.read_text() == f"{metrics.pid}\n"  # what accel-cni's shim enters through
    finally:
        metrics.send_signal(signal.SIGTERM)
        metrics.wait(timeout=20)
    assert not pid_file.exists()
    assert 'accel_datapath_info{backend="ebpf"' in text and "accel_up 1.0" in text
    assert "accel_pods 1.0" in text
    assert 'accel_redirects_total{direction="outbound",pod="pod-a"} 3.0' in text
    assert 'accel_bpf_map_entries{map="pods"} 1.0' in text and 'accel_bpf_map_capacity{map="pods"} 4096.0' in text
    assert re.search(r"^accel_last_up_timestamp_seconds \d", text, re.M)
    labels = re.findall(r'="([^"]*)"', text)
    assert not any(re.search(r"\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f]*:", value) for value in labels)  # no addresses
    assert node.first_hop("after-metrics") == "sidecar"  # stopping it changed nothing


def _answers(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


def test_follow_keeps_a_pods_addresses_in_step(node):
    pod = node.lab.pods["pod"]
    node.accel("up")
    node.accel("pod", "add", "--netns", pod.netns, "--id", "pod-a", "--", *STOCK)
    process.run(["ip", "address", "add", "198.18.0.14/32", "dev", "lo"], netns=pod.netns, check=True)
    # without a follower the datapath still knows the pod's addresses as they were: the new one
    # is taken for remote and captured, where iptables (-o lo) would leave it alone
    assert node.first_hop("stale", dst="198.18.0.14") == "sidecar"
    follower = subprocess.Popen([ACCEL, "follow"], env=node.env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: node.first_hop(f"f{time.monotonic_ns()}", dst="198.18.0.14") == "pod")
        process.run(["ip", "address", "del", "198.18.0.14/32", "dev", "lo"], netns=pod.netns, check=True)
        process.run(["ip", "address", "add", "198.18.0.15/32", "dev", "lo"], netns=pod.netns, check=True)
        assert wait_for(lambda: node.first_hop(f"g{time.monotonic_ns()}", dst="198.18.0.15") == "pod")
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=20)


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_node_with_a_rules_backend(node, backend):
    pod = node.lab.pods["pod"]
    rules = rule_state(pod.netns)
    assert node.json("up", "--backend", backend)["backend"] == backend
    add = ("pod", "add", "--netns", pod.netns, "--id", "pod-a")
    node.accel(*add, "--", *STOCK)
    assert node.first_hop("captured") == "sidecar"
    assert node.json(*add, "--", *STOCK, "-x", "203.0.113.0/24")["outcome"] == "replaced"
    assert node.first_hop("excluded") == "remote"
    assert node.json(*add, "--", *STOCK)["outcome"] == "replaced"
    assert node.first_hop("again") == "sidecar"
    node.accel("down")
    assert rule_state(pod.netns) == rules
    assert node.first_hop("after") == "remote"


def changed_bpf(tmp_path: Path, old: str, new: str, file: str) -> Path:
    """A copy of bpf/ with one change: what a new version of accel would bring."""
    copy = tmp_path / "bpf"
    shutil.copytree(TOP / "bpf", copy)
    text = (copy / file).read_text()
    assert old in text
    (copy / file).write_text(text.replace(old, new))
    return copy


def test_an_upgrade_that_changes_a_kernel_maps_layout_is_refused_naming_it(node, tmp_path):
    node.accel("up")
    node.accel("pod", "add", "--netns", node.lab.pods["pod"].netns, "--id", "pod-a", "--", *STOCK)
    before = node.json("status")
    newer = changed_bpf(tmp_path, "#define ACCEL_MAX_LOST 4096", "#define ACCEL_MAX_LOST 8192", "accel.h")
    refused = node.accel(
        "up", env={"ACCEL_BPF_DIR": str(newer), "ACCEL_CACHE_DIR": str(tmp_path / "cache")}, check=False
    )
    assert refused.returncode == 1 and "map lost" in refused.stderr and refused.stderr.count("\n") == 1
    after = node.json("status")
    assert after["links"] == before["links"] and after["maps"] == before["maps"]  # nothing changed
    assert node.first_hop("still") == "sidecar"


def test_an_upgrade_whose_struct_fills_padding_keeps_the_map_and_its_entries(node, tmp_path):
    """A newer accel that puts a member where a struct had padding (here the 4-tuple key of the
    records in `handoffs` and `lost`, which only the kernel knows) adopts the pinned maps: their
    entries read the new member as zero, which is what the programs write into padding."""
    node.accel("up")
    node.accel("pod", "add", "--netns", node.lab.pods["pod"].netns, "--id", "pod-a", "--", *STOCK)
    assert node.first_hop("before") == "sidecar"
    newer = another_accel(
        tmp_path,
        {
            "bpf/accel.h": (
                "\t__u16 remote_port;\n\t__u32 pad;\n};",
                "\t__u16 remote_port;\n\t__u16 future;\n\t__u16 pad;\n};",
            ),
            "accel/ebpf/maps.py": (
                '("remote_port", ctypes.c_uint16),\n        ("pad", ctypes.c_uint32),',
                '("remote_port", ctypes.c_uint16),\n        ("future", ctypes.c_uint16),\n'
                '        ("pad", ctypes.c_uint16),',
            ),
        },
    )
    upgraded = node.json("up", env=newer)
    # not refused, though the layouts differ; the programs compile to the same instructions
    assert upgraded["action"] == "unchanged" and {"handoffs", "lost"} <= set(upgraded["kept"])
    assert node.first_hop("after") == "sidecar"
    # the newer accel's short-lived commands open the pinned maps too
    node.accel(
        "pod", "add", "--netns", node.lab.pods["pod"].netns, "--id", "pod-a", "--", *STOCK, "-o", "8080", env=newer
    )
    assert node.first_hop("excluded") == "remote"


def test_an_upgrade_migrates_a_map_the_state_describes(node, tmp_path):
    pod = node.lab.pods["pod"]
    node.accel("up")
    node.accel("pod", "add", "--netns", pod.netns, "--id", "pod-a", "--", *STOCK, "-o", "8080")
    assert node.first_hop("excluded-port") == "remote"
    newer = changed_bpf(tmp_path, "#define ACCEL_MAX_PORTS 65536", "#define ACCEL_MAX_PORTS 32768", "accel.h")
    upgraded = node.json("up", env={"ACCEL_BPF_DIR": str(newer), "ACCEL_CACHE_DIR": str(tmp_path / "cache")})
    assert upgraded["action"] == "upgraded" and upgraded["migrated"] == ["ports"] and "ports" not in upgraded["kept"]
    maps = {m["name"]: m for m in node.json("status")["maps"]}
    assert maps["ports"]["capacity"] == 32768 and maps["ports"]["entries"] == 4  # -o 8080 and the three -d ports
    assert node.first_hop("still-excluded") == "remote"
    node.accel("pod", "add", "--netns", pod.netns, "--id", "pod-a", "--", *STOCK)
    assert node.first_hop("captured") == "sidecar"


def test_restarts_upgrades_and_kills_under_traffic(node, tmp_path):
    """The point of the node agent: a client makes new connections without pause through the
    sidecar while every accel process is killed in the middle of adding a second pod, accel up
    runs again, accel up runs with changed programs, and accel metrics is killed. No connection
    fails or reaches another destination than its own; the links are the ones pinned first; the
    half-added pod is complete or absent; a pod whose namespace went away is cleaned."""
    lab, pod = node.lab, node.lab.pods["pod"]
    first = node.json("up")
    node.accel("pod", "add", "--netns", pod.netns, "--id", "pod-a", "--", *STOCK)
    targets = [{"dst": SERVICE, "port": 8080, "token": f"t{i}"} for i in range(20)]
    stop_file = lab.workdir / "stop"
    results = []
    traffic = threading.Thread(
        target=lambda: results.extend(
            lab.burst("pod", targets, concurrency=4, until=stop_file, uid=APP, gid=APP, timeout=600)
        )
    )
    traffic.start()
    try:
        second = Netns.scratch("accel-test").create()
        outcomes, reconciled = [], []
        for moment in (0.0, 0.2, "adding", "adding", "adding", 0.6):  # kill pod add at points of its work
            adding = subprocess.Popen(
                [ACCEL, "pod", "add", "--netns", second.name, "--id", "pod-b", "--", *STOCK],
                env=node.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if moment == "adding":  # once it has recorded its intent: in the middle of its kernel work
                wait_for(
                    lambda: '"phase": "adding"' in _read(node.state / "state.json") or adding.poll() is not None,
                    timeout=10,
                    interval=0.0005,
                )
            else:
                time.sleep(moment)
            adding.send_signal(signal.SIGKILL)
            adding.wait()
            again = node.json("up")
            assert again["action"] == "unchanged" and again["links"] == first["links"]
            reconciled += again["reconciled"]
            pods = {p["id"]: p for p in node.json("status")["pods"]}
            outcomes.append(pods["pod-b"]["phase"] if "pod-b" in pods else "absent")
            assert outcomes[-1] in ("ready", "absent")
            node.accel("pod", "del", "--id", "pod-b")
        node.accel("pod", "add", "--netns", second.name, "--id", "pod-b", "--", *STOCK)
        second.remove()  # a registered pod's namespace goes away while accel does nothing
        # a new version's harmless change: one more test (of a port that is never 0) before a listener counts
        newer = changed_bpf(
            tmp_path,
            "port != pod->proxy_port && port != pod->inbound_port",
            "port != pod->proxy_port && (!port || port != pod->inbound_port)",
            "sockops.c",
        )
        upgraded = node.json("up", env={"ACCEL_BPF_DIR": str(newer), "ACCEL_CACHE_DIR": str(tmp_path / "cache")})
        assert upgraded["action"] == "upgraded" and upgraded["swapped"] and upgraded["links"] == first["links"]
        assert upgraded["programs"]["sockops"]["tag"] != first["programs"]["sockops"]["tag"]
        assert any("pod-b" in line and "gone" in line for line in upgraded["reconciled"])
        port = free_port()
        metrics = subprocess.Popen(
            [ACCEL, "metrics", "--listen", f"127.0.0.1:{port}"],
            env=node.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_for(lambda: _answers(port), timeout=20)
        metrics.send_signal(signal.SIGKILL)
        metrics.wait()
        time.sleep(1)  # traffic goes on with no accel process at all
    finally:
        stop_file.touch()
        traffic.join()
    told = {e["token"]: e["so_original_dst"] for e in lab.events() if e["role"] == "sidecar"}
    assert len(results) > 300, f"only {len(results)} connections"
    failed = [r for r in results if r["result"] != "ok"]
    misrouted = [r["token"] for r in results if told.get(r["token"]) != f"{SERVICE}:8080"]
    assert failed == [] and misrouted == []
    assert set(outcomes) <= {"ready", "absent"}
    assert "pod pod-b: half-added, removed" in reconciled  # at least one kill fell in the middle of an add
    final = node.json("status")
    assert [p["id"] for p in final["pods"]] == ["pod-a"] and final["problems"] == []


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_up_refuses_without_a_pod_cgroup_and_changes_nothing(node):
    env = {key: value for key, value in node.env.items() if key != "ACCEL_CGROUP"}
    result = subprocess.run([ACCEL, "up", "--backend", "ebpf"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert "no kubelet pod cgroup (kubepods.slice or kubepods)" in result.stderr and "--cgroup" in result.stderr
    assert not node.state.joinpath("state.json").exists() and not (node.bpffs / "accel").exists()


def test_the_systemd_units_verify_and_the_vagrantfile_parses(tmp_path):
    for unit in ("accel", "accel-follow", "accel-metrics"):
        text = (TOP / "scripts" / f"{unit}.service").read_text()
        assert "ExecStart=/usr/local/bin/accel " in text  # where scripts/install-node links it
        (tmp_path / f"{unit}.service").write_text(text.replace("/usr/local/bin/accel", ACCEL))
    result = subprocess.run(
        ["systemd-analyze", "verify", *map(str, sorted(tmp_path.glob("*.service")))], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == ""  # it exits 0 on some errors: read stderr
    unit = (TOP / "scripts" / "accel.service").read_text()
    for line in (
        "Type=oneshot",
        "RemainAfterExit=yes",
        "ExecReload=/usr/local/bin/accel up",
        "After=network-online.target",
        "Wants=network-online.target",
        "RequiresMountsFor=/sys/fs/bpf /sys/fs/cgroup",
    ):
        assert line in unit
    ruby = subprocess.run(["ruby", "-c", str(TOP / "Vagrantfile")], capture_output=True, text=True)
    assert ruby.returncode == 0 and ruby.stdout.strip() == "Syntax OK", ruby.stderr
    if shutil.which("vagrant"):
        validated = subprocess.run(["vagrant", "validate", "-p"], cwd=TOP, capture_output=True, text=True)
        assert validated.returncode == 0, validated.stderr
