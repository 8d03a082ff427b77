"""The sockops account's arithmetic and its table (the programs themselves run in
tests/integration/test_bench.py, inside accel bench)."""

import copy
import json

from accel.bench.markdown import markdown
from accel.bench.op_account import SOCK_OPS, account
from accel.bench.program_budget import ops_rows
from accel.bench.run import BenchConfig
from tests.unit.test_bench_report import BUDGET, CPS16, document, rendered


def totals(**by_op: tuple[int, int, int, int, int]) -> dict[str, list[int]]:
    """Counter totals as op_account reads them: per op (calls, timed, ns, overhead timed, overhead ns)."""
    names = ("op_calls", "op_timed", "op_ns", "overhead_timed", "overhead_ns")
    table = {name: [0] * len(SOCK_OPS) for name in names}
    for op, values in by_op.items():
        for name, value in zip(names, values):
            table[name][SOCK_OPS.index(op)] = value
    return table


def test_calls_and_time_per_connection_less_the_hand_over():
    rows = account(
        totals(
            TCP_CONNECT=(300, 300, 300 * 160, 300, 300 * 20),
            PASSIVE_ESTABLISHED=(300, 290, 290 * 420, 300, 300 * 20),  # 10 calls interrupted: not timed
            TIMEOUT_INIT=(600, 600, 600 * 18, 600, 600 * 20),
        ),  # cheaper than the hand-over
        connections=100,
    )
    assert rows == {
        "PASSIVE_ESTABLISHED": {"runs": 3.0, "ns_per_run": 400.0, "ns": 1200.0},
        "TCP_CONNECT": {"runs": 3.0, "ns_per_run": 140.0, "ns": 420.0},
        "TIMEOUT_INIT": {"runs": 6.0, "ns_per_run": 0.0, "ns": 0.0},
    }
    assert list(rows) == ["PASSIVE_ESTABLISHED", "TCP_CONNECT", "TIMEOUT_INIT"]  # the costliest first


def test_an_op_never_called_is_not_listed_and_no_connections_divide_by_one():
    assert account(totals(), connections=0) == {}
    assert account(totals(STATE=(2, 0, 0, 0, 0)), connections=0) == {
        "STATE": {"runs": 2.0, "ns_per_run": 0.0, "ns": 0.0}
    }


OPS = {
    "ebpf": {
        "PASSIVE_ESTABLISHED": {"runs": 3.0, "ns_per_run": 350.0, "ns": 1050.0},
        "STATE": {"runs": 2.0, "ns_per_run": 50.0, "ns": 100.0},
        "TIMEOUT_INIT": {"runs": 6.0, "ns_per_run": 20.0, "ns": 120.0},
    },
    "ebpf+sockmap": {
        "PASSIVE_ESTABLISHED": {"runs": 3.0, "ns_per_run": 1060.0, "ns": 3180.0},
        "STATE": {"runs": 2.0, "ns_per_run": 50.0, "ns": 100.0},
    },
}


def with_ops(before: bool = False) -> dict:
    doc = document(scaling=False, modes=tuple(CPS16), budget=True)
    for mode, ops in OPS.items():
        doc["budget"]["modes"][mode]["sockops_ops"] = copy.deepcopy(ops)
    if before:
        baseline = copy.deepcopy(BUDGET)
        baseline["modes"]["ebpf"]["sockops_ops"] = {
            **copy.deepcopy(OPS["ebpf"]),
            "STATE": {"runs": 4.0, "ns_per_run": 50.0, "ns": 200.0},
        }
        doc["budget_baseline"] = baseline
    return doc


def test_the_account_is_a_table_in_markdown_with_the_calls_before():
    text = markdown(with_ops(before=True))
    lines = text.splitlines()
    header = next(number for number, line in enumerate(lines) if line.startswith("| sockops op |"))
    lines = [line for line in lines[header:] if line.startswith("| ")]
    lines = lines[: next(number for number, line in enumerate(lines) if line.startswith("| **total**")) + 1]
    assert lines[0] == (
        "| sockops op | ebpf calls/conn | ebpf ns/call | ebpf µs/conn | ebpf calls before "
        "| ebpf+sockmap calls/conn | ebpf+sockmap ns/call | ebpf+sockmap µs/conn |"
    )
    assert "| PASSIVE_ESTABLISHED | 3.0 | 350 | 1.05 | 3.0 | 3.0 | 1,060 | 3.18 |" in lines
    assert "| STATE | 2.0 | 50 | 0.10 | 4.0 | 2.0 | 50 | 0.10 |" in lines
    assert "| TIMEOUT_INIT | 6.0 | 20 | 0.12 | 6.0 | - | - | - |" in lines
    assert lines[-1] == "| **total** | 11.0 | - | 1.27 | 13.0 | 5.0 | - | 3.28 |"


def test_the_account_prints_and_fits_the_terminal():
    for width in (120, 80):
        output = rendered(with_ops(), width)
        assert "…" not in output and output.count("sockops calls per proxied connection, by op") == 1
        rows = [line.split() for line in output.splitlines()]
        assert ["PASSIVE_ESTABLISHED", "3.0", "350", "1.05"] in rows or [
            "PASSIVE_ESTABLISHED",
            "3.0",
            "350",
            "1.05",
            "3.0",
            "1,060",
            "3.18",
        ] in rows


def test_a_run_without_the_account_shows_no_table():
    doc = document(scaling=False, modes=tuple(CPS16), budget=True)
    assert ops_rows(doc) is None and "sockops op" not in markdown(doc)
    assert "by op" not in rendered(doc, 100)
    json.dumps(with_ops(before=True))  # the document stays JSON


def test_the_account_is_one_more_measurement_per_ebpf_mode():
    config = BenchConfig(
        modes=("explicit", "ebpf", "ebpf+sockmap"), rounds=1, seconds=1, scaling_rounds=0, churn_seconds=0
    )
    assert config.measurements() == 1 * 5 * 3 + 2 * 2
