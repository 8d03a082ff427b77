"""Stopping on SIGTERM or Ctrl-C at safe points, never inside the code the signal interrupted.

A handler that raises (sys.exit, Python's default KeyboardInterrupt) raises at whatever bytecode
the main thread runs next. In `accel compare` that was once logging's at-fork hook in the parent
(py-spy showed it): the exception is swallowed there ("Exception ignored in _releaseLock"), the
lock the hook was to release stays held, every later fork in another thread blocks on it, and the
run hung instead of exiting. So the handler here only records the signal, and the interpreter
writes its number to a wakeup socket, which wakes a thread waiting in sleep() or wait_readable()
whichever thread the kernel delivered the signal to. Work checks at safe points (check() between
steps, and the waits below) and raises Cancelled there, where unwinding releases what it holds.

A wait is cut short by a signal that arrives before it ends. A wait that begins after the signal
(those of the unwinding itself: removing a lab, killing a process) runs as usual, so clean-up is
never cancelled in turn; forward work calls check() before each step so that it stops instead.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SLICE = 0.1  # seconds: how soon a wait that cannot poll the wakeup socket (communicate(), a Condition) sees a signal

_received: int | None = None  # the first of SIGNALS since install(); later ones change nothing
_reader: socket.socket | None = None  # readable once a signal arrived: the interpreter wrote to it
_writer: socket.socket | None = None
_owner: int | None = None  # the PID that installed: a forked child's inherited handler records nothing
_until_signalled = False  # the command runs until a signal stops it: the signal is its normal end


class Cancelled(BaseException):
    """A signal asked the process to stop; raised at a safe point. A BaseException, as
    KeyboardInterrupt is, so that `except Exception` does not swallow it."""

    def __init__(self, number: int):
        self.signal = number
        super().__init__(f"stopped by {signal.Signals(number).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signal


def install() -> None:
    """Record SIGTERM and SIGINT from now on instead of acting on them (main thread only)."""
    global _reader, _writer, _owner
    if _reader is None:
        _reader, _writer = socket.socketpair()
        _reader.setblocking(False)
        _writer.setblocking(False)
    assert _writer is not None  # made with _reader
    if _owner is None:
        os.register_at_fork(after_in_child=_forget_in_child)
    _owner = os.getpid()
    signal.set_wakeup_fd(_writer.fileno(), warn_on_full_buffer=False)
    for number in SIGNALS:
        signal.signal(number, _record)


def _forget_in_child() -> None:
    """In a forked child (pyroute2 forks helpers that never exec; spawn()'s children until they
    exec): a signal to it is its own. Without this its handler, inherited, would write to the
    parent's wakeup socket, and the parent would stop for a SIGTERM sent to a helper."""
    if _writer is None:
        return
    previous = signal.set_wakeup_fd(-1)
    if previous != _writer.fileno():  # not ours: leave it be
        signal.set_wakeup_fd(previous)
        return
    for number in SIGNALS:
        if signal.getsignal(number) is _record:
            signal.signal(number, signal.SIG_DFL)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """install() for the block; afterwards the handlers before it act again and nothing is
    recorded (a test that runs commands in its own process goes on as before)."""
    global _received, _reader, _writer, _until_signalled
    handlers = {number: signal.getsignal(number) for number in SIGNALS}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    install()
    try:
        yield
    finally:
        signal.set_wakeup_fd(wakeup)
        for number, handler in handlers.items():
            signal.signal(number, handler)
        _received, _until_signalled = None, False
        assert _reader is not None and _writer is not None  # made by install() above
        _reader.close()
        _writer.close()
        _reader = _writer = None


def _record(number, frame) -> None:
    global _received
    if os.getpid() == _owner and _received is None:
        _received = number


def received() -> int | None:
    """The signal that asked to stop, if one did. It is known from the wakeup socket as soon as
    it arrives, before the main thread has run the handler."""
    if _received is not None or _reader is None:
        return _received
    try:
        pending = _reader.recv(64, socket.MSG_PEEK)  # peeked, never read: it stays readable for every waiter
    except (BlockingIOError, InterruptedError):
        return None
    return next((number for number in pending if number in SIGNALS), None)


def check() -> None:
    """A safe point: raise Cancelled if a signal asked to stop."""
    number = received()
    if number is not None:
        raise Cancelled(number)


def armed() -> bool:
    """Whether a wait beginning now is to be cut short by a signal: no signal yet (see above)."""
    return _reader is not None and received() is None


def sleep(seconds: float) -> None:
    """time.sleep, cut short by a signal arriving meanwhile (then Cancelled)."""
    if not armed():
        time.sleep(max(seconds, 0))
        return
    wait_readable(None, seconds)
    check()


def wait_readable(fd: int | None, timeout: float | None) -> bool:
    """Wait until `fd` is readable (True) or `timeout` seconds passed (False); a signal arriving
    meanwhile raises Cancelled, if the wait was armed when it began."""
    watch = select.poll()
    if fd is not None:
        watch.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    reader = _reader if armed() else None  # armed: _reader is set
    watched = reader.fileno() if reader is not None else -1
    if reader is not None:
        watch.register(watched, select.POLLIN)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(deadline - time.monotonic(), 0)
        ready = {ready_fd for ready_fd, _ in watch.poll(None if left is None else left * 1000)}
        if reader is not None and reader.fileno() == -1:  # handling() ended meanwhile: nothing cuts it short now
            watch.unregister(watched)
            reader = None
        if reader is not None and watched in ready:
            check()
        if fd is not None and fd in ready:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


class StopEvent:
    """What a long-running command waits on between rounds: set by SIGTERM or SIGINT, as a
    threading.Event would be, but with no lock taken in the signal handler."""

    def is_set(self) -> bool:
        return received() is not None

    def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():
            return True
        try:
            wait_readable(None, timeout)
        except Cancelled:
            return True
        return self.is_set()


def until_signalled() -> StopEvent:
    """For a command that runs until stopped: the event a signal sets, which is then its normal
    end (it exits 0, not 128+N; see interrupted())."""
    global _until_signalled
    if threading.current_thread() is threading.main_thread() and _reader is None:
        install()
    _until_signalled = True
    return StopEvent()


def interrupted() -> int | None:
    """The signal that cut the command short, if one did: not one a command waited for."""
    return None if _until_signalled else received()
