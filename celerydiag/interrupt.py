"""Ctrl-C (and SIGTERM) must stop celerydiag even when a library swallows the KeyboardInterrupt.

sqlite3 turns a Ctrl-C during a query into ``OperationalError: interrupted``, and retry loops in
drivers and Celery catch what they see; the probe guard would then record a failed probe and
doctor would carry on and exit 0. So the signal handler also sets a flag, and the guard
re-raises KeyboardInterrupt whenever the flag is set, whatever exception reached it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

requested = threading.Event()


def _on_signal(signum: int, frame: Any) -> None:
    requested.set()
    raise KeyboardInterrupt


def check() -> None:
    """Raise KeyboardInterrupt if the user asked to stop (call between units of work)."""
    if requested.is_set():
        raise KeyboardInterrupt


@contextmanager
def handled() -> Iterator[None]:
    """Install the handlers for SIGINT and SIGTERM (main thread only), restore them after."""
    requested.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
