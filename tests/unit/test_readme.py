"""README.md renders as meant: its code fences pair up, and shell commands sit inside them (a
fence closed early turns the commands' comments into headings and the prose after into code)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```(.*)$")


def fenced(lines: list[str]) -> tuple[list[bool], list[str]]:
    """Per line, whether it is inside a fenced block (fences included), and what is wrong with the fences."""
    inside, problems, opened = [], [], None
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if fence and opened is None:
            opened = number
        elif fence and fence.group(1).strip():  # a closing fence has no info string: this line is code
            problems.append(f"line {number}: {line!r} inside the block opened at line {opened}")
        elif fence:
            opened = None
            inside.append(True)
            continue
        inside.append(opened is not None)
    if opened is not None:
        problems.append(f"the block opened at line {opened} is never closed")
    return inside, problems


def section(lines: list[str], heading: str) -> range:
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return range(start + 1, end)


def test_every_fence_is_paired():
    assert fenced(README.read_text().splitlines())[1] == []


def test_the_title_is_the_only_top_level_heading():
    """A shell comment outside a fence ("# as root: ...") renders as a heading."""
    lines = README.read_text().splitlines()
    inside, _ = fenced(lines)
    assert [line for line, fence in zip(lines, inside) if line.startswith("# ") and not fence] == ["# accel"]


def test_usage_commands_are_inside_fences():
    lines = README.read_text().splitlines()
    inside, _ = fenced(lines)
    outside = [
        lines[i] for i in section(lines, "## Usage") if lines[i].startswith(("accel ", "scripts/")) and not inside[i]
    ]
    assert outside == []


def test_the_checks_can_fail():
    lines = ["# t", "```sh", "accel render", "```", "# comment", "accel bench", "```", "prose"]
    inside, problems = fenced(lines)
    assert inside == [False, True, True, True, False, False, True, True]
    assert problems == ["the block opened at line 7 is never closed"]
    inside, problems = fenced(["```sh", "a", "```sh", "b", "```"])  # a closing fence has no info string
    assert inside == [True] * 5 and problems == ["line 3: '```sh' inside the block opened at line 1"]
