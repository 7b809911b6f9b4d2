"""A celerydiag subprocess a test signals, timed from the signal to its exit, never left running.

    with running([*cli_argv, "doctor"], env=clean_env()) as proc:
        ...                                  # wait until the phase of interest has begun
        out, err, took = signal_and_wait(proc, signal.SIGTERM)

``running`` kills the process if the block fails before it ended (a wait that timed out, an
assertion), so a failed test leaves no doctor behind to hold queues or tables.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


@contextmanager
def running(argv: Sequence[str], *, sigint_default: bool = False, **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """``argv`` started with text pipes. ``sigint_default``: undo the ignored SIGINT a runner
    started in the background hands its children (a user's shell does not)."""
    if sigint_default:
        popen["preexec_fn"] = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def signal_and_wait(proc: subprocess.Popen[str], sig: int, timeout_s: float = 60.0) -> tuple[str, str, float]:
    """Send ``sig``, wait for the exit: (stdout, stderr, seconds from the signal to the exit)."""
    sent = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout_s)
    return out, err, time.monotonic() - sent
