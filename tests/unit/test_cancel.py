"""Stopping on a signal (accel/cancel.py): the handler only records it, and work stops at safe
points. Each test runs a small program in a process of its own, so that the signals it sends
itself reach no one else."""

import subprocess
import sys
import textwrap
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]


def run_program(body: str, timeout: float = 30) -> subprocess.CompletedProcess:
    code = f"import sys; sys.path.insert(0, {str(TOP)!r})\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def test_a_signal_during_the_fork_hooks_leaves_no_lock_held():
    """What hung `accel compare` (1 run in 10; py-spy showed its threads waiting in fork): SIGTERM
    handled inside logging's at-fork hook in the parent. A handler that raises there is swallowed
    ("Exception ignored in _releaseLock"), logging's lock stays held, and every later fork in
    another thread blocks on it; the exit was swallowed too, so the run went on and hung. Here
    the signal arrives in every fork's hooks, just before logging's (from C, so that the first
    Python code to run after it is logging's hook); the handler only records it, every fork goes
    on, and the program stops where it checks. (With a handler that calls sys.exit, this hangs.)"""
    result = run_program("""
        import ctypes, functools, os, signal, subprocess
        from accel import cancel
        cancel.install()
        os.register_at_fork(after_in_parent=functools.partial(ctypes.CDLL(None).kill, os.getpid(), signal.SIGTERM))
        import logging  # registers its at-fork hooks now, after the one above
        from concurrent.futures import ThreadPoolExecutor

        def fork(n):  # preexec_fn: fork and run the at-fork hooks, as accel.process.spawn does
            return subprocess.run(["true"], preexec_fn=int).returncode

        fork(0)  # in the main thread, where the handler runs
        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(fork, range(40)))
        assert logging._lock.acquire(timeout=5), "logging's lock is held"
        print(len(done), cancel.received())
        cancel.check()
    """)
    assert result.returncode == 1 and result.stdout.split() == ["40", "15"], result.stderr
    assert "Cancelled: stopped by SIGTERM" in result.stderr and "Exception ignored" not in result.stderr


def test_a_run_is_cut_short_by_a_signal_and_a_run_begun_after_it_is_not():
    """A command running when SIGTERM arrives is killed and its wait ends (Cancelled); one begun
    afterwards (clean-up, say) runs to its end."""
    result = run_program("""
        import os, signal, threading, time
        from accel import cancel, process
        cancel.install()
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        try:
            process.run(["sleep", "30"])
        except cancel.Cancelled as stop:
            print("cut", round(time.monotonic() - started), stop.exit_code)
        print("after", process.run(["sh", "-c", "sleep 0.3; echo done"]).stdout.strip())
        cancel.sleep(0.2)  # begun after the signal: a clean-up's pause, not cut short
        print("slept")
    """)
    assert result.stdout.split() == ["cut", "0", "143", "after", "done", "slept"], result.stderr


def test_waits_in_any_thread_wake_at_once_on_the_signal():
    """sleep() and wait_readable() in a worker thread end as soon as the signal arrives, whichever
    thread it was delivered to; StopEvent reads as set."""
    result = run_program("""
        import os, signal, threading, time
        from concurrent.futures import ThreadPoolExecutor
        from accel import cancel
        stop = cancel.until_signalled()
        def worker(n):
            started = time.monotonic()
            try:
                cancel.sleep(30) if n else cancel.wait_readable(os.pipe()[0], 30)
            except cancel.Cancelled:
                return round(time.monotonic() - started)
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        with ThreadPoolExecutor(2) as pool:
            print(*pool.map(worker, range(2)), stop.is_set(), stop.wait(30))
    """)
    assert result.stdout.split() == ["0", "0", "True", "True"], result.stderr


def test_ctrl_c_is_recorded_as_sigint():
    result = run_program("""
        import os, signal
        from accel import cancel
        cancel.install()
        os.kill(os.getpid(), signal.SIGINT)
        try:
            cancel.check()
        except cancel.Cancelled as stop:
            print(stop.signal, stop.exit_code)
    """)
    assert result.stdout.split() == ["2", "130"], result.stderr


def test_a_signal_to_a_forked_child_is_not_the_parents():
    """A child forked without exec (pyroute2 makes such helpers, and ends them with SIGTERM)
    dies of its SIGTERM as by default, and the parent, whose handler and wakeup socket it
    inherited, records nothing."""
    result = run_program("""
        import os, signal, time
        from accel import cancel
        cancel.install()
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(0)
        time.sleep(0.2)
        os.kill(child, signal.SIGTERM)
        _, status = os.waitpid(child, 0)
        print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else "exited", cancel.received(), cancel.armed())
    """)
    assert result.stdout.split() == ["15", "None", "True"], result.stderr
