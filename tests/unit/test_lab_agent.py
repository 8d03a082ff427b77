"""The lab's agent as the lab ships it: one zipapp, run by Debian's python3 with -I -S, standard
library only. Loopback in this process's own network namespace only: no root, no namespaces."""

from __future__ import annotations

import ast
import json
import socket
import stat
import subprocess
import sys
import threading

import pytest

from accel import process
from accel.lab.install import AGENT, PYTHON, build_agent


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    return build_agent(tmp_path_factory.mktemp("lab") / "agent.pyz")


def run_agent(agent, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return process.run([PYTHON, "-I", "-S", str(agent), *args], timeout=timeout)


def test_the_zipapp_is_readable_by_every_uid(agent):
    assert stat.S_IMODE(agent.stat().st_mode) == 0o644


def test_help_lists_every_role(agent):
    result = run_agent(agent, "--help")
    assert result.returncode == 0, result.stderr
    usage = " ".join(result.stdout.split("\n\n")[0].split())
    assert usage.startswith(
        "usage: agent.pyz [-h] {server,sidecar,client,burst,sink,churn,http,http-get,stream-server,stream-client} ..."
    )


def test_a_udp_client_reports_what_it_saw(agent):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo:
        echo.bind(("127.0.0.1", 0))
        echo.settimeout(10)
        seen = {}

        def answer():
            data, peer = echo.recvfrom(4096)
            seen.update(token=data.decode(), peer=peer)
            echo.sendto(json.dumps({"agent": "echo", "token": data.decode()}).encode(), peer)

        responder = threading.Thread(target=answer)
        responder.start()
        port = echo.getsockname()[1]
        result = run_agent(
            agent, "client", "--proto", "udp", "--dst", "127.0.0.1", "--port", str(port), "--token", "t-udp"
        )
        responder.join()
    assert result.returncode == 0, result.stderr
    sockname = f"127.0.0.1:{seen['peer'][1]}"
    assert json.loads(result.stdout) == {
        "sockname": sockname,
        "peername": f"127.0.0.1:{port}",
        "reply": {"agent": "echo", "token": "t-udp"},
        "ok": True,
        "result": "ok",
    }
    assert seen["token"] == "t-udp"


def test_the_agent_imports_only_the_standard_library_and_itself():
    """It runs where neither accel nor the venv can be read (as the proxy uid)."""
    for module in sorted(AGENT.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue  # the agent's own modules
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names, f"{module.name} imports {name}"


def test_events_leave_out_a_line_still_being_written(tmp_path):
    """A CI run once failed reading the event log (JSONDecodeError, 'Unterminated string'): an
    agent's one write of a line becomes visible a page at a time, so a reader can find half of
    it. Here the half is written by hand; it is no event until its newline arrives."""
    from accel.lab import Lab, LabPlan

    lab = Lab(LabPlan())
    lab.log = tmp_path / "events.jsonl"
    first = json.dumps({"time_ns": 1, "agent": "remote", "token": "a"}) + "\n"
    second = json.dumps({"time_ns": 2, "agent": "sidecar", "token": "b"}) + "\n"
    lab.log.write_text(first + second[:20])
    assert [e["token"] for e in lab.events()] == ["a"]
    with open(lab.log, "a", encoding="utf-8") as log:
        log.write(second[20:])
    assert [e["token"] for e in lab.events()] == ["a", "b"]
    assert [e["agent"] for e in lab.events("b")] == ["sidecar"]
