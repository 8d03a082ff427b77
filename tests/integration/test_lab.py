"""The lab: pods that really talk, and nothing of them left afterwards, whatever happens."""

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from accel import faults, userns
from accel.cli import main
from accel.ebpf.inspect import bpf_objects
from accel.lab import Lab, LabError, LabPlan, MeshedPod, SidecarConfig, conntrack_entries, leftovers
from tests.kernel_state import host_links, rule_state

pytestmark = pytest.mark.privileged

NOTHING = {"namespaces": [], "cgroups": [], "directories": []}
PLAN = LabPlan(
    ipv6=True,
    service_addresses=("203.0.113.10", "2001:db8:5e::10"),
    remote_udp_ports=(9999,),
    sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337),
)
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
        assert (
            lab.client("remote", proto="tcp", dst="198.18.0.10", port=8080, token="in", uid=0, gid=0)["result"] == "ok"
        )
        udp = lab.client("pod", proto="udp", dst="203.0.113.10", port=9999, token="u", uid=1000, gid=1000)
        assert udp["result"] == "ok" and udp["peername"] == "203.0.113.10:9999"
        assert (
            lab.client("pod", proto="dns-udp", dst="198.18.0.53", port=53, token="d", uid=1000, gid=1000)["result"]
            == "ok"
        )
        # the agents ran where they were put
        sidecar = lab._agents[-1]
        assert Path(f"/proc/{sidecar.pid}/status").read_text().count("1337") >= 2  # uid and gid
        assert lab.events("t-203.0.113.10")[0]["agent"] == "remote"
        # the event log is the lab's alone: the agents append through a descriptor they inherit
        log = lab.log.stat()
        assert (log.st_uid, stat.S_IMODE(log.st_mode)) == (0, 0o600)
        namespaces = {namespace.name for namespace in lab._namespaces}
        assert set(leftovers(os.getpid())["namespaces"]) == namespaces
        assert not namespaces & set(leftovers()["namespaces"])  # a live run's objects are not leftovers
    assert not lab.exists()
    assert not any(alive(pid) for pid in pids)
    assert leftovers(os.getpid()) == NOTHING
    assert rule_state(None) == host_rules and host_links() == links


def test_a_failure_inside_the_lab_still_removes_everything():
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(LabPlan()) as lab:
            pids = [agent.pid for agent in lab._agents]
            raise RuntimeError("boom")
    assert not lab.exists() and not any(alive(pid) for pid in pids)


def test_a_pod_in_a_user_namespace_of_its_own():
    """hostUsers: false: the pod's processes run in its user namespace, uid 1337 inside is
    another uid on the node, and the pod's root is not the node's."""
    plan = LabPlan(
        meshed=(MeshedPod("pod"), MeshedPod("userns-pod", userns=True)),
        sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337),
        service_addresses=("203.0.113.10",),
    )
    with Lab(plan) as lab:
        pod = lab.pods["userns-pod"]
        assert userns.owned_by_other(pod.netns) and not userns.owned_by_other(lab.pods["pod"].netns)
        assert userns.id_map(pod.netns).uid(1337) == 1_001_337 and userns.id_map(pod.netns).gid(0) == 1_000_000
        sidecar = next(a for a in lab._agents if "sidecar" in a.args and a.pid in pod.cgroup.pids())
        uids = next(
            line for line in Path(f"/proc/{sidecar.pid}/status").read_text().splitlines() if line.startswith("Uid:")
        )
        assert uids.split()[1:] == ["1001337"] * 4
        seen = lab.client("userns-pod", proto="tcp", dst="203.0.113.10", port=8080, token="u", uid=1000, gid=1000)
        assert seen["result"] == "ok" and seen["reply"]["peer"].startswith("198.18.0.11:")


def test_a_conntrack_count_that_cannot_be_read_is_an_error():
    with pytest.raises(LabError, match="cannot read the conntrack count in accel-lab-no-such-netns"):
        conntrack_entries("accel-lab-no-such-netns")


def test_a_lab_that_cannot_start_leaves_nothing():
    # The sidecar cannot bind a port the app server already holds: the build fails and cleans up.
    plan = LabPlan(pod_tcp_ports=(8080, 15001), sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337))
    with pytest.raises(Exception):  # noqa: B017 (whichever step fails first; what matters is what is left)
        with Lab(plan):
            pass
    assert leftovers(os.getpid()) == NOTHING


