"""The lab: pods that really talk, and nothing of them left afterwards, whatever happens."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from accel.cli import main
from accel.lab import Lab, LabPlan, SidecarConfig, leftovers
from tests.kernel_state import host_links, rule_state

pytestmark = pytest.mark.privileged

PLAN = LabPlan(ipv6=True, service_addresses=("203.0.113.10", "2001:db8:5e::10"), remote_udp_ports=(9999,),
               sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337))
TOP = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, does not count)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_pods_talk_and_the_lab_leaves_nothing():
    host_rules, links = rule_state(None), host_links()
    with Lab(PLAN) as lab:
        pids = [agent.pid for agent in lab._agents]
        assert all(alive(pid) for pid in pids)
        # pod -> a service address answered by the remote pod, over IPv4 and IPv6
        for dst in ("203.0.113.10", "2001:db8:5e::10"):
            seen = lab.client("pod", proto="tcp", dst=dst, port=8080, token=f"t-{dst}", uid=1000, gid=1000)
            assert seen["result"] == "ok" and seen["reply"]["agent"] == "remote"
            assert seen["reply"]["local"].startswith(f"[{dst}]" if ":" in dst else dst)
        # remote -> pod, UDP from the service address, DNS through the pod's resolver
        assert lab.client("remote", proto="tcp", dst="198.18.0.10", port=8080, token="in", uid=0, gid=0)["result"] == "ok"
        udp = lab.client("pod", proto="udp", dst="203.0.113.10", port=9999, token="u", uid=1000, gid=1000)
        assert udp["result"] == "ok" and udp["peername"] == "203.0.113.10:9999"
        assert lab.client("pod", proto="dns-udp", dst="198.18.0.53", port=53, token="d", uid=1000, gid=1000)["result"] == "ok"
        # the agents ran where they were put
        sidecar = lab._agents[-1]
        assert Path(f"/proc/{sidecar.pid}/status").read_text().count("1337") >= 2  # uid and gid
        assert lab.events("t-203.0.113.10")[0]["agent"] == "remote"
        namespaces = set(lab._namespaces)
    assert not lab.exists()
    assert not any(alive(pid) for pid in pids)
    assert not namespaces & set(leftovers()["namespaces"])
    assert leftovers() == {"namespaces": [], "cgroups": [], "directories": []}
    assert rule_state(None) == host_rules and host_links() == links


def test_a_failure_inside_the_lab_still_removes_everything():
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(LabPlan()) as lab:
            pids = [agent.pid for agent in lab._agents]
            raise RuntimeError("boom")
    assert not lab.exists() and not any(alive(pid) for pid in pids)


def test_a_lab_that_cannot_start_leaves_nothing():
    # The sidecar cannot bind a port the app server already holds: the build fails and cleans up.
    plan = LabPlan(pod_tcp_ports=(8080, 15001), sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337))
    with pytest.raises(Exception):
        with Lab(plan):
            pass
    assert leftovers() == {"namespaces": [], "cgroups": [], "directories": []}


def test_lab_cleanup_removes_what_a_killed_run_left():
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from accel.lab import Lab, LabPlan\n"
            "lab = Lab(LabPlan()); lab.__enter__()\n"
            "print(lab.name, *[a.pid for a in lab._agents], flush=True)\n"
            "time.sleep(120)\n") % str(TOP)
    crashed = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        name, *pids = crashed.stdout.readline().split()
        crashed.send_signal(signal.SIGKILL)  # no finalizer runs
        crashed.wait()
        left = leftovers()
        assert any(n.startswith(name) for n in left["namespaces"]) and left["cgroups"] and left["directories"]
        assert all(alive(int(pid)) for pid in pids)
        result = CliRunner().invoke(main, ["lab", "cleanup"])
        assert result.exit_code == 0, result.output
        assert f"removed namespace: {name}-pod" in result.stdout
        assert leftovers() == {"namespaces": [], "cgroups": [], "directories": []}
        assert not any(alive(int(pid)) for pid in pids)
        assert CliRunner().invoke(main, ["lab", "cleanup"]).stdout.strip() == "nothing to clean up"
    finally:
        if crashed.poll() is None:
            crashed.kill()


def test_sigterm_during_compare_removes_the_lab():
    compare_run = subprocess.Popen([str(TOP / ".venv/bin/accel"), "compare", "--", "-i", "*", "-b", "*"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: leftovers()["namespaces"]), "no lab appeared"
        compare_run.send_signal(signal.SIGTERM)
        assert compare_run.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if compare_run.poll() is None:
            compare_run.kill()
    assert leftovers() == {"namespaces": [], "cgroups": [], "directories": []}


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
