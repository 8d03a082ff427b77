"""The one command runner: the result comes back whatever the exit status; check=True raises one
CommandError naming the command and what it said. Run here without a namespace (no root)."""

from __future__ import annotations

import os
import subprocess

import pytest

from accel import process
from accel.backends import Runner

FAILING = ["sh", "-c", "echo out; echo err >&2; exit 3"]


def test_a_failure_comes_back_as_a_result():
    result = process.run(FAILING)
    assert (result.args, result.returncode, result.stdout, result.stderr) == (FAILING, 3, "out\n", "err\n")


def test_check_raises_naming_the_command_and_its_error():
    with pytest.raises(process.CommandError, match=r"^sh -c echo out; echo err >&2; exit 3 exited 3: err$") as raised:
        process.run(FAILING, check=True)
    assert (raised.value.argv, raised.value.returncode, raised.value.stderr) == (FAILING, 3, "err\n")
    with pytest.raises(process.CommandError, match="exited 1: only stdout"):
        process.run(["sh", "-c", "echo only stdout; exit 1"], check=True)


def test_input_and_success():
    assert process.run(["cat"], input="lines\n", check=True).stdout == "lines\n"


def test_a_command_that_overruns_its_timeout_is_killed():
    with pytest.raises(subprocess.TimeoutExpired):
        process.run(["sleep", "30"], timeout=0.2)


def test_the_backends_runner_adds_to_the_environment(monkeypatch):
    monkeypatch.setenv("ACCEL_KEPT", "kept")
    result = Runner().run(["sh", "-c", 'echo "$ACCEL_KEPT $ACCEL_ADDED"'], env={"ACCEL_ADDED": "added"})
    assert result.stdout == "kept added\n" and "ACCEL_ADDED" not in os.environ
