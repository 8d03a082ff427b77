"""Faults: accel killed at every step of a node's changes (accel/faults.py's failpoints), and
what the next `accel up` makes of it. A pod is captured wholly or not at all: its traffic and its
entries in the kernel say the same, and the node goes on working."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from accel import faults
from accel.ebpf.inspect import bpf_objects, sk_lookup_links
from accel.lab import Lab
from accel.netns import Netns
from accel.node.paths import bpffs_mounted_at
from tests.node_lab import PLAN, STOCK, another_accel, node_on

# One lab for the whole module, a node of its own (bpffs, state) for each test: every test ends
# with accel down, which leaves the lab as it found it.


@pytest.fixture(scope="module")
def lab():
    with Lab(PLAN) as shared:
        yield shared


@pytest.fixture
def node(lab):
    with node_on(lab) as ready:
        yield ready


pytestmark = pytest.mark.privileged

POD_MAPS = ("pods", "ports", "groups", "prefixes", "sources", "counters")


def add_command(node) -> list[str]:
    return ["pod", "add", "--netns", node.lab.pods["pod"].netns, "--id", "pod-a", "--", *STOCK, "-o", "9000"]


def commands(node) -> dict[str, list[str]]:
    return {"up": ["up"], "pod-add": add_command(node), "pod-del": ["pod", "del", "--id", "pod-a"], "down": ["down"]}


@pytest.mark.parametrize("point", list(faults.POINTS))
def test_killed_at_each_step_the_next_up_repairs(node, point):
    command = point.split(":")[0]
    if command != "up":
        node.accel("up")
    if command in ("pod-del", "down"):
        node.accel(*add_command(node))
        assert node.first_hop("before") == "sidecar"
    died = node.accel(*commands(node)[command], check=False, env={faults.ENV: f"kill:{point}"})
    assert died.returncode == -signal.SIGKILL, f"{point} was never reached: {died.stderr}"

    node.json("up")
    status = node.accel("status", "--json", check=False)
    assert status.returncode == 0, status.stderr  # healthy: nothing half-done is left to report
    document = json.loads(status.stdout)
    captured = "pod-a" in {pod["id"] for pod in document["pods"]}
    entries = {item["name"]: item["entries"] for item in document["maps"]}
    links = sk_lookup_links(node.lab.pods["pod"].netns)
    if captured:
        assert all(pod["phase"] == "ready" for pod in document["pods"])
        assert entries["pods"] == 1 and entries["ports"] == 4 and len(links) == 1  # -o 9000 and the three -d
        assert node.first_hop(f"after-{point}") == "sidecar"
    else:
        assert {name: entries[name] for name in POD_MAPS} == dict.fromkeys(POD_MAPS, 0) and links == []
        assert node.first_hop(f"after-{point}") == "remote"
    # and the node works on
    node.accel(*add_command(node))
    assert node.first_hop(f"again-{point}") == "sidecar"
    node.accel("down")
    assert not node.state.exists() and sk_lookup_links(node.lab.pods["pod"].netns) == []
    assert node.first_hop(f"down-{point}") == "remote"


def test_the_pin_directory_removed_under_accel_is_detected_and_up_restores_every_pod(node):
    node.accel("up")
    node.accel(*add_command(node))
    assert node.first_hop("before") == "sidecar"
    shutil.rmtree(node.bpffs / "accel")  # every pin: links, maps, programs, the pod's sk_lookup link
    status = node.accel("status", check=False)
    assert status.returncode == 1 and "not pinned" in status.stderr
    assert node.first_hop("unpinned") == "remote"  # nothing held the links: the capture went with them
    repaired = node.json("up")
    assert any("pod-a" in line and "written again" in line for line in repaired["reconciled"])
    assert node.accel("status").returncode == 0
    assert node.first_hop("restored") == "sidecar" and len(sk_lookup_links(node.lab.pods["pod"].netns)) == 1


def test_a_damaged_state_is_named_and_down_still_removes_everything(node):
    node.accel("up")
    node.accel(*add_command(node))
    (node.state / "state.json").write_text("{not json")
    for command in (["status"], ["up"], ["pod", "list"]):
        refused = node.accel(*command, check=False)
        assert refused.returncode == 1 and "state.json is damaged" in refused.stderr, command
        assert refused.stderr.count("\n") == 1
    down = node.json("down")
    assert "damaged" in down["damaged_state"] and down["pins"]
    assert not node.state.exists() and sk_lookup_links(node.lab.pods["pod"].netns) == []
    assert node.first_hop("after-down") == "remote"


def test_a_missing_state_with_the_datapath_still_pinned(node):
    """The state directory gone (a node's disk wiped, say) while the datapath is pinned: up adopts the
    datapath, and the pods it no longer knows are dropped from the kernel, named, never left
    captured without a record."""
    node.accel("up")
    node.accel(*add_command(node))
    shutil.rmtree(node.state)
    assert node.accel("status", check=False).returncode == 1
    repaired = node.json("up")
    assert any("not in the state" in line for line in repaired["reconciled"]), repaired
    document = node.json("status")
    assert document["pods"] == [] and {m["name"]: m["entries"] for m in document["maps"]}["pods"] == 0
    assert sk_lookup_links(node.lab.pods["pod"].netns) == [] and node.first_hop("dropped") == "remote"
    node.accel(*add_command(node))
    assert node.first_hop("added-again") == "sidecar"


# What a first load can meet that the kernel's feature probes did not foresee, each in a copy of
# accel that has it: a map the kernel will not create, a program its verifier refuses, a hook it
# will not attach.
BROKEN = {
    "a map": {"bpf/accel.h": ("#define ACCEL_MAX_LOST 4096", "#define ACCEL_MAX_LOST 0")},
    "a program": {
        "bpf/sockopt.c": (
            "int getsockopt(struct bpf_sockopt *ctx)\n{\n",
            "int getsockopt(struct bpf_sockopt *ctx)\n{\n\t*(volatile int *)0x10 = 1;\n",
        )
    },
    "a hook": {"accel/ebpf/programs.py": ("ATTACH_CGROUP_GETSOCKOPT = 21", "ATTACH_CGROUP_GETSOCKOPT = 1000")},
}
# a hook the probe finds missing is named by it, before anything loads
CAUSES = {"a map": "could not open bpf map: lost", "a program": "loading getsockopt", "a hook": "getsockopt hook"}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_load_that_fails_midway_leaves_nothing_and_auto_takes_nftables(node, tmp_path, broken):
    env = another_accel(tmp_path, BROKEN[broken])
    before = bpf_objects()
    asked = node.accel("up", "--backend", "ebpf", check=False, env=env)
    assert asked.returncode == 1 and CAUSES[broken] in asked.stderr and asked.stderr.count("\n") == 1
    assert bpf_objects() == before and not (node.bpffs / "accel").exists()
    assert bpffs_mounted_at(node.bpffs) is None and not (node.state / "state.json").exists()
    auto = node.json("up", env=env)
    assert auto["backend"] == "nftables" and CAUSES[broken] in auto["why"] and auto["why"].endswith("so nftables")
    assert bpf_objects() == before and not (node.bpffs / "accel").exists()
    node.accel(*add_command(node), env=env)
    assert node.first_hop(f"nftables-{broken.split()[-1]}") == "sidecar"


def test_a_pod_that_does_not_fit_a_full_map_is_refused_and_leaves_nothing(node, tmp_path):
    """With the node-wide port map forced to 8 entries: a pod with the stock spec (three excluded
    inbound ports) fits, a second one needing seven more does not, and is undone entirely."""
    small = another_accel(tmp_path, {"bpf/accel.h": ("#define ACCEL_MAX_PORTS 65536", "#define ACCEL_MAX_PORTS 8")})
    node.accel("up", env=small)
    node.accel(*add_command(node), env=small)  # -o 9000 and the three -d ports: 4 entries
    other = Netns.scratch("accel-test").create()
    try:
        before = node.json("status", env=small)
        refused = node.accel(
            "pod",
            "add",
            "--netns",
            other.name,
            "--id",
            "pod-b",
            "--",
            *STOCK,
            "-d",
            "1,2,3,4,5",
            env=small,
            check=False,
        )
        assert refused.returncode == 1 and "map ports is full (8 entries" in refused.stderr
        assert refused.stderr.count("\n") == 1
        after = node.json("status", env=small)
        assert [p["id"] for p in after["pods"]] == ["pod-a"]
        assert {m["name"]: m["entries"] for m in after["maps"]} == {m["name"]: m["entries"] for m in before["maps"]}
        assert sk_lookup_links(other.name) == []
        assert node.first_hop("still") == "sidecar"
    finally:
        other.remove()
