"""accel's own golden files (tests/golden/): compared as text; ACCEL_UPDATE_GOLDENS=1 rewrites them.
A golden holds what accel did, not what is right: review each diff (git diff tests/golden)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"


def updating() -> bool:
    return os.environ.get("ACCEL_UPDATE_GOLDENS") == "1"


def check(path: Path, actual: str) -> None:
    """Compare with the golden file, or with ACCEL_UPDATE_GOLDENS=1 rewrite it."""
    if updating():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    expected = path.read_text() if path.exists() else ""
    if actual != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            f"{path} (golden{'' if path.exists() else ', missing'})",
            "actual",
        )
        pytest.fail(
            f"{path.name} differs from its golden; ACCEL_UPDATE_GOLDENS=1 rewrites it (review the diff):\n"
            + "".join(diff),
            pytrace=False,
        )
