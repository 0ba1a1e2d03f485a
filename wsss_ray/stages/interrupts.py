"""SIGINT and SIGTERM end a job with a non-zero exit code, wherever they land.

Ray Train installs its own SIGINT handler in ``fit()`` and keeps it after ``fit()`` returns:
it turns the first Ctrl-C into a graceful abort (``fit()`` then returns as if training had
ended) and the third into ``sys.exit(0)``. A scheduler or ``ray job submit`` would see a
finished job. So the job installs one handler for both signals, and ``fit()`` runs on a
helper thread, where Ray Train installs none (Python lets only the main thread do so).
"""
from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)      # Ctrl-C; `ray job stop`, kill, a scheduler


class JobInterrupted(KeyboardInterrupt):
    """Raised in the main thread by the job's signal handler; ``stage`` is filled in on the
    way out by the stage that was running."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.stage = ""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum               # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def describe(self) -> str:
        where = f" during {self.stage}" if self.stage else ""
        return (f"interrupted by {signal.Signals(self.signum).name}{where}; rerun the same command to resume "
                f"(finished stages and complete shards are kept)")


def _raise_interrupted(signum, _frame):
    raise JobInterrupted(signum)


def take_the_signals() -> None:
    """(Re)install the job's handler. ``ray.init`` replaces SIGTERM's with its core worker's,
    which dumps a stack and aborts: the job calls this again at the start of every stage."""
    if threading.current_thread() is threading.main_thread():      # signals reach the main thread only
        for s in SIGNALS:
            signal.signal(s, _raise_interrupted)


@contextlib.contextmanager
def interrupts_end_the_job():
    """Within the block, SIGINT and SIGTERM raise ``JobInterrupted`` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    take_the_signals()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def off_the_main_thread(fn, name: str = "wsss_ray-call"):
    """``fn()`` on a daemon thread while the main thread waits in short, interruptible joins:
    a library that installs signal handlers from the main thread (Ray Train's ``fit``) then
    leaves the job's handler in place. Returns ``fn``'s value or raises its exception."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as e:              # handed to the caller, whatever it is
            outcome["error"] = e

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
