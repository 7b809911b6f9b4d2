"""The polling model: closed forms against hand-worked cases, and the simulation against the closed
forms (property tests). No services."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from celerydiag.errors import InputError
from celerydiag.polling import model as polling

REPO = Path(__file__).resolve().parents[2]
CASES = yaml.safe_load((REPO / "fixtures/polling/closed_form.yml").read_text())["cases"]
OBSERVED = REPO / "fixtures/polling/observed_durations.txt"
# The simulation's 95 % intervals, widened x2.5 (about 5 standard errors): a property test draws
# many inputs and checks several numbers each, so plain 95 % would fail by chance.
WIDEN = 2.5


def widened(est: polling.Estimate) -> tuple[float, float]:
    half = (est.high - est.low) / 2 * WIDEN
    mid = (est.high + est.low) / 2
    return mid - half, mid + half


def inside(value: float, est: polling.Estimate, abs_slack: float = 1e-9) -> bool:
    lo, hi = widened(est)
    return lo - abs_slack <= value <= hi + abs_slack


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_closed_form_table(case: dict) -> None:
    t, lat = case["interval_s"], case.get("latency_s", 0.0)
    if "p_over" in case:
        assert polling.fixed_p_over(t, case["threshold_s"], lat) == pytest.approx(case["p_over"], abs=1e-9)
    if "mean_s" in case:
        assert polling.fixed_mean_delay_s(t, lat) == pytest.approx(case["mean_s"])
    for key, q in (("p50_s", 0.5), ("p95_s", 0.95), ("p99_s", 0.99)):
        if key in case:
            assert polling.fixed_delay_quantile_s(t, q, lat) == pytest.approx(case[key])
    if "p_miss" in case:
        assert polling.parse_durations(case["durations"]).p_miss(t) == pytest.approx(case["p_miss"], abs=1e-6)


def test_claim_threshold_is_135ms_and_mean_2_5s() -> None:
    claim = polling.explain_claim(5.0)
    assert claim["threshold_ms"] == pytest.approx(135.0)
    assert claim["mean_delay_ms"] == pytest.approx(2500.0)
    assert "135ms" in claim["text"] and "2.5s" in claim["text"]
    assert polling.fixed_p_over(5.0, polling.claim_threshold_s(5.0)) == pytest.approx(0.973)


def test_observed_durations_file() -> None:
    d = polling.parse_durations(str(OBSERVED))
    assert d.kind == "file" and len(d.values) == 8
    assert d.mean_s == pytest.approx(8.65 / 8)
    # by hand at T = 1 s: (0.8 + 0.75 + 0.7 + 0.6 + 0.5 + 0 + 0 + 0) / 8
    assert d.p_miss(1.0) == pytest.approx(3.35 / 8)
    assert polling.parse_durations(f"file:{OBSERVED}").values == d.values


def test_exp_p_miss_matches_numeric_integral() -> None:
    mean, t = 0.7, 2.0
    n = 200_000
    step = 20 * mean / n  # midpoint rule over the exponential density
    total = sum(max(0.0, 1 - ((i + 0.5) * step) / t) * math.exp(-(i + 0.5) * step / mean) / mean * step
                for i in range(n))
    assert polling.parse_durations("exp:0.7s").p_miss(t) == pytest.approx(total, abs=1e-6)


# ---- simulation vs closed form -----------------------------------------------------------------

durations_spec = st.one_of(
    st.floats(0.01, 20).map(lambda d: f"fixed:{d:.4f}s"),
    st.floats(0.05, 10).map(lambda d: f"exp:{d:.4f}s"),
)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(interval=st.floats(0.05, 30), spec=durations_spec, states=st.integers(1, 12),
       latency=st.floats(0, 0.5), threshold_ratio=st.floats(0, 1.2), queue=st.floats(0, 5))
def test_fixed_simulation_agrees_with_closed_form(interval: float, spec: str, states: int, latency: float,
                                                  threshold_ratio: float, queue: float) -> None:
    threshold = latency + threshold_ratio * interval
    scenario = polling.Scenario(polling.parse_durations(spec), states=states, latency_s=latency,
                                threshold_s=threshold, tasks=2000, queue_wait=polling.fixed_durations(queue))
    result = polling.simulate(polling.Strategy("fixed", interval), scenario)
    assert result.method == "closed-form"
    mc = result.simulated
    scale = interval  # absolute slack for quantiles at the edges of the distribution
    assert inside(polling.fixed_mean_delay_s(interval, latency), mc["delay_mean_s"], 1e-3 * scale)
    for key, q in polling.PERCENTILES:
        assert inside(polling.fixed_delay_quantile_s(interval, q / 100, latency), mc[f"delay_{key}_s"],
                      5e-3 * scale), key
    assert inside(polling.fixed_p_over(interval, threshold, latency), mc["p_delay_over_threshold"], 2e-3)
    assert inside(scenario.durations.p_miss(interval), mc["p_miss_transient"], 2e-3)
    runtime = queue + states * scenario.durations.mean_s
    assert inside(runtime / interval + 1, mc["requests_per_task"], 0.02 * (runtime / interval + 1))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(interval=st.floats(0.1, 10), spread=st.floats(0, 0.9), mean=st.floats(0.1, 10))
def test_jitter_mean_delay_is_the_forward_recurrence_time(interval: float, spread: float, mean: float) -> None:
    scenario = polling.Scenario(polling.Durations("exp", mean), states=8, tasks=3000)
    result = polling.simulate(polling.Strategy("jitter", interval, spread=spread), scenario)
    assert result.method == "monte-carlo"
    assert inside(polling.jitter_mean_delay_s(interval, spread), result.delay_s["mean"], 1e-3 * interval)
    # every delay lies within one (longest) interval
    assert max(x for x, _ in result.cdf) <= interval * (1 + spread) + 1e-9


def test_jitter_without_spread_is_fixed() -> None:
    scenario = polling.Scenario(polling.parse_durations("exp:1s"), states=6, threshold_s=0.3, tasks=4000)
    fixed = polling.simulate(polling.Strategy("fixed", 1.0), scenario)
    jitter = polling.simulate(polling.Strategy("jitter", 1.0, spread=0.0), scenario)
    assert inside(fixed.delay_s["p95"].value, jitter.delay_s["p95"], 0.005)
    assert inside(fixed.p_over.value, jitter.p_over, 0.002)
    assert inside(fixed.p_miss.value, jitter.p_miss, 0.002)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(start=st.floats(0.01, 2), factor=st.floats(1, 4), cap_ratio=st.floats(1, 20), spec=durations_spec,
       latency=st.floats(0, 0.2))
def test_backoff_and_smart_bounds(start: float, factor: float, cap_ratio: float, spec: str, latency: float) -> None:
    """No delay exceeds the longest interval a strategy can use; seeded runs repeat exactly."""
    cap = start * cap_ratio
    scenario = polling.Scenario(polling.parse_durations(spec), states=5, latency_s=latency, tasks=400)
    backoff = polling.simulate(polling.Strategy("backoff", start, factor=factor, cap_s=cap), scenario)
    assert max(x for x, _ in backoff.cdf) <= cap + latency + 1e-9
    assert min(x for x, _ in backoff.cdf) >= latency - 1e-12
    smart = polling.simulate(polling.parse_strategy(f"smart:{start}", 1.0), scenario)
    assert max(x for x, _ in smart.cdf) <= polling.SMART_MAX_S + latency + 1e-9
    assert 0 <= smart.p_miss.value <= 1 and smart.requests_per_task.value >= 1
    again = polling.simulate(polling.Strategy("backoff", start, factor=factor, cap_s=cap), scenario)
    assert again.delay_s["p99"] == backoff.delay_s["p99"]


def test_smart_poll_speeds_up_in_progress_and_slows_down_while_pending() -> None:
    rng = __import__("random").Random(1)
    smart = polling.parse_strategy("smart:1s", 5.0)
    assert polling._next_interval(smart, 1.0, True, rng) == pytest.approx(0.8)
    assert polling._next_interval(smart, 1.0, False, rng) == pytest.approx(1.5)
    assert polling._next_interval(smart, 0.21, True, rng) == pytest.approx(0.2)  # clamp low
    assert polling._next_interval(smart, 4.0, False, rng) == pytest.approx(5.0)  # clamp high
    # A long PENDING phase: smart backs off towards 5 s, so SUCCESS-after-queue is seen late.
    queued = polling.Scenario(polling.parse_durations("fixed:1s"), states=3, tasks=400,
                              queue_wait=polling.fixed_durations(60))
    busy = polling.Scenario(polling.parse_durations("fixed:1s"), states=30, tasks=400)
    assert polling.simulate(smart, queued).delay_s["mean"].value > polling.simulate(smart, busy).delay_s["mean"].value


def test_push_is_the_zero_poll_baseline() -> None:
    scenario = polling.Scenario(polling.parse_durations("fixed:0.01s"), states=5, latency_s=0.002,
                                threshold_s=0.001, tasks=200)
    push = polling.simulate(polling.Strategy("push"), scenario)
    assert push.delay_s["p99"].value == pytest.approx(0.002)
    assert push.p_miss.value == 0.0 and push.p_over.value == 1.0
    assert push.requests_per_task.value == polling.PUSH_REQUESTS


def test_task_count_is_bounded_for_tiny_intervals() -> None:
    scenario = polling.Scenario(polling.parse_durations("exp:60s"), states=100, tasks=200_000)
    strategy = polling.Strategy("jitter", 0.001)
    n = polling.task_count(strategy, scenario)
    assert polling.MIN_TASKS <= n < 200_000
    assert n * polling._expected_polls_per_task(strategy, scenario) <= polling.POLL_BUDGET * 1.01 or \
        n == polling.MIN_TASKS


# ---- recommendation ----------------------------------------------------------------------------


def _results(*specs: str, interval: float = 5.0) -> list[polling.StrategyResult]:
    scenario = polling.Scenario(polling.parse_durations("exp:2s"), tasks=400)
    return [polling.simulate(polling.parse_strategy(s, interval), scenario) for s in specs]


def test_recommend_longest_fixed_interval_for_the_target() -> None:
    rec = polling.recommend(_results("fixed", "push"), target_delay_s=0.99, request_budget_rps=None, clients=10)
    assert rec.interval_s == pytest.approx(1.0)
    assert rec.backend_requests_per_s == pytest.approx(10.0)
    assert rec.strategy == "fixed:1s"
    assert rec.meets == ("push",)  # fixed:5s has P99 4.95 s


def test_recommend_push_when_the_budget_cannot_pay_for_the_target() -> None:
    rec = polling.recommend(_results("fixed", "push"), target_delay_s=0.5, request_budget_rps=50, clients=100)
    assert rec.strategy == "push" and rec.interval_s is None
    assert "No fixed interval meets both" in rec.text and "on_message" in rec.text


def test_recommend_when_latency_alone_exceeds_the_target() -> None:
    rec = polling.recommend([], target_delay_s=0.05, request_budget_rps=None, clients=1, latency_s=0.1)
    assert rec.strategy is None and "read latency" in rec.text


# ---- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("5s", 5), ("135ms", 0.135), ("0.3", 0.3), ("2m", 120),
                                               ("1h", 3600), (" 250 ms ", 0.25), ("1e-1s", 0.1)])
def test_parse_seconds(text: str, seconds: float) -> None:
    assert polling.parse_seconds(text, "--x") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "-1s", "five", "5 parsecs", "1d", "nan", "inf"])
def test_parse_seconds_rejects(text: str) -> None:
    with pytest.raises(InputError, match="expected a duration like 5s"):
        polling.parse_seconds(text, "--x")


@pytest.mark.parametrize(("spec", "name"), [
    ("fixed", "fixed:5s"), ("fixed:2s", "fixed:2s"), ("jitter", "jitter:5s,20%"),
    ("jitter:1s,10%", "jitter:1s,10%"), ("jitter:1s,0.3", "jitter:1s,30%"),
    ("backoff", "backoff:500ms,2,5s"), ("backoff:0.1s,1.5,2s", "backoff:100ms,1.5,2s"),
    ("smart", "smart:5s"), ("smart:50ms", "smart:200ms"), ("smart:30s", "smart:5s"), ("push", "push"),
    ("FIXED:1S", "fixed:1s"),
])
def test_strategy_names_round_trip(spec: str, name: str) -> None:
    strategy = polling.parse_strategy(spec, 5.0)
    assert strategy.name == name
    assert polling.parse_strategy(strategy.name, 5.0) == strategy


@pytest.mark.parametrize(("spec", "message"), [
    ("wobble", "unknown strategy 'wobble'; expected fixed"),
    ("fixed:0s", "expected an interval between 1ms and 1h"),
    ("fixed:2h", "expected an interval between 1ms and 1h"),
    ("fixed:1s,2s", "too many values"),
    ("backoff:1s,0.5", "FACTOR between 1 and 100"),
    ("backoff:1s,x", "backoff FACTOR like 2"),
    ("backoff:2s,2,1s", "must be at least START"),
    ("jitter:1s,150%", "SPREAD from 0% to below 100%"),
    ("push:1s", "too many values"),
])
def test_strategy_rejects(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")) as err:
        polling.parse_strategy(spec, 5.0)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("spec", "message"), [
    ("exp:", "expected exp:MEAN"), ("exp:0s", "positive mean"), ("gauss:2s", "expected exp:MEAN"),
    ("fixed:abc", "expected a duration like"), ("/nonexistent/durations.txt", "expected exp:MEAN"),
    ("file:/nonexistent/durations.txt", "cannot read durations file"),
])
def test_durations_rejects(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        polling.parse_durations(spec)


@pytest.mark.parametrize(("content", "message"), [
    ("0.5\nabc\n", r":2: expected one duration in seconds per line"),
    ("0.5\n-1\n", r":2: expected a duration >= 0"),
    ("# only a comment\n\n", "no durations in the file"),
    ("1\ninf\n", r":2: expected a duration >= 0"),
])
def test_durations_file_rejects(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "d.txt"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        polling.parse_durations(str(path))


def test_the_task_budget_counts_recorded_states_not_only_polls() -> None:
    """--states 10000 --tasks 200000 (both allowed) once aimed at 2e9 recorded delays for fixed."""
    scenario = polling.Scenario(polling.parse_durations("exp:2s"), states=10_000, tasks=200_000)
    for spec in ("fixed", "push"):
        tasks = polling.task_count(polling.parse_strategy(spec, 5.0), scenario)
        assert tasks * (scenario.states + 1) <= max(polling.POLL_BUDGET, polling.MIN_TASKS * (scenario.states + 1))


@pytest.mark.parametrize("kind", list(polling.StrategyKind))
def test_every_strategy_kind_parses_names_and_simulates(kind):
    """Iterates the enum: a new kind without its branch in parse/name/params/simulate fails here
    (and in mypy, through assert_never)."""
    strategy = polling.parse_strategy(kind.value, 1.0)
    assert strategy.kind is kind
    assert polling.parse_strategy(strategy.name, 1.0) == strategy  # the name is itself a valid spec
    assert isinstance(strategy.params(), dict)
    scenario = polling.Scenario(durations=polling.fixed_durations(0.5), states=3, tasks=100)
    result = polling.simulate(strategy, scenario)
    assert result.to_dict(10)["kind"] == kind.value
    assert kind.value in polling.KINDS
