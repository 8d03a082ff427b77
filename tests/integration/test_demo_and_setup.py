"""The two README commands' building blocks, run for real."""

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from accel.cli import main
from accel.netns import NETNS_DIR

pytestmark = pytest.mark.privileged
TOP = Path(__file__).resolve().parents[2]


def accel_namespaces():
    return {p.name for p in NETNS_DIR.glob("accel-*")} if NETNS_DIR.exists() else set()


def test_demo_reads_rules_back_from_the_kernel_and_leaves_nothing():
    before = accel_namespaces()
    result = CliRunner().invoke(main, ["demo", "--bench-modes", "explicit,ebpf"])  # every mode: test_bench.py
    assert result.exit_code == 0, result.output
    out = result.stdout
    # iptables-save's canonical form, which only the kernel round trip produces
    assert "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN" in out
    # nft list ruleset's form
    assert 'oifname "lo" meta skuid != 1337 counter packets 0 bytes 0 return' in out
    assert " ".join(out.split()).count("Namespace removed: True") == 2
    # the eBPF datapath: the dry run, then read back with bpftool, and nothing left after removal
    assert "ports inbound-exclude 15090,15021,15020" in out
    assert "cgroup_inet4_connect" in out and "sk_lookup, netns_ino" in out
    assert "programs, maps and links left: 0" in " ".join(out.split())
    # the comparison on real traffic
    assert "nftables, ebpf captured exactly what iptables captured" in " ".join(out.split())
    assert "outbound-service" in out and "proxy-out" in out
    # on a node: pinned, captured with no accel process running, nothing left after down
    flat = " ".join(out.split())
    assert "pod pod-a: added" in flat and "nothing to change" in flat
    assert "with no accel process running: sidecar -> remote" in flat
    assert "after accel down: remote" in flat and "links left after accel down: 0" in flat
    # the benchmark
    assert "accel bench: medians" in out and "rule scaling" in out
    assert "path check: in every mode but none" in " ".join(out.split())
    assert accel_namespaces() == before


def test_setup_is_idempotent():
    # scripts/test has just run setup, so a second run must find nothing to do.
    result = subprocess.run([str(TOP / "scripts/setup")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "nothing to change" in result.stdout
