"""Waiting on what a lab runs: a condition polled until it holds (a SIGTERM or Ctrl-C ends the
wait), and a free TCP port to give a process before waiting for it to listen."""

from __future__ import annotations

import socket
import time

from .. import cancel


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, timeout: float = 30.0, interval: float = 0.02) -> bool:
    """Poll condition() until it holds (True) or `timeout` passed (False). The timeout only bounds a
    stalled machine: a condition that holds returns at once, so it is generous."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        cancel.sleep(interval)
    return condition()