def test_lab_cleanup_removes_what_a_killed_run_left():
    code = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from accel.lab import Lab, LabPlan\n"
        "lab = Lab(LabPlan()); lab.__enter__()\n"
        "print(lab.name, *[a.pid for a in lab._agents], flush=True)\n"
        "time.sleep(120)\n"
    ) % str(TOP)
    crashed = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        name, *pids = crashed.stdout.readline().split()
        # while its run lives, the lab is nobody's leftover: cleanup leaves it alone
        assert not any(n.startswith(name) for n in leftovers()["namespaces"])
        CliRunner().invoke(main, ["lab", "cleanup"])
        assert any(n.startswith(name) for n in leftovers(crashed.pid)["namespaces"])
        assert all(alive(int(pid)) for pid in pids)
        crashed.send_signal(signal.SIGKILL)  # no finalizer runs
        crashed.wait()
        left = leftovers()
        assert any(n.startswith(name) for n in left["namespaces"]) and left["cgroups"] and left["directories"]
        assert all(alive(int(pid)) for pid in pids)
        result = CliRunner().invoke(main, ["lab", "cleanup"])
        assert result.exit_code == 0, result.output
        assert f"removed namespace: {name}-pod" in result.stdout
        assert leftovers(crashed.pid) == NOTHING
        assert not any(alive(int(pid)) for pid in pids)
    finally:
        if crashed.poll() is None:
            crashed.kill()


def test_sigterm_during_compare_removes_the_lab():
    log = tempfile.TemporaryFile()
    compare_run = subprocess.Popen(
        [str(TOP / ".venv/bin/accel"), "compare", "--", "-i", "*", "-b", "*"], stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        assert wait_until(lambda: leftovers(compare_run.pid)["namespaces"]), "no lab appeared"
        compare_run.send_signal(signal.SIGTERM)
        returncode, stderr = ended(compare_run, log, timeout=30)
    finally:
        if compare_run.poll() is None:
            compare_run.kill()
    assert returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    assert leftovers(compare_run.pid) == NOTHING


# A few cases through iptables (the reference) and then ebpf: every step of the first lab, then
# the second lab's last step, the ebpf apply and an ebpf case (cases 6-10 are ebpf's).
TERM_CASES = "outbound-service,outbound-as-root,outbound-localhost,dns-udp,inbound-app-port"
TERM_POINTS = [*faults.LAB_POINTS, "lab:ready@2", "compare:applied@2", "compare:case@7"]


@pytest.mark.parametrize("point", TERM_POINTS)
def test_sigterm_at_each_step_stops_there_and_leaves_nothing(point):
    """SIGTERM delivered at a chosen step (a failpoint sends it; accel/faults.py): accel stops at
    its next safe point, exits 143 and removes what it made, whichever step it was in and in
    whichever thread the signal landed."""
    host_rules, links, programs = rule_state(None), host_links(), bpf_objects()
    log = tempfile.TemporaryFile()
    compare_run = subprocess.Popen(
        [
            str(TOP / ".venv/bin/accel"),
            "compare",
            "--backends",
            "ebpf",
            "--cases",
            TERM_CASES,
            "--",
            "-i",
            "*",
            "-b",
            "*",
        ],
        env={**os.environ, faults.ENV: f"term:{point}"},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    returncode, stderr = ended(compare_run, log, timeout=60)
    assert returncode == 128 + signal.SIGTERM, f"{point} was never reached or did not stop the run: {stderr}"
    assert "Traceback" not in stderr and "accel: error" not in stderr, stderr
    assert leftovers(compare_run.pid) == NOTHING
    assert rule_state(None) == host_rules and host_links() == links
    # maps are freed after an RCU grace period; other runs' objects may come and go meanwhile
    assert wait_until(lambda: not any(objects - programs[kind] for kind, objects in bpf_objects().items()))


def ended(run: subprocess.Popen, log, timeout: float) -> tuple[int, str]:
    """The run's exit status and stderr (a file: a pipe nobody reads could fill), once it ends; if
    it does not within `timeout`, the test fails with every thread's stack (accel prints them on
    SIGUSR1) and the run is killed."""

    def stderr() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")

    try:
        return run.wait(timeout=timeout), stderr()
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGUSR1)
        time.sleep(1)
        run.kill()
        run.wait()
        pytest.fail(f"accel did not end within {timeout} s of SIGTERM; where it was:\n{stderr()}")


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
