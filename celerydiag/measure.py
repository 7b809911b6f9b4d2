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
              step: Callable[[], None] = lambda: None, enough: StopRule | None = None) -> list[float]:
    """Latency in ms of each ``op(seq)`` from its intended send time on :func:`schedule`
    (coordinated omission avoided), up to ``count`` of them or until ``enough`` says the
    percentiles are pinned down (see :class:`StopRule`). What ``op`` raises propagates: the caller
    names it."""
    out: list[float] = []
    for seq, intended in enumerate(schedule(count, interval_s, deadline_s)):
        op(seq)
        out.append(ms(time.perf_counter() - intended))
        step()
        if enough is not None and enough.met(out):
            break
    return out


# ---- when a sampler has enough ---------------------------------------------------------------

CONFIDENCE = 0.95


def _binomial_cdf(n: int, p: float) -> list[float]:
    """``cdf[k] = P(B <= k)`` for B ~ Binomial(n, p), summed in log space (n of a few thousand)."""
    if p <= 0.0 or p >= 1.0:
        return [1.0] * (n + 1) if p <= 0.0 else [0.0] * n + [1.0]
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    out: list[float] = []
    for k in range(n + 1):
        log_pmf = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q
        total += math.exp(log_pmf)
        out.append(min(total, 1.0))
    return out


def quantile_ranks(n: int, q: float, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks ``(lo, hi)`` such that the sorted sample's ``x[lo-1] <= true q-quantile <=
    x[hi-1]`` with probability at least ``confidence``, whatever the distribution (the
    order-statistic interval: the number of samples below the true quantile is Binomial(n, q)).
    None when ``n`` samples cannot bound it on both sides at that confidence: the P99 of fewer than
    367 samples at 95 % (0.99^n must drop below 2.5 % for the maximum to be an upper bound)."""
    if n < 1 or not 0.0 < q < 1.0:
        return None
    alpha = (1.0 - confidence) / 2.0
    cdf = _binomial_cdf(n, q)  # cdf[k] = P(fewer than k+1 samples below the quantile)
    # lo: the largest rank with P(B < lo) = cdf[lo-1] <= alpha
    lo = 0
    while lo < n and (cdf[lo] if lo < len(cdf) else 1.0) <= alpha:
        lo += 1
    # hi: the smallest rank with P(B >= hi) = 1 - cdf[hi-1] <= alpha
    hi = next((k + 1 for k in range(n) if 1.0 - cdf[k] <= alpha), None)
    if lo < 1 or hi is None:
        return None
    return lo, hi


def quantile_interval(values: Sequence[float], q: float, confidence: float = CONFIDENCE
                      ) -> tuple[float, float] | None:
    """The distribution-free confidence interval of the ``q`` quantile (0..1) of ``values``
    (:func:`quantile_ranks`), or None when there are too few values for one."""
    ranks = quantile_ranks(len(values), q, confidence)
    if ranks is None:
        return None
    ordered = sorted(values)
    return float(ordered[ranks[0] - 1]), float(ordered[ranks[1] - 1])


@dataclass(frozen=True)
class StopRule:
    """When a latency sampler may stop before its ``--samples``: once the 95 % distribution-free
    confidence interval (:func:`quantile_interval`) of each of P50 and P99 is narrower than
    ``rel_tol`` of that percentile or ``abs_ms``, whichever is larger.

    Why these: the report uses P99 (impact) and P50 (detail); an order-statistic interval needs
    no assumption about the shape of a latency distribution (they are skewed and multi-modal,
    where a normal-theory or a bootstrap interval of a tail percentile is too optimistic at a few
    hundred samples). ``abs_ms`` is what is too small to matter against the budget: severity is
    decided at 20 % and 100 % of ``--budget-ms`` and callers pass 1 % of it, so a P99 pinned to
    within 10 ms of a 1000 ms budget cannot change a finding's severity, except right at a
    threshold. The P99 interval exists only from 367 samples (see :func:`quantile_ranks`), so a
    sampler never stops below that, and checks every ``every`` samples (sorting costs
    O(n log n)). A slow or noisy path keeps sampling up to its ``--samples``.
    """

    abs_ms: float = 10.0
    rel_tol: float = 0.25
    every: int = 25
    quantiles: tuple[float, ...] = (0.5, 0.99)

    @classmethod
    def for_budget(cls, budget_ms: float) -> StopRule:
        return cls(abs_ms=max(0.0, 0.01 * budget_ms))

    @property
    def min_samples(self) -> int:
        """The fewest samples for which every tracked percentile has an interval at all."""
        return max(_min_n(q) for q in self.quantiles)

    def met(self, values: Sequence[float]) -> bool:
        n = len(values)
        if n < self.min_samples or (n - self.min_samples) % self.every:
            return False
        return all(self.tight(values, q) for q in self.quantiles)

    def tight(self, values: Sequence[float], q: float) -> bool:
        interval = quantile_interval(values, q)
        if interval is None:
            return False
        lo, hi = interval
        return hi - lo <= max(self.abs_ms, self.rel_tol * abs(percentile(values, 100 * q)))


def _min_n(q: float, confidence: float = CONFIDENCE) -> int:
    """The fewest samples with a two-sided interval for quantile ``q`` (the extreme order
    statistics must already cover it: q^n and (1-q)^n both at most (1-confidence)/2)."""
    alpha = (1.0 - confidence) / 2.0
    return max(1, math.ceil(math.log(alpha) / math.log(max(q, 1.0 - q))))


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
