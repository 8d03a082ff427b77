"""Node scale: a lab of many cheap pods, and `accel bench --pods`, the real command, producing
every figure for both backends (the churn under traffic is the soak's: test_soak.py)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from accel import process
from accel.lab import Lab, LabPlan, leftovers
from tests.node_lab import ACCEL

pytestmark = pytest.mark.privileged

FIGURES = ("pod_add_ms_p50", "pod_add_ms_max", "all_pods_s", "remove_all_s", "memory_bytes", "rate_ratio")


def test_a_lab_of_many_pods_each_with_a_sidecar_and_nothing_left_after():
    with Lab(LabPlan(recording_agents=False, scale_pods=20)) as lab:
        scale = [pod for role, pod in lab.pods.items() if role.startswith("scale-")]
        assert len(scale) == 20 and len({pod.ipv4 for pod in scale}) == 20
        for pod in (scale[0], scale[-1]):
            listening = process.run(["ss", "-Hltn"], netns=pod.netns).stdout
            assert ":15001 " in listening and ":15006 " in listening
            echo = lab.client(pod.role, proto="ping", dst=lab.pods["remote"].ipv4, port=1, token="scale", uid=0, gid=0)
            assert echo["result"] == "ok", echo
        name = lab.name
    left = leftovers(pid=os.getpid())
    assert not any(name in item for items in left.values() for item in items), left


def test_bench_pods_gives_every_figure_for_both_backends():
    run = subprocess.run(
        [ACCEL, "bench", "--pods", "4", "--quick", "--json", "-"], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    document = json.loads(run.stdout)
    assert document["pods"] == 4 and set(document["scale"]) == {"ebpf", "nftables"}
    for backend, figures in document["scale"].items():
        for figure in FIGURES:
            assert figures[figure] is not None, (backend, figure)
        assert len(figures["samples"]["pod_add_ms"]) == 4
        assert 0 < figures["pod_add_ms_p50"] <= figures["pod_add_ms_max"]
        assert 0.5 < figures["rate_ratio"] < 2
    ebpf = document["scale"]["ebpf"]
    assert ebpf["memory_source"] == "bpftool bytes_memlock" and ebpf["memory_bytes"] > 1 << 20
    assert ebpf["maps"]["pods"]["entries"] == 6  # the 4 and the benchmark's 2, all captured at once
    assert {v["figure"] for v in document["verdicts"]} >= {"pod_add_ms_p50", "all_pods_s", "rate_ratio"}
