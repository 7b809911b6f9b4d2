"""Percentiles a user can recompute, and the fixed send schedule that avoids coordinated omission."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from celerydiag.measure import MIN_SAMPLES_FOR_P99, ms, percentile, schedule, summarize

values_st = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=300)


@given(values_st, st.floats(min_value=0, max_value=100))
def test_percentile_matches_numpy_linear(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-9)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=2, max_size=300))
def test_percentile_matches_statistics_inclusive(values):
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    for q in (50, 95, 99):
        assert percentile(values, q) == pytest.approx(cuts[q - 1], rel=1e-9, abs=1e-9)


def test_percentile_small_cases():
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2, 3, 4], 0) == 1.0
    assert percentile([1, 2, 3, 4], 100) == 4.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3, 2], 50) == 2.5  # input order does not matter
    assert percentile(list(range(101)), 99) == 99.0


def test_summarize_reports_every_percentile_in_ms():
    values = [float(v) for v in range(1, 201)]  # 1..200 ms
    s = summarize(values)
    assert (s.samples, s.max_ms, s.mean_ms) == (200, 200.0, 100.5)
    assert s.p50_ms == pytest.approx(100.5)
    assert s.p95_ms == pytest.approx(190.05)
    assert s.p99_ms == pytest.approx(198.01)
    assert s.reliable
    assert s.to_dict() == {"samples": 200, "p50_ms": 100.5, "p95_ms": 190.05, "p99_ms": 198.01,
                           "max_ms": 200.0, "mean_ms": 100.5}
    assert s.short() == {"p50": 100.5, "p95": 190.05, "p99": 198.01, "max": 200.0}


def test_summary_says_when_p99_is_only_the_maximum():
    assert not summarize([1.0] * (MIN_SAMPLES_FOR_P99 - 1)).reliable
    assert summarize([1.0] * MIN_SAMPLES_FOR_P99).reliable


def test_summarize_of_nothing_is_nan_and_empty():
    s = summarize([])
    assert s.samples == 0 and not s.reliable
    assert all(math.isnan(v) for v in (s.p50_ms, s.p99_ms, s.max_ms, s.mean_ms))


def test_ms():
    assert ms(1.5) == 1500.0


class FakeClock:
    """A clock that only moves when someone sleeps or works, so schedule() is tested exactly."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_schedule_spaces_intended_times_evenly():
    clock = FakeClock()
    times = list(schedule(5, 0.1, 10, clock=clock, sleep=clock.sleep))
    assert times == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4])
    assert clock.now == pytest.approx(100.4)


def test_schedule_keeps_intended_times_when_an_operation_stalls():
    """A stall must not shift later sends (coordinated omission): the caller times each
    operation from its intended time, so the stall shows up in every sample it delayed."""
    clock = FakeClock()
    latencies = []
    for i, intended in enumerate(schedule(6, 0.1, 10, clock=clock, sleep=clock.sleep)):
        clock.now += 0.5 if i == 1 else 0.01  # operation 1 stalls for 500 ms
        latencies.append(clock.now - intended)
    # no sleep after the stall: sends 2..4 go out late, back to back, and their latency shows it
    assert latencies[0] == pytest.approx(0.01)
    assert latencies[1] == pytest.approx(0.5)
    assert latencies[2] == pytest.approx(0.41)
    assert latencies[3] == pytest.approx(0.32)
    assert latencies[-1] < latencies[2]


def test_schedule_stops_at_count_and_at_deadline():
    clock = FakeClock()
    assert len(list(schedule(3, 0.1, 10, clock=clock, sleep=clock.sleep))) == 3
    clock = FakeClock()
    assert len(list(schedule(1000, 0.1, 0.45, clock=clock, sleep=clock.sleep))) == 5  # 0.0 .. 0.4
    clock = FakeClock()
    sent = 0
    for _ in schedule(1000, 0.01, 1.0, clock=clock, sleep=clock.sleep):
        sent += 1
        clock.now += 0.3  # each operation overruns; the deadline still ends the run
    assert sent == 4
    assert list(schedule(0, 0.1, 10)) == []


# ---- the stopping rule: distribution-free quantile intervals ----------------------------------

def test_quantile_ranks_match_the_textbook_table():
    """The classic order-statistic interval for the median of 100 samples is x(40)..x(61) at 95 %;
    the P99 needs 368 samples before the maximum bounds it (0.99^368 < 2.5 %)."""
    from celerydiag.measure import StopRule, quantile_ranks

    assert quantile_ranks(100, 0.5) == (40, 61)
    assert quantile_ranks(367, 0.99) is None
    assert quantile_ranks(368, 0.99) == (360, 368)
    assert quantile_ranks(500, 0.99) == (490, 500)
    assert StopRule().min_samples == 368


def test_quantile_interval_covers_the_true_quantile_at_least_as_often_as_it_claims():
    """Exponential samples, whose true P99 is ln(100): the 95 % interval must hold it in >= 95 % of
    draws (up to the simulation's own error)."""
    import random

    from celerydiag.measure import quantile_interval

    rng = random.Random(13)
    truth = {0.5: math.log(2), 0.99: math.log(100)}
    for q, true_value in truth.items():
        hits = 0
        for _ in range(400):
            lo, hi = quantile_interval([rng.expovariate(1.0) for _ in range(400)], q)
            hits += lo <= true_value <= hi
        assert hits / 400 >= 0.93, (q, hits)


def test_stop_rule_stops_a_steady_sampler_and_keeps_a_noisy_one_going():
    import random

    from celerydiag.measure import StopRule

    rng = random.Random(5)
    rule = StopRule(abs_ms=1.0, rel_tol=0.25)
    steady = [1.0 + 0.05 * rng.random() for _ in range(rule.min_samples)]
    assert rule.met(steady)
    assert not rule.met(steady[:-1])  # below the samples a P99 interval needs: never
    # a heavy tail (Pareto, alpha 1.2): the P99's interval stays wide, so the sampler goes on
    noisy = [rng.paretovariate(1.2) for _ in range(rule.min_samples)]
    assert not rule.met(noisy)
    # between checkpoints it does not even look (sorting 500 values per sample is not free)
    assert not rule.met(steady + [1.0])


def test_scheduled_stops_where_the_rule_says():
    from celerydiag.measure import StopRule, scheduled

    calls = []
    out = scheduled(calls.append, 1000, 0.0, 60.0, enough=StopRule(abs_ms=1000.0))
    assert len(out) == len(calls) == StopRule().min_samples
    assert len(scheduled(lambda seq: None, 50, 0.0, 60.0, enough=StopRule(abs_ms=1000.0))) == 50


def test_stop_rule_for_budget_is_one_percent_of_it():
    from celerydiag.measure import StopRule

    assert StopRule.for_budget(1000).abs_ms == 10.0
    assert StopRule.for_budget(200).abs_ms == 2.0
