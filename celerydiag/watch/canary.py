"""The canary: the e2e probe's worker and client kept running between rounds.

The method is the e2e probe's own (:meth:`celerydiag.e2e.probe.E2ERun.one_round`): a real Celery
worker (in-process, pool solo) consumes a queue of ours; a few pings time dispatch, and one
progress task per client mode calls update_state() while a client polls (and, where the backend
pushes, listens with on_message). Only the scale differs: a few updates per round instead of 250.

A round that fails (broker gone, backend unreachable, a hung peer cut by ``--timeout``) tears the
session down, and the next round builds it again: recovery is a rebuild, never a retry loop
inside a driver. What a session creates (queue, result keys, scratch table) goes with it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from celerydiag import interrupt
from celerydiag.e2e.probe import E2ERun, Round
from celerydiag.probe import Limits, ProbeContext
from celerydiag.target import Target

DISPATCH_WINDOW_S = 1.0  # pings sent in its first quarter (~12, 20 ms apart), then awaited
START_MARGIN_S = 1.0  # on top of --timeout to start the worker thread


class CanaryLost(Exception):
    """The canary worker took no task within the round's bound: rebuild it next round."""


class Canary:
    """One long-lived E2ERun session; :meth:`measure` runs a round, :meth:`close` removes it all."""

    def __init__(self, target: Target, timeout_s: float, updates: int) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.updates = updates
        # One scratch prefix for the whole watch, and a new name under it per session: a worker
        # thread left stuck in a hung peer's socket by the previous session, should it ever wake,
        # finds its queue gone instead of taking the new session's tasks.
        self.scratch = f"celerydiag-w{uuid.uuid4().hex[:8]}"
        self._stack: contextlib.ExitStack | None = None
        self._run: E2ERun | None = None
        self._client: Any = None
        self.sessions = 0

    @property
    def queue_prefix(self) -> str:
        """Every canary queue is this plus ``-s<session>`` (the e2e probe's naming)."""
        return f"celerydiag.probe.{self.scratch.split('-', 1)[-1]}"

    @property
    def modes(self) -> list[str]:
        return E2ERun(self._context()).modes

    def bound_s(self) -> float:
        """The most one round may take: start (once), dispatch + updates, the client's last wait."""
        return DISPATCH_WINDOW_S + 3 * self.timeout_s + START_MARGIN_S + 1.0

    def _context(self) -> ProbeContext:
        limits = Limits(timeout_s=self.timeout_s, updates=self.updates, max_seconds=self.bound_s())
        return ProbeContext(self.target, limits=limits, scratch=f"{self.scratch}-s{self.sessions + 1}")

    def _start(self) -> None:
        ctx = self._context()
        ctx.deadline = time.monotonic() + self.timeout_s + START_MARGIN_S
        run = E2ERun(ctx)
        stack = contextlib.ExitStack()
        stack.callback(ctx.cleanup.close)  # after the worker stopped (LIFO)
        try:
            self._client = stack.enter_context(run.started())
        except BaseException:
            stack.close()
            raise
        self._stack, self._run = stack, run
        self.sessions += 1

    def measure(self, round_no: int) -> Round:
        """One round, bounded by :meth:`bound_s` wherever it blocks (main thread: a SIGALRM cut)."""
        try:
            with interrupt.deadline(time.monotonic() + self.bound_s()):
                if self._run is None:
                    self._start()
                run = self._run
                assert run is not None
                run.ctx.deadline = time.monotonic() + self.bound_s()
                # the updates get --timeout to start and be written; the client one more to see them
                result = run.one_round(self._client, f"-r{round_no}", self.updates, DISPATCH_WINDOW_S,
                                       self.timeout_s)
        except BaseException:
            self.close()
            raise
        blind = [mode for mode, values in result.visibility_ms.items() if not values]
        if not result.dispatch_ms or blind:
            # A worker that lost its broker connection, or a client stuck on a dead one: a new
            # session next round, on fresh connections, is the recovery.
            self.close()
            what = (f"the {' and '.join(blind)} client saw none of the canary's states" if result.dispatch_ms
                    else "no canary task started")
            raise CanaryLost(f"{what} within --timeout {self.timeout_s:g} s; the canary restarts next interval")
        return result

    def close(self) -> None:
        """Stop the worker, delete the queue, forget the keys, drop the scratch table. Bounded:
        each call by --timeout, the whole by twice that (a dead broker cannot hold us)."""
        stack, self._stack, self._run, self._client = self._stack, None, None, None
        if stack is None:
            return
        try:
            with interrupt.deadline(time.monotonic() + 2 * self.timeout_s + 1):
                stack.close()
        except interrupt.Overrun:
            pass
        except Exception:  # what we could not remove expires by itself (x-expires, result_expires)
            pass
