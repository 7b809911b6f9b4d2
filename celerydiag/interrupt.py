"""Ctrl-C, SIGTERM and deadlines: what stops celerydiag even inside a blocking driver call.

sqlite3 turns a Ctrl-C during a query into ``OperationalError: interrupted``, and retry loops in
drivers and Celery catch what they see; the probe guard would then record a failed probe and
doctor would carry on and exit 0. So the signal handler also sets a flag, and the guard
re-raises KeyboardInterrupt whenever the flag is set, whatever exception reached it. Which
signal it was decides the exit code (SIGINT 130, SIGTERM 143, as a shell reports them).

A deadline (:func:`deadline`) is the same idea on a timer: a driver call with no timeout of its
own (py-amqp waiting for a Close-Ok from a broker that stopped reading our socket, a redis-py
read behind a stalled server) is cut by SIGALRM, which raises :class:`Overrun` in the main
thread where the call blocks. It is a BaseException, like KeyboardInterrupt, so the drivers'
``except Exception`` retry loops let it through.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

requested = threading.Event()
received: list[int] = []  # the signals that asked us to stop, first one first

EXIT_SIGINT = 130  # 128 + SIGINT
EXIT_SIGTERM = 143  # 128 + SIGTERM


GRACE_S = 1.2  # after Ctrl-C/SIGTERM, cleanup has this long before each stuck step is cut
CUT_REPEAT_S = 0.1  # then every step still blocking gets this long: the command ends within ~2 s


def _on_signal(signum: int, frame: Any) -> None:
    received.append(signum)
    requested.set()
    if not any(d.interrupt for d in _active) and threading.current_thread() is threading.main_thread():
        # Cleanup runs next (finally blocks, the probe's stack): bound it, wherever it blocks.
        _active.append(_Deadline(time.monotonic() + GRACE_S, CUT_REPEAT_S, interrupt=True))
        _arm()
    raise KeyboardInterrupt


def absorb() -> bool:
    """For code where Ctrl-C means "stop this and go on" (a live capture: stop, then analyse):
    forget the Ctrl-C (flag and cleanup bound) and return True, so the run continues as normal.
    SIGTERM is never absorbed (it returns False, and the caller re-raises): it ends the command."""
    if exit_code() == EXIT_SIGTERM:
        return False
    requested.clear()
    received.clear()
    _active[:] = [d for d in _active if not d.interrupt]
    _arm()
    return True


def stop_by() -> float:
    """time.monotonic() by which cleanup after Ctrl-C/SIGTERM must be done (inf if none came)."""
    return min((d.at for d in _active if d.interrupt and not d.fired), default=math.inf)


def check() -> None:
    """Raise KeyboardInterrupt if the user asked to stop (call between units of work)."""
    if requested.is_set():
        raise KeyboardInterrupt


def exit_code() -> int:
    """143 when SIGTERM stopped us, else 130 (Ctrl-C, or a KeyboardInterrupt of unknown origin)."""
    return EXIT_SIGTERM if received and received[0] == signal.SIGTERM else EXIT_SIGINT


def exit_now(code: int) -> None:
    """End the process with ``code`` at once, after flushing stdout and stderr: once a signal's
    cleanup is done, Python's own finalization (collecting Celery's, SQLAlchemy's, rich's
    objects: 1-2 s on a busy host) would break the 2 s promise and has nothing left to do for us.
    A daemon thread still stuck in a driver call is dropped with the process. For the console
    script only (cli.main with argv None), never in-process callers such as tests."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing more to say on it
            pass
    os._exit(code)


def signal_name() -> str:
    return "SIGTERM" if exit_code() == EXIT_SIGTERM else "Ctrl-C"


@contextmanager
def handled() -> Iterator[None]:
    """Install the handlers for SIGINT and SIGTERM (main thread only), restore them after."""
    requested.clear()
    received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import sys

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_unraisable(previous_hook)
    try:
        with _alarm_ours():
            yield
    finally:
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _quiet_unraisable(previous: Any) -> Any:
    """A signal can land while Python runs a callback it cannot raise from (a weakref or GC
    finalizer of SQLAlchemy's): the KeyboardInterrupt or Overrun our handler raised there is
    printed as "Exception ignored in ... Traceback" and dropped. Nothing is lost (the flag is set and
    the guard re-raises it; a deadline fires again), so say nothing: no traceback, ever."""
    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, (KeyboardInterrupt, Overrun)):
            return
        previous(unraisable)
    return hook


@contextmanager
def _alarm_ours() -> Iterator[None]:
    """SIGALRM is ours for the block (unless it already is): the previous handler and its timer
    (pytest-timeout's, in a test) are put back after, with the time that passed taken off."""
    previous = signal.getsignal(signal.SIGALRM)
    if previous is _on_alarm:
        yield
        return
    timer, interval = signal.setitimer(signal.ITIMER_REAL, 0)
    since = time.monotonic()
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        yield
    finally:
        # First: no cut may land in the caller's code (its "interrupted" message) once we are out.
        _active[:] = [d for d in _active if not d.interrupt]
        _arm()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        if timer > 0:
            signal.setitimer(signal.ITIMER_REAL, max(timer - (time.monotonic() - since), 0.001), interval)


# ---- deadlines ---------------------------------------------------------------------------------

class Overrun(BaseException):
    """A deadline set with :func:`deadline` passed while the code under it was still running."""

    def __init__(self, at: float) -> None:
        super().__init__(f"deadline passed ({time.monotonic() - at:.2f} s ago)")
        self.at = at


@dataclass
class _Deadline:
    at: float  # time.monotonic()
    repeat_s: float | None  # after firing, fire again this often (a cleanup stack: cut each stuck step)
    fired: bool = False
    interrupt: bool = False  # the bound on cleanup after a signal: raises KeyboardInterrupt


_active: list[_Deadline] = []


def _arm() -> None:
    pending = [d.at for d in _active if not d.fired or d.repeat_s]
    if not pending:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return
    # setitimer(0) would disarm: a deadline already past fires as soon as possible instead
    signal.setitimer(signal.ITIMER_REAL, max(min(pending) - time.monotonic(), 0.001))


def _on_alarm(signum: int, frame: Any) -> None:
    now = time.monotonic()
    due = [d for d in _active if d.at <= now and (not d.fired or d.repeat_s)]
    for d in due:
        d.fired = True
        if d.repeat_s:
            d.at = now + d.repeat_s
    _arm()
    if any(d.interrupt for d in due):
        raise KeyboardInterrupt  # the run is stopping anyway: the caller's "interrupted" path
    if due:
        raise Overrun(min(d.at for d in due))


@contextmanager
def deadline(at: float, repeat_s: float | None = None) -> Iterator[_Deadline]:
    """Raise :class:`Overrun` in the block at ``time.monotonic()`` ``at`` (and every ``repeat_s``
    after, if given), wherever it blocks. Main thread only (signals are delivered there); in any
    other thread the block runs unbounded and the caller's own timeouts must do. Nests: an outer
    deadline keeps running. Yields the deadline, whose ``fired`` says whether it was hit."""
    entry = _Deadline(at, repeat_s)
    if threading.current_thread() is not threading.main_thread():
        yield entry
        return
    with _alarm_ours():  # outside handled() (a test calling run_probe): ours for the block
        _active.append(entry)
        _arm()
        try:
            yield entry
        finally:
            _active.remove(entry)
            _arm()
