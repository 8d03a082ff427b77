"""The linters pyproject configures, run as part of the suite so that CI holds the tree to them:
ruff's checks and its formatting on accel/, tests/ and scripts/, mypy on accel/. Their findings
are the failure message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
SOURCES = ["accel", "tests", "scripts"]


def run(*argv: str) -> subprocess.CompletedProcess:
    # the venv's own tools (pinned in the test extras), not whatever is on PATH
    return subprocess.run([sys.executable, "-m", *argv], cwd=TOP, capture_output=True, text=True, timeout=300)


def test_ruff_check():
    result = run("ruff", "check", "--no-cache", *SOURCES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = run("ruff", "format", "--no-cache", "--check", "--diff", *SOURCES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy():
    result = run("mypy", "--cache-dir", "/dev/null")  # no cache: nothing left in the checkout (~5 s)
    assert result.returncode == 0, result.stdout + result.stderr
