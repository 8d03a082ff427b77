"""A pod's routing (accel/pod_routing.py) applied through a backend's runner: all of it or none,
and undone with the capture."""

from __future__ import annotations

from ..pod_routing import ALREADY, commands, passthrough, undo
from ..spec import CaptureSpec
from .base import BackendError
from .runner import Runner


def run_add(runner: Runner, netns: str, wanted: list[list[str]]) -> None:
    """Each command, or none: a failure undoes those before it and is named. ::6 there already is
    fine; a TPROXY rule or route there already is not (whose would it be?)."""
    done: list[list[str]] = []
    for argv in wanted:
        result = runner.run(argv, netns=netns)
        present = argv in passthrough(True, "add") and any(words in result.stderr for words in ALREADY)
        if result.returncode != 0 and not present:
            for back in reversed(done):
                runner.run(back, netns=netns)
            raise BackendError(f"pod routing: {' '.join(argv)}: {result.stderr.strip()}")
        done.append(undo(argv))


def add_routes(runner: Runner, netns: str, spec: CaptureSpec) -> None:
    run_add(runner, netns, commands(spec, "add"))


def remove_routes(runner: Runner, netns: str, spec: CaptureSpec) -> None:
    for argv in reversed(commands(spec, "del")):
        runner.run(argv, netns=netns)  # what is gone already (with its namespace, say) is fine


def switch_routes(runner: Runner, netns: str, old: CaptureSpec, new: CaptureSpec) -> None:
    """From what `old` needs to what `new` needs, touching what both need not at all."""
    before, after = commands(old, "add"), commands(new, "add")
    for argv in reversed(before):
        if argv not in after:
            runner.run(undo(argv), netns=netns)
    run_add(runner, netns, [argv for argv in after if argv not in before])
