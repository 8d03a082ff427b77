"""accel compare's table fits 80 columns (a terminal's default, and rich's width when piped) without
cutting anything that decides a case."""

import re

from rich.console import Console

from accel.compare import BackendRun, Case, Comparison
from accel.compare.report import print_table, summary
from accel.spec import CaptureSpec

# The longest case names derive() makes, and the backends that make the widest table.
NAMES = [
    "outbound-service",
    "userns-inbound-passthrough-source",
    "dns-udp-sendto-from-passthrough-v6",
    "inbound-excluded-port-15090-v6",
    "userns-outbound-as-proxy-gid-1337",
    "udp-not-dns",
    "dns-tcp-mapped",
]
BACKENDS = ["iptables", "iptables-legacy", "nftables", "nftables-sets", "ebpf", "none"]


def outcome(path, result="ok", **details):
    return {
        "result": result,
        "path": path,
        "so_original_dst": "203.0.113.10:8080",
        "proxy_peer": "10.99.0.2",
        "server_local": "203.0.113.10:8080",
        "server_peer": "10.99.0.3",
        "app_peer": "203.0.113.10:8080",
    } | details


def comparison() -> Comparison:
    cases = [Case(name, "a case", "pod", "tcp", "203.0.113.10", 8080, 1000, 1000) for name in NAMES]
    reference = {name: outcome(["sidecar outbound", "remote tcp:8080"]) for name in NAMES}
    reference["userns-inbound-passthrough-source"] = outcome(["sidecar inbound", "userns-pod tcp:15090"])
    reference["dns-tcp-mapped"] = outcome(["sidecar dns", "dns tcp:53"])
    runs = {}
    for backend in BACKENDS:
        outcomes = {name: dict(value) for name, value in reference.items()}
        if backend == "ebpf":
            outcomes["outbound-service"] = outcome(
                ["sidecar outbound", "sidecar inbound", "pod tcp:15090"], result="timeout"
            )
            outcomes["udp-not-dns"] |= {"so_original_dst": "error:ENOENT"}  # the same path, told otherwise
        if backend == "none":
            outcomes = {name: outcome(["remote tcp:8080"], so_original_dst=None) for name in NAMES}
            outcomes["dns-tcp-mapped"] = outcome([], result="refused")
        runs[backend] = BackendRun(
            backend,
            f"{backend}: what it uses in the pod, said at some length",
            outcomes,
            12 if backend.startswith("iptables") else 0,
        )
    return Comparison(CaptureSpec(), cases, runs, "iptables")


def rendered(width: int) -> str:
    console = Console(width=width, record=True)
    print_table(comparison(), console)
    return console.export_text()


def test_nothing_that_decides_a_case_is_cut_at_80_columns():
    text = rendered(80)
    assert max(map(len, text.splitlines())) <= 80
    assert "…" not in text
    words = set(text.split())
    result = comparison()
    for run in result.runs.values():
        for value in run.outcomes.values():
            for hop in summary(value).split(" → "):
                assert set(hop.split()) <= words, hop
    for name in [*NAMES, *BACKENDS, "error:ENOENT", "so_original_dst", "(timeout)", "(refused)"]:
        assert name in words, name


def test_agreement_and_differences_are_said_per_case():
    text = " ".join(rendered(200).split())  # wide enough for no cell to wrap: each row is one line
    assert re.search(
        r"outbound-service proxy-out → remote:8080 ✓ iptables-legacy nftables nftables-sets "
        r"✗ ebpf: proxy-out → proxy-in → app:15090 \(timeout\) ≠ none: remote:8080",
        text,
    )
    assert "✗ ebpf: proxy-out → remote:8080; so_original_dst error:ENOENT" in text
    assert "ebpf captured differently from iptables" in text
    assert re.search(r"ebpf 2 0 ebpf: what it uses", text) and re.search(r"iptables reference 12", text)


def test_wide_terminals_keep_one_line_per_agreeing_case():
    lines = rendered(160).splitlines()
    assert any(
        re.match(
            r"\s*dns-udp-sendto-from-passthrough-v6\s+proxy-out → remote:8080\s+✓ iptables-legacy "
            r"nftables nftables-sets ebpf",
            line,
        )
        for line in lines
    )
