"""The soak at its CI length: accel soak, the real command, for 60 s of mixed traffic through an
eBPF-captured pod while churn pods are added and removed (accel/lab/soak.py has the checks)."""

from __future__ import annotations

import json
import subprocess

import pytest

from accel.lab import leftovers
from tests.node_lab import ACCEL

pytestmark = pytest.mark.privileged


def test_a_minute_of_mixed_traffic_and_pod_churn():
    run = subprocess.run(
        [ACCEL, "soak", "--duration", "60", "--json", "-"], capture_output=True, text=True, timeout=400
    )
    assert run.returncode in (0, 1), run.stderr
    report = json.loads(run.stdout)
    assert report["problems"] == [] and report["ok"] and run.returncode == 0
    for name in ("outbound", "inbound", "dns"):
        row = report["traffic"][name]
        assert row["requests"] >= 500 and row["failed"] == row["misrouted"] == 0, (name, row)
    streams = report["traffic"]["streams"]
    assert streams["streams"] >= 20 and streams["not_exact"] == 0
    assert report["churn"]["pods"] >= 10 and report["churn"]["problems"] == 0
    assert report["maps"]["final"]["pods"] == report["maps"]["baseline"]["pods"] == 1
    assert report["maps"]["max"]["lost"] == 0
    assert report["pins"]["start"] == report["pins"]["end"] and report["leftover_namespaces"] == []
    assert report["agents"]["fds"]["start"] == report["agents"]["fds"]["end"]
    assert not any(leftovers(pid=report["pid"]).values())
