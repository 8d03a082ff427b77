"""Start processes inside a pod: its cgroup first, then its user namespace (for a pod that has one
of its own), then its network namespace, then its uid/gid.

The child joins the cgroup and the namespaces itself, before exec, with setns(2) on
/run/netns/NAME, rather than through `ip netns exec`, which remounts /sys and so hides the
cgroup mount. Credentials are dropped last, since the first steps need root; in a pod's user
namespace they are the pod's ids (root there is the pod's root, not the node's).

run() is how accel runs a command, in a pod or on the node: one failure convention everywhere.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time

from . import cancel
from . import userns as user_namespaces
from .cgroup import Cgroup

CLONE_NEWNET = 0x40000000
_DEFERRED = {signal.SIGTERM, signal.SIGINT}
_libc = ctypes.CDLL(None, use_errno=True)


def setns(netns: str) -> None:
    """Move the calling thread into a network namespace, by name (/run/netns/NAME) or path."""
    fd = os.open(user_namespaces.netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into network namespace {netns}: {os.strerror(error)}")
    finally:
        os.close(fd)


def in_netns(netns: str, function, *args):
    """function(*args), run in a thread that has entered the namespace and then ends, so the
    switch never leaks into the caller. Exceptions come back to the caller."""
    outcome: dict = {}

    def inside():
        try:
            setns(netns)
            outcome["result"] = function(*args)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=inside, name=f"in-{netns}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def spawn(
    argv: list[str],
    *,
    netns: str | None = None,
    cgroup: Cgroup | None = None,
    uid: int | None = None,
    gid: int | None = None,
    cpus: set[int] | None = None,
    userns: bool = False,
    **popen_kwargs,
) -> subprocess.Popen:
    """subprocess.Popen, with the child placed in `cgroup` and `netns`, running as uid/gid, and
    pinned to `cpus` (inherited by everything it starts). `userns`: also enter the user
    namespace that owns `netns`, as the pod's own processes live there; uid/gid are then the
    pod's ids, and default to the pod's root."""
    procs_file = str(cgroup.path / "cgroup.procs") if cgroup else None
    owner = user_namespaces.owner_fd(netns) if userns and netns else None
    if owner is not None and user_namespaces.is_own(owner):  # the pod shares the node's user namespace
        os.close(owner)
        owner = None
    if owner is not None:
        uid, gid = (0 if uid is None else uid), (0 if gid is None else gid)
        popen_kwargs["pass_fds"] = (*popen_kwargs.get("pass_fds", ()), owner)

    def enter():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _DEFERRED)  # the default handlers are back (cancel.py)
        if procs_file:
            with open(procs_file, "w") as procs:
                procs.write(str(os.getpid()))
        if owner is not None:
            user_namespaces.enter(owner)
        if netns:
            setns(netns)
        if cpus:
            os.sched_setaffinity(0, cpus)
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)

    # A SIGTERM or Ctrl-C arriving during fork would run accel's handler in the child: hold them
    # until the child has put the default handlers back (an at-fork hook of accel/cancel.py).
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        return subprocess.Popen(argv, preexec_fn=enter, **popen_kwargs)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if owner is not None:
            os.close(owner)


class CommandError(RuntimeError):
    """A command run with check=True that exited non-zero: its argv, exit status and what it said."""

    def __init__(self, argv: list[str], returncode: int, stderr: str):
        self.argv, self.returncode, self.stderr = argv, returncode, stderr
        super().__init__(f"{' '.join(argv)} exited {returncode}: {stderr.strip()}")


def run(
    argv: list[str], *, input: str | None = None, timeout: float = 30, check: bool = False, **kwargs
) -> subprocess.CompletedProcess:
    """spawn(), waited for; output captured as text. accel's one way to run a command: the result
    comes back whatever the exit status, and with `check` a non-zero one raises CommandError.
    A SIGTERM or Ctrl-C arriving meanwhile ends the wait (see accel/cancel.py): the child is
    killed and Cancelled raised."""
    cut = cancel.armed()  # checked before the child starts: a run begun while stopping is clean-up
    process = spawn(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                # communicate() may be called again after a timeout without losing output
                stdout, stderr = process.communicate(input, timeout=min(left, cancel.SLICE) if cut else left)
                break
            except subprocess.TimeoutExpired:
                input = None  # sent already
                if cut:
                    cancel.check()
                if time.monotonic() >= deadline:
                    raise subprocess.TimeoutExpired(argv, timeout) from None
    except BaseException:  # a timeout, or a signal: the child does not outlive the wait
        process.kill()
        process.wait()
        raise
    if check and process.returncode != 0:
        raise CommandError(argv, process.returncode, stderr or stdout)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
