"""Samples and percentiles: the statistics every probe shares.

Percentiles are the linear-interpolated kind (numpy's default, ``statistics.quantiles`` with
``method='inclusive'``) so our numbers match what a user recomputes. A summary says when it is
too thin to trust: the P99 of fewer than 100 samples is just the maximum.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

MIN_CALL_TIMEOUT_S = 0.05  # never hand a driver 0: to several of them it means "no timeout"
CLEANUP_GRACE_S = 2.0  # a probe's cleanup after its run (or its cut), on top of --max-seconds


@dataclass
class Budget:
    """The time a run may take, and the timeout each driver call gets from it.

    Each call's timeout must shrink as the deadline comes closer, or ``--max-seconds`` is no bound
    (a 5 s ``--timeout`` call started 0.1 s before the deadline ends 4.9 s after it). The probe
    guard's ``ProbeContext`` answers ``left``/``expired``/``call_timeout`` through one of these;
    code that runs outside a probe (``bench-serialize --from-backend``) makes its own with
    :meth:`within`.
    """

    deadline: float  # time.monotonic() by which the run must be over (cleanup aside)
    timeout_s: float = 5.0  # --timeout: the most any one call may take
    grace_s: float = CLEANUP_GRACE_S  # cleanup after the deadline

    @classmethod
    def within(cls, seconds: float, timeout_s: float = 5.0, grace_s: float = CLEANUP_GRACE_S) -> Budget:
        return cls(time.monotonic() + seconds, timeout_s, grace_s)

    @classmethod
    def of(cls, ctx: Any) -> Budget:
        """A probe's budget: the guard's ``ctx.deadline`` when it sets one, else ``--max-seconds``
        from now (a probe run outside the guard, in a test)."""
        limits = ctx.limits
        deadline = ctx.deadline if math.isfinite(ctx.deadline) else time.monotonic() + limits.max_seconds
        return cls(deadline, limits.timeout_s, limits.cleanup_grace_s)

    def left(self) -> float:
        """Seconds until the deadline, never negative."""
        return max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def call_timeout(self, timeout_s: float | None = None) -> float:
        """``timeout_s`` (default ``--timeout``) cut to what is left, at least MIN_CALL_TIMEOUT_S."""
        wanted = self.timeout_s if timeout_s is None else timeout_s
        return max(MIN_CALL_TIMEOUT_S, min(wanted, self.left()))

    def fits(self, seconds: float, margin_s: float = 0.0) -> bool:
        """Whether something expected to take ``seconds`` ends before the deadline (less ``margin_s``)."""
        return time.monotonic() + seconds + margin_s <= self.deadline


MIN_SAMPLES_FOR_P99 = 100


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


@dataclass(frozen=True)
class Summary:
    """Percentiles of a set of latencies, in milliseconds."""

    samples: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def reliable(self) -> bool:
        return self.samples >= MIN_SAMPLES_FOR_P99

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "mean_ms": round(self.mean_ms, 3),
        }

    def short(self) -> dict[str, float]:
        """``{p50, p95, p99, max}`` as the broker probe's evidence wants them."""
        return {"p50": round(self.p50_ms, 3), "p95": round(self.p95_ms, 3),
                "p99": round(self.p99_ms, 3), "max": round(self.max_ms, 3)}


SERIES_POINTS = 2000  # what a finding keeps of a raw series (evidence["series"]) for the HTML charts


def downsampled(values: Sequence[float], limit: int = SERIES_POINTS, digits: int = 3) -> list[float]:
    """At most ``limit`` of ``values``, sorted and evenly spaced over the ranks, so every quantile a
    CDF shows survives (the min and max are kept); rounded, so a report stays small."""
    ordered = sorted(values)
    if len(ordered) > limit:
        step = (len(ordered) - 1) / (limit - 1)
        ordered = [ordered[round(i * step)] for i in range(limit)]
    return [round(v, digits) for v in ordered]


def summarize(values_ms: Sequence[float]) -> Summary:
    if not values_ms:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan)
    return Summary(
        samples=len(values_ms),
        p50_ms=percentile(values_ms, 50),
        p95_ms=percentile(values_ms, 95),
        p99_ms=percentile(values_ms, 99),
        max_ms=float(max(values_ms)),
        mean_ms=float(sum(values_ms) / len(values_ms)),
    )


def schedule(count: int, interval_s: float, deadline_s: float,
             clock: Any = time.perf_counter, sleep: Any = time.sleep) -> Iterator[float]:
    """Yield up to ``count`` intended send times spaced ``interval_s`` apart, stopping at
    ``deadline_s`` seconds. Callers time each operation from the *intended* time, so a stall
    delays every later sample instead of hiding (coordinated omission, PerfTest #289)."""
    start = clock()
    for i in range(count):
        intended = start + i * interval_s
        if intended - start > deadline_s:
            return
        delay = intended - clock()
        if delay > 0:
            sleep(delay)
        if clock() - start > deadline_s:
            return
        yield intended


def scheduled(op: Callable[[int], Any], count: int, interval_s: float, deadline_s: float,
              step: Callable[[], None] = lambda: None) -> list[float]:
    """Latency in ms of each ``op(seq)`` from its intended send time on :func:`schedule`
    (coordinated omission avoided). What ``op`` raises propagates: the caller names it."""
    out: list[float] = []
    for seq, intended in enumerate(schedule(count, interval_s, deadline_s)):
        op(seq)
        out.append(ms(time.perf_counter() - intended))
        step()
    return out


def back_to_back(op: Callable[[], Any], count: int, within_s: float = math.inf) -> list[float]:
    """Durations in ms of up to ``count`` calls of ``op`` one after the other, stopping once
    ``within_s`` has passed (a 200 ms path would take 10 s for 50): round-trip baselines."""
    out: list[float] = []
    stop = time.perf_counter() + within_s
    for _ in range(count):
        started = time.perf_counter()
        op()
        out.append(ms(time.perf_counter() - started))
        if time.perf_counter() >= stop:
            break
    return out


def interval_for(op: Callable[[int], Any], floor_s: float = 0.002, warmups: int = 5) -> float:
    """Run ``op`` a few times unscheduled and return twice its median duration (at least
    ``floor_s``): the spacing for a fixed schedule that measures per-operation latency rather than
    a queue we built ourselves (a 2 ms schedule of 4 ms operations reports a P99 of a second).
    ``op`` gets negative sequence numbers for these warm-up calls."""
    took = []
    for i in range(warmups):
        started = time.perf_counter()
        op(-1 - i)
        took.append(time.perf_counter() - started)
    took.sort()
    return max(floor_s, 2 * took[len(took) // 2])


def ms(seconds: float) -> float:
    return seconds * 1000.0
