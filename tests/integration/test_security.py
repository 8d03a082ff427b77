"""What accel leaves open to others on a node: its pins and state are root's alone, its metrics
listen on loopback unless told otherwise, and one pod's annotations change only that pod."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from accel import process
from accel.lab import Lab, LabPlan, MeshedPod, SidecarConfig
from accel.lab.wait import wait_for
from accel.netns import Netns
from tests.node_lab import ACCEL, SERVICE, STOCK, node, node_on  # noqa: F401 (node: a fixture)

pytestmark = pytest.mark.privileged


def test_pins_and_state_are_roots_alone(node):
    node.accel("up")
    node.accel("pod", "add", "--netns", node.lab.pods["pod"].netns, "--id", "pod-a", "--", *STOCK)
    open_to_others = []
    for top in (node.state, node.bpffs / "accel"):
        for directory, _, files in os.walk(top):
            for path in [directory, *(os.path.join(directory, name) for name in files)]:
                mode = os.stat(path)
                if mode.st_uid != 0 or stat.S_IMODE(mode.st_mode) & 0o077:
                    open_to_others.append(f"{path} {stat.filemode(mode.st_mode)} uid {mode.st_uid}")
    assert open_to_others == []
    # and an app's uid cannot read a thing of it
    reader = subprocess.run(
        [
            "/usr/bin/python3",
            "-I",
            "-c",
            "import sys\nfor p in sys.argv[1:]:\n    try:\n"
            "        open(p).close(); print('read', p)\n    except PermissionError:\n        pass",
            str(node.state / "state.json"),
            str(node.bpffs / "accel" / "maps" / "pods"),
        ],
        user=1000,
        group=1000,
        capture_output=True,
        text=True,
    )
    assert reader.returncode == 0 and reader.stdout == "", reader


def test_metrics_listen_on_loopback_unless_told_otherwise(node):
    node.accel("up")
    with Netns.scratch("accel-test") as scratch:  # its own port space: nothing of the node's is taken
        process.run(["ip", "link", "set", "lo", "up"], netns=scratch.name, check=True)
        metrics = process.spawn(
            [ACCEL, "metrics"], netns=scratch.name, env=node.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:

            def listening():  # the local address of each listening TCP socket
                return [
                    line.split()[3] for line in process.run(["ss", "-ltnH"], netns=scratch.name).stdout.splitlines()
                ]

            assert wait_for(lambda: listening() == ["127.0.0.1:9476"], timeout=20), listening()
        finally:
            metrics.terminate()
            metrics.wait(10)


def test_one_pods_annotations_change_only_that_pod():
    """Annotations are read for the pod being added and written under its own namespace's cookie:
    excluding everything in one pod leaves the other captured, and capturing nothing in the other
    leaves the first as it was."""
    plan = LabPlan(
        service_addresses=(SERVICE,),
        sidecar=SidecarConfig(15001, 15006, 15053, 1337, 1337),
        meshed=(MeshedPod("pod"), MeshedPod("userns-pod", userns=True)),
    )
    with Lab(plan) as lab, node_on(lab) as node:
        node.accel("up")
        annotations = node.root / "a.json"

        def add(role, pod_id, annotated):
            annotations.write_text(json.dumps({"annotations": {"sidecar.istio.io/status": "{}", **annotated}}))
            node.accel("pod", "add", "--netns", lab.pods[role].netns, "--id", pod_id, "--annotations", str(annotations))

        add("pod", "a", {"traffic.sidecar.istio.io/excludeOutboundIPRanges": "0.0.0.0/0"})
        add("userns-pod", "b", {})
        assert node.first_hop("a-1") == "remote" and node.first_hop("b-1", role="userns-pod") == "sidecar"
        add("userns-pod", "b", {"traffic.sidecar.istio.io/includeOutboundIPRanges": ""})
        add("pod", "a", {})
        assert node.first_hop("a-2") == "sidecar" and node.first_hop("b-2", role="userns-pod") == "remote"
