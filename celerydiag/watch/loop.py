"""The schedule: one Sample per --interval until stopped, faults survived, cleanup on the way out.

Intervals run on a fixed schedule from the start (a slow round skips the slots it overran rather
than firing late ones back to back). Each read is bounded by --timeout, each canary round by its
own bound; a failure is a Problem in the Sample (view and metrics show it), never the end of the
watch. Ctrl-C/SIGTERM raise KeyboardInterrupt out of whatever runs; the ``finally`` removes the
canary's queue, keys and scratch table, and the command exits 130/143 like every other.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from celerydiag import interrupt
from celerydiag.probe import log
from celerydiag.target import Target
from celerydiag.watch.canary import Canary
from celerydiag.watch.sample import Problem, Sample
from celerydiag.watch.signals import BackendReader, BrokerReader

Sink = Callable[[Sample], None]


@dataclass(frozen=True)
class WatchOptions:
    interval_s: float = 10.0
    timeout_s: float = 5.0
    updates: int = 5  # update_state() calls per client mode per round
    count: int = 0  # stop after this many intervals (0: until stopped)
    rabbitmq_api: str | None = None
    events: bool = False


class Watch:
    """The readers and the canary for one target; :meth:`sample` measures one interval."""

    def __init__(self, target: Target, options: WatchOptions) -> None:
        from celerydiag.broker.probe import app_queues

        self.target = target
        self.options = options
        self.canary = Canary(target, options.timeout_s, options.updates)
        self.broker = BrokerReader(target, options.timeout_s, app_queues(target.conf), self.canary.queue_prefix,
                                   options.rabbitmq_api)
        self.backend = BackendReader(target, options.timeout_s)
        self.events = None
        if options.events:
            from celerydiag.watch.events import EventListener

            self.events = EventListener(target, options.timeout_s)

    def _bounded(self, signal: str, read: Callable[[Sample], None], sample: Sample) -> None:
        """``read`` cut at 2 x --timeout wherever it blocks (a hung peer that accepted the TCP
        connection and never answers; driver timeouts come first)."""
        try:
            with interrupt.deadline(time.monotonic() + 2 * self.options.timeout_s + 0.5):
                read(sample)
        except interrupt.Overrun:
            sample.fail(signal, f"no answer within --timeout {self.options.timeout_s:g} s", "timeout")
            sample.up[signal] = False
            (self.broker if signal == "broker" else self.backend).close()
        except Exception as exc:  # a bug of ours in one reader must not end hours of watching
            log.debug("reading %s failed", signal, exc_info=True)
            sample.fail(signal, exc, "failed")

    def sample(self, round_no: int) -> Sample:
        started = time.perf_counter()
        sample = Sample(round=round_no, time=time.time())
        self._bounded("broker", self.broker.read, sample)
        self._bounded("backend", self.backend.read, sample)
        if self.events is not None:
            self.events.drain(sample)
        self._canary(sample)
        # every message may quote a URL or a driver's words: no password leaves this object
        sample.problems = [Problem(p.signal, p.reason, self.target.redact(p.message)) for p in sample.problems]
        sample.elapsed_s = round(time.perf_counter() - started, 3)
        return sample

    def _canary(self, sample: Sample) -> None:
        down = [side for side, ok in sample.up.items() if not ok]
        if sample.broker_blocked or down:
            # It could not send or report anything; trying would only wait out the bound.
            why = "the broker blocks publishers" if sample.broker_blocked else f"{' and '.join(down)} down"
            sample.canary = "skipped"
            sample.fail("canary", f"not run: {why}", "blocked" if sample.broker_blocked else "unreachable")
            return
        try:
            result = self.canary.measure(sample.round)
        except interrupt.Overrun:
            sample.canary = "failed"
            sample.fail("canary", f"the round did not finish within {self.canary.bound_s():g} s", "timeout")
        except Exception as exc:
            sample.canary = "failed"
            sample.fail("canary", exc, _reason(exc))
        else:
            sample.canary = "ok"
            sample.visibility_ms = {m: [round(v, 3) for v in vs] for m, vs in result.visibility_ms.items()}
            sample.missed = dict(result.missed)
            sample.dispatch_ms = [round(v, 3) for v in result.dispatch_ms]
            sample.backend_write_ms = [round(v, 3) for v in result.update_state_ms]
        # The embedded default has no broker or backend server to read: the canary is its "up".
        for side, reader_applies in (("broker", self.broker.applies),
                                     ("backend", self.backend.applies)):
            if not reader_applies:
                sample.up[side] = sample.canary == "ok"

    def close(self) -> None:
        """Remove what the canary created, then close our connections (each bounded)."""
        try:
            self.canary.close()
        finally:
            self.broker.close()
            self.backend.close()
            if self.events is not None:
                self.events.close()


def _reason(exc: Exception) -> str:
    from celerydiag.watch.canary import CanaryLost
    from celerydiag.watch.sample import reason_of

    return "timeout" if isinstance(exc, CanaryLost) else reason_of(exc)


def run(target: Target, options: WatchOptions, sinks: Iterable[Sink],
        say: Callable[[str], None] | None = None) -> int:
    """Measure every --interval until stopped (or --count intervals); returns intervals run.
    ``say`` gets one line naming what the canary creates (and removes on the way out)."""
    sinks = list(sinks)
    watch = Watch(target, options)
    if say is not None:
        say(f"canary queue {watch.canary.queue_prefix}-s1 (-s2... after a rebuild), task ids and "
            f"tables {watch.canary.scratch}-*; removed on exit")
    start = time.monotonic()
    done = 0
    try:
        for n in itertools.count(1):
            sample = watch.sample(n)
            done = n
            for sink in sinks:
                sink(sample)
            if options.count and n >= options.count:
                break
            interrupt.check()
            # the next slot on the fixed schedule that is still ahead
            elapsed = time.monotonic() - start
            slots = int(elapsed // options.interval_s) + 1
            time.sleep(max(0.0, start + slots * options.interval_s - time.monotonic()))
    finally:
        watch.close()
    return done
