"""The polling model: what a client's polling costs in delay, missed states and backend load.

Shared by ``celerydiag poll-model`` and the doctor's polling probe. Pure Python (no numpy: it is
not a runtime dependency), seeded, no I/O.

The model, stated once so every number can be checked by hand:

* A task's **timeline** starts when the client starts watching (submission). The task waits in
  the queue for ``queue_wait`` (PENDING), then goes through ``states`` transient states (PROGRESS
  updates), each lasting a duration drawn from ``durations``, then writes SUCCESS, which stays.
* A **state change** is each of those writes. Its **detection delay** is the time from the write
  to the first poll at or after it, plus the read latency ``latency_s`` (the poll's answer arrives
  that much later). It is the time until the client learns that *something* changed, whether it
  sees this state or a later one.
* A transient state is **missed** when no poll falls inside it.
* **requests per task** counts the client's reads from submission until it sees SUCCESS.

Closed forms (fixed interval T, poll phase uniform, which is what a page loaded at an arbitrary
moment gives): delay ~ U(0, T) + L, so mean = T/2 + L, Pq = qT + L, P(delay > t) = 1 - (t - L)/T
clipped to [0, 1]; a transient state lasting d is missed with probability max(0, 1 - d/T)
(celery-facts H.3). Other strategies have no closed form and are simulated (seeded Monte-Carlo);
confidence intervals come from batch means over independent tasks, and the simulation of
``fixed`` is checked against the closed form in the tests.

Strategies (each is also a ``--strategy`` spelling, see :func:`parse_strategy`):

* ``fixed:T``: a poll every T.
* ``jitter:T,S``: intervals uniform in [T(1-S), T(1+S)], in steady state.
* ``backoff:START,FACTOR,CAP``: first poll START after submission, each next interval multiplied
  by FACTOR up to CAP; never reset (the usual retry-style loop).
* ``smart:START``: the widely copied "smart poll": first poll START (clamped) after submission;
  after each poll the next interval is the current one x0.8 when the poll saw the task in
  progress (any state after PENDING and before SUCCESS), x1.5 when it saw PENDING; always
  clamped to 200-5000 ms.
* ``push``: Redis/RPC ``AsyncResult.get(on_message=cb)`` or a websocket fed by it: the client is
  told of every state, so nothing is missed and the delay is the latency; two requests per task
  (SUBSCRIBE, then the one GET Celery makes to catch a state written before it subscribed).
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from celerydiag.compat import assert_never
from celerydiag.errors import InputError

SCHEMA = "celerydiag.poll-model/1"
MIN_INTERVAL_S = 0.001
MAX_INTERVAL_S = 3600.0
SMART_IN_PROGRESS = 0.8
SMART_OTHERWISE = 1.5
SMART_MIN_S = 0.2
SMART_MAX_S = 5.0
PUSH_REQUESTS = 2  # SUBSCRIBE + the GET of on_wait_for_pending (celery-facts B)
CELERY_GET_INTERVAL_S = 0.5  # AsyncResult.get(interval=0.5) on sync backends (celery-facts B)
CLAIM_RATIO = 0.973  # the blog's "97.3 % probability" (celery-facts H.3)
CLAIM_INTERVAL_S = 5.0
BATCHES = 20
T_975_19 = 2.093  # Student t, 97.5 %, 19 degrees of freedom (BATCHES - 1)
POLL_BUDGET = 2_000_000  # simulated polls per strategy at most: bounds run time
MIN_TASKS = 400


class StrategyKind(str, Enum):
    """How a client polls: every dispatch on it is exhaustive (assert_never), so a new kind is a
    mypy error in each place that must learn it."""

    FIXED = "fixed"
    JITTER = "jitter"
    BACKOFF = "backoff"
    SMART = "smart"
    PUSH = "push"

    def __str__(self) -> str:
        return self.value


KINDS = tuple(k.value for k in StrategyKind)  # poll-model's default: every kind at --interval
PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))

# ---- durations ---------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>ms|s|m|h|min)?\s*$")
_UNIT_S = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
DURATION_HELP = "a duration like 5s, 500ms, 2m or 0.3 (seconds)"


def parse_seconds(text: str, what: str) -> float:
    """``"135ms"`` → 0.135. Bare numbers are seconds (like Celery's own settings)."""
    match = _DURATION.match(str(text))
    if not match:
        raise InputError(f"{what}: expected {DURATION_HELP}, got {text!r}")
    return float(match["num"]) * _UNIT_S[match["unit"]]


def fmt_s(seconds: float) -> str:
    """Short human duration that parse_seconds reads back: 0.135 → '135ms', 2.5 → '2.5s', 3600 → '1h'."""
    if seconds == 0:
        return "0s"
    if abs(seconds) < 1:
        return f"{seconds * 1000:.4g}ms"
    if abs(seconds) >= 3600:
        return f"{seconds / 3600:.4g}h"
    if abs(seconds) >= 120:
        return f"{seconds / 60:.4g}m"
    return f"{seconds:.4g}s"


def check_interval(seconds: float, what: str) -> float:
    if not math.isfinite(seconds) or not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise InputError(f"{what}: expected an interval between {fmt_s(MIN_INTERVAL_S)} and "
                         f"{fmt_s(MAX_INTERVAL_S)}, got {fmt_s(seconds)}")
    return seconds


@dataclass(frozen=True)
class Durations:
    """How long a state lasts: ``exp`` (exponential with this mean), ``fixed``, or ``file``
    (observed values, sampled with replacement)."""

    kind: str
    mean_s: float
    values: tuple[float, ...] = ()
    label: str = ""

    def sample(self, rng: random.Random) -> float:
        if self.kind == "exp":
            return rng.expovariate(1.0 / self.mean_s) if self.mean_s > 0 else 0.0
        if self.kind == "file":
            return self.values[int(rng.random() * len(self.values))]
        return self.mean_s

    def p_miss(self, interval_s: float) -> float:
        """Closed form of E[max(0, 1 - d/T)] over this distribution (fixed poll interval T)."""
        t = interval_s
        if self.kind == "exp":
            mu = self.mean_s
            return 1.0 if mu <= 0 else 1.0 - (mu / t) * (1.0 - math.exp(-t / mu))
        if self.kind == "file":
            return sum(max(0.0, 1.0 - v / t) for v in self.values) / len(self.values)
        return max(0.0, 1.0 - self.mean_s / t)


def fixed_durations(seconds: float) -> Durations:
    return Durations("fixed", seconds, label=f"fixed:{fmt_s(seconds)}")


DURATIONS_HELP = "exp:MEAN (e.g. exp:2s), fixed:D (e.g. fixed:0.3s), or a file of observed durations"


def parse_durations(spec: str, what: str = "--durations") -> Durations:
    """``exp:2s``, ``fixed:0.3s``, ``file:PATH`` or an existing PATH (one duration per line, in
    seconds; blank lines and ``#`` comments allowed)."""
    kind, _, arg = str(spec).partition(":")
    if kind in ("exp", "fixed") and arg:
        value = parse_seconds(arg, f"{what} {spec!r}")
        if not math.isfinite(value) or value > 10 * MAX_INTERVAL_S:
            raise InputError(f"{what} {spec!r}: expected a duration up to {fmt_s(10 * MAX_INTERVAL_S)}")
        if kind == "exp" and value <= 0:
            raise InputError(f"{what} {spec!r}: expected a positive mean, e.g. exp:2s")
        return Durations(kind, value, label=f"{kind}:{fmt_s(value)}")
    path = arg if kind == "file" else str(spec)
    if kind == "file" or os.path.exists(path):
        return _durations_file(path, what)
    raise InputError(f"{what}: expected {DURATIONS_HELP}, got {spec!r}")


def _durations_file(path: str, what: str) -> Durations:
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise InputError(f"{what}: cannot read durations file {path}: {reason}") from None
    values = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"{what} {path}:{number}: expected one duration in seconds per line "
                             f"(e.g. 0.25), got {text[:40]!r}") from None
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{what} {path}:{number}: expected a duration >= 0 seconds, got {text!r}")
        values.append(value)
    if not values:
        raise InputError(f"{what} {path}: no durations in the file (expected one number of seconds per line)")
    return Durations("file", sum(values) / len(values), tuple(values),
                     label=f"file:{os.path.basename(path)} ({len(values)} values)")


# ---- strategies --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    """How a client polls. ``interval_s`` is T (fixed, jitter) or the first interval (backoff,
    smart); ``factor``/``cap_s`` are backoff's; ``spread`` is jitter's fraction."""

    kind: StrategyKind
    interval_s: float = 0.0
    factor: float = 2.0
    cap_s: float = 0.0
    spread: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", StrategyKind(self.kind))  # Strategy("fixed", 2.0) still works

    @property
    def name(self) -> str:
        """The canonical spelling, itself a valid ``--strategy`` value."""
        kind = self.kind
        if kind is StrategyKind.PUSH:
            return "push"
        if kind is StrategyKind.JITTER:
            return f"jitter:{fmt_s(self.interval_s)},{self.spread * 100:g}%"
        if kind is StrategyKind.BACKOFF:
            return f"backoff:{fmt_s(self.interval_s)},{self.factor:g},{fmt_s(self.cap_s)}"
        if kind is StrategyKind.SMART:
            return f"smart:{fmt_s(self.interval_s)}"
        if kind is StrategyKind.FIXED:
            return f"fixed:{fmt_s(self.interval_s)}"
        assert_never(kind)

    def params(self) -> dict[str, float]:
        kind = self.kind
        if kind is StrategyKind.PUSH:
            return {}
        out = {"interval_s": self.interval_s}
        if kind is StrategyKind.BACKOFF:
            out.update(factor=self.factor, cap_s=self.cap_s)
        elif kind is StrategyKind.JITTER:
            out["spread_ratio"] = self.spread
        elif kind is StrategyKind.SMART:
            out.update(min_s=SMART_MIN_S, max_s=SMART_MAX_S, in_progress_factor=SMART_IN_PROGRESS,
                       otherwise_factor=SMART_OTHERWISE)
        elif kind is not StrategyKind.FIXED:
            assert_never(kind)
        return out

    @property
    def closed_form(self) -> bool:
        return self.kind in (StrategyKind.FIXED, StrategyKind.PUSH)


# Values after the colon each kind accepts (STRATEGY_HELP spells them out).
MAX_VALUES = {StrategyKind.FIXED: 1, StrategyKind.JITTER: 2, StrategyKind.BACKOFF: 3, StrategyKind.SMART: 1,
              StrategyKind.PUSH: 0}
STRATEGY_HELP = ("fixed[:T], jitter[:T[,SPREAD]], backoff[:START[,FACTOR[,CAP]]], smart[:START] "
                 "or push")


def parse_strategy(spec: str, interval_s: float, option: str = "--strategy") -> Strategy:
    """``fixed``, ``fixed:2s``, ``jitter:5s,20%``, ``backoff:0.5s,2,10s``, ``smart``, ``push``.
    Missing values default to ``interval_s`` (T, backoff's cap, smart's start), backoff START
    0.5 s and FACTOR 2, jitter SPREAD 20 %."""
    word, _, rest = str(spec).strip().lower().partition(":")
    args = [a.strip() for a in rest.split(",")] if rest else []
    what = f"{option} {spec!r}"
    if word not in KINDS:
        raise InputError(f"{option}: unknown strategy {spec!r}; expected {STRATEGY_HELP}")
    kind = StrategyKind(word)
    if len(args) > MAX_VALUES[kind]:
        raise InputError(f"{what}: too many values; expected {STRATEGY_HELP}")

    def seconds(i: int, default: float) -> float:
        return check_interval(parse_seconds(args[i], what) if len(args) > i else default, what)

    if kind is StrategyKind.PUSH:
        return Strategy(kind)
    if kind is StrategyKind.FIXED:
        return Strategy(kind, seconds(0, interval_s))
    if kind is StrategyKind.SMART:
        return Strategy(kind, min(max(seconds(0, interval_s), SMART_MIN_S), SMART_MAX_S))
    if kind is StrategyKind.JITTER:
        spread = _ratio(args[1], what) if len(args) > 1 else 0.2
        return Strategy(kind, seconds(0, interval_s), spread=spread)
    if kind is not StrategyKind.BACKOFF:
        assert_never(kind)
    start = seconds(0, min(0.5, interval_s))
    try:
        factor = float(args[1]) if len(args) > 1 else 2.0
    except ValueError:
        raise InputError(f"{what}: expected a backoff FACTOR like 2, got {args[1]!r}") from None
    if not 1.0 <= factor <= 100.0:
        raise InputError(f"{what}: expected a backoff FACTOR between 1 and 100, got {factor:g}")
    cap = seconds(2, max(interval_s, start))
    if cap < start:
        raise InputError(f"{what}: the CAP ({fmt_s(cap)}) must be at least START ({fmt_s(start)})")
    return Strategy(StrategyKind.BACKOFF, start, factor=factor, cap_s=cap)


def _ratio(text: str, what: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(f"{what}: expected a jitter SPREAD like 20% or 0.2, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise InputError(f"{what}: expected a jitter SPREAD from 0% to below 100%, got {text!r}")
    return value


# ---- closed forms (fixed interval, uniform phase) ---------------------------------------------


def fixed_delay_quantile_s(interval_s: float, q: float, latency_s: float = 0.0) -> float:
    return q * interval_s + latency_s


def fixed_mean_delay_s(interval_s: float, latency_s: float = 0.0) -> float:
    return interval_s / 2 + latency_s


def fixed_p_over(interval_s: float, threshold_s: float, latency_s: float = 0.0) -> float:
    """P(delay > threshold) for delay ~ U(0, T) + L."""
    return min(1.0, max(0.0, 1.0 - (threshold_s - latency_s) / interval_s))


def fixed_p_miss(interval_s: float, duration_s: float) -> float:
    """P(a state lasting d is never polled) = max(0, 1 - d/T)."""
    return max(0.0, 1.0 - duration_s / interval_s)


def jitter_mean_delay_s(interval_s: float, spread: float, latency_s: float = 0.0) -> float:
    """Steady-state forward recurrence time E[X²]/(2E[X]) for X ~ U(T(1-s), T(1+s)): longer
    than T/2, because a state change is more likely to land in a long interval."""
    return interval_s / 2 * (1 + spread * spread / 3) + latency_s


def claim_threshold_s(interval_s: float, ratio: float = CLAIM_RATIO) -> float:
    """The threshold t with P(delay > t) = ratio: t = T(1 - ratio). 5 s → 135 ms."""
    return interval_s * (1.0 - ratio)


def explain_claim(interval_s: float = CLAIM_INTERVAL_S, latency_s: float = 0.0) -> dict[str, Any]:
    """What "97.3 % probability of failing to capture SUCCESS in real time" means at T."""
    t = claim_threshold_s(interval_s)
    return {
        "interval_s": interval_s,
        "claimed_ratio": CLAIM_RATIO,
        "threshold_ms": round(t * 1000, 3),
        "mean_delay_ms": round(fixed_mean_delay_s(interval_s, latency_s) * 1000, 3),
        "p95_delay_ms": round(fixed_delay_quantile_s(interval_s, 0.95, latency_s) * 1000, 3),
        "p_delay_over_1s": round(fixed_p_over(interval_s, 1.0, latency_s), 6),
        "text": (f"At T = {fmt_s(interval_s)}, P(delay > t) = 1 - t/T is {CLAIM_RATIO:.1%} only for "
                 f"t = {fmt_s(t)}: the claim is true if 'real time' means within {fmt_s(t)}. The mean "
                 f"delay is {fmt_s(fixed_mean_delay_s(interval_s, latency_s))}; P(delay > 1s) = "
                 f"{fixed_p_over(interval_s, 1.0, latency_s):.0%}. SUCCESS is never missed (it "
                 f"persists), only seen up to {fmt_s(interval_s)} late; what polling can miss is a "
                 f"transient PROGRESS state lasting d < T, with probability 1 - d/T."),
    }


def proportion_band(p: float, n: int, z: float = 4.0) -> tuple[float, float]:
    """Where the share of n independent trials with probability p falls, z standard errors wide:
    how far a measured miss rate may stray from the model before the model is wrong."""
    half = z * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))
    return max(0.0, p - half), min(1.0, p + half)


def fixed_mean_band(interval_s: float, latency_s: float, n: int, z: float = 4.0) -> tuple[float, float]:
    """Where the mean of n measured delays falls under the closed form (sd of U(0, T) = T/√12)."""
    half = z * interval_s / math.sqrt(12 * max(n, 1))
    mean = fixed_mean_delay_s(interval_s, latency_s)
    return mean - half, mean + half


# ---- simulation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """The task timeline and the question asked of it (see the module docstring)."""

    durations: Durations
    states: int = 10
    queue_wait: Durations = field(default_factory=lambda: fixed_durations(0.0))
    latency_s: float = 0.0
    threshold_s: float = 1.0
    tasks: int = 4000
    seed: int = 0


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95 % confidence interval (equal to the value when exact)."""

    value: float
    low: float
    high: float

    @classmethod
    def exact(cls, value: float) -> Estimate:
        return cls(value, value, value)

    def contains(self, x: float, slack: float = 0.0) -> bool:
        return self.low - slack <= x <= self.high + slack

    def to_list(self, scale: float = 1.0, digits: int = 6) -> list[float]:
        return [round(self.low * scale, digits), round(self.high * scale, digits)]


@dataclass
class _Tally:
    """What one batch of simulated tasks saw."""

    delays: list[float] = field(default_factory=list)
    success_delays: list[float] = field(default_factory=list)
    missed: int = 0
    transients: int = 0
    requests: int = 0
    tasks: int = 0
    watch_s: float = 0.0


def _timeline(scenario: Scenario, rng: random.Random) -> list[float]:
    t = scenario.queue_wait.sample(rng)
    changes = [t]
    for _ in range(scenario.states):
        t += scenario.durations.sample(rng)
        changes.append(t)
    return changes  # changes[i < states]: transient state i begins; changes[-1]: SUCCESS


def _fixed_task(strategy: Strategy, changes: list[float], latency: float, rng: random.Random,
                tally: _Tally) -> None:
    """O(changes): the next poll after c is phase + ceil((c - phase)/T)·T."""
    period = strategy.interval_s
    phase = rng.random() * period
    ks = [max(0, math.ceil((c - phase) / period)) for c in changes]
    polls = [phase + k * period for k in ks]
    for c, p in zip(changes, polls):
        tally.delays.append(p - c + latency)
    for i in range(len(changes) - 1):
        tally.transients += 1
        if polls[i] >= changes[i + 1]:
            tally.missed += 1
    tally.success_delays.append(polls[-1] - changes[-1] + latency)
    tally.requests += ks[-1] + 1
    tally.watch_s += polls[-1] + latency


def _first_poll(strategy: Strategy, rng: random.Random) -> float:
    if strategy.kind is StrategyKind.JITTER:
        # Steady state: the interval covering t=0 is length-biased; t=0 falls uniformly inside it.
        a = strategy.interval_s * (1 - strategy.spread)
        b = strategy.interval_s * (1 + strategy.spread)
        covering = math.sqrt(a * a + rng.random() * (b * b - a * a))
        return rng.random() * covering
    return strategy.interval_s


def _next_interval(strategy: Strategy, current: float, in_progress: bool, rng: random.Random) -> float:
    kind = strategy.kind
    if kind is StrategyKind.JITTER:
        return strategy.interval_s * (1 + strategy.spread * (2 * rng.random() - 1))
    if kind is StrategyKind.BACKOFF:
        return min(strategy.cap_s, current * strategy.factor)
    if kind is StrategyKind.SMART:
        factor = SMART_IN_PROGRESS if in_progress else SMART_OTHERWISE
        return min(SMART_MAX_S, max(SMART_MIN_S, current * factor))
    if kind is StrategyKind.FIXED or kind is StrategyKind.PUSH:
        return strategy.interval_s
    assert_never(kind)


def _polled_task(strategy: Strategy, changes: list[float], latency: float, rng: random.Random,
                 tally: _Tally) -> None:
    """Walk the polls and the state changes together: O(polls + changes)."""
    n = len(changes)
    seen = [False] * (n - 1)
    interval = strategy.interval_s
    poll = _first_poll(strategy, rng)
    j = 0  # changes[:j] are at or before the current poll
    requests = 0
    while True:
        requests += 1
        while j < n and changes[j] <= poll:
            tally.delays.append(poll - changes[j] + latency)
            j += 1
        if j == n:
            tally.success_delays.append(poll - changes[-1] + latency)
            break
        if j >= 1:
            seen[j - 1] = True
        interval = _next_interval(strategy, interval, j >= 1, rng)
        poll += interval
    tally.transients += n - 1
    tally.missed += seen.count(False)
    tally.requests += requests
    tally.watch_s += poll + latency


def _push_task(changes: list[float], latency: float, tally: _Tally) -> None:
    tally.delays.extend(latency for _ in changes)
    tally.success_delays.append(latency)
    tally.transients += len(changes) - 1
    tally.requests += PUSH_REQUESTS
    tally.watch_s += changes[-1] + latency


def _expected_polls_per_task(strategy: Strategy, scenario: Scenario) -> float:
    """Work per simulated task: its polls, and never less than the states+1 delays it records
    (fixed and push poll 'once' in this accounting, yet --states 10000 still records 10001)."""
    runtime = scenario.queue_wait.mean_s + scenario.states * scenario.durations.mean_s
    kind = strategy.kind
    if kind is StrategyKind.JITTER:
        polls = runtime / (strategy.interval_s * (1 - strategy.spread)) + 2
    elif kind is StrategyKind.SMART:
        polls = runtime / SMART_MIN_S + 2
    elif kind is StrategyKind.BACKOFF:
        polls = runtime / strategy.interval_s + 2  # an upper bound; intervals grow
    elif kind is StrategyKind.FIXED or kind is StrategyKind.PUSH:
        polls = 1.0
    else:
        assert_never(kind)
    return max(polls, scenario.states + 1.0)


def task_count(strategy: Strategy, scenario: Scenario) -> int:
    """Tasks to simulate: as asked, unless that would exceed POLL_BUDGET simulated polls."""
    fit = int(POLL_BUDGET / max(1.0, _expected_polls_per_task(strategy, scenario)))
    return max(min(scenario.tasks, MIN_TASKS), min(scenario.tasks, fit))


def _seed_for(scenario: Scenario, strategy: Strategy) -> int:
    """Each strategy gets its own stream, reproducible from --seed and its name."""
    return scenario.seed * 1_000_003 + sum((i + 1) * ord(ch) for i, ch in enumerate(strategy.name))


@dataclass(frozen=True)
class StrategyResult:
    """All the model says about one strategy. Times in seconds; ``to_dict`` gives milliseconds."""

    strategy: Strategy
    method: str  # "closed-form" or "monte-carlo"
    delay_s: dict[str, Estimate]  # mean, p50, p95, p99
    success_delay_s: dict[str, Estimate]
    p_over: Estimate
    p_miss: Estimate
    requests_per_task: Estimate
    watch_s: float  # mean time a client watches one task (submission → SUCCESS seen)
    tasks: int
    cdf: tuple[tuple[float, float], ...]  # (delay_s, P(delay <= x)) points
    simulated: dict[str, Estimate] = field(default_factory=dict)  # MC check of a closed form

    @property
    def p99_s(self) -> float:
        return self.delay_s["p99"].value

    def backend_rps(self, clients: int) -> float:
        """Reads per second on the backend when ``clients`` watch a task each, all the time."""
        return clients * self.requests_per_task.value / self.watch_s if self.watch_s > 0 else 0.0

    def to_dict(self, clients: int) -> dict[str, Any]:
        def ms(est: dict[str, Estimate]) -> dict[str, float]:
            return {k: round(v.value * 1000, 3) for k, v in est.items()}

        out: dict[str, Any] = {
            "name": self.strategy.name,
            "kind": self.strategy.kind.value,
            "params": self.strategy.params(),
            "method": self.method,
            "delay_ms": ms(self.delay_s),
            "p_delay_over_threshold": round(self.p_over.value, 6),
            "p_miss_transient": round(self.p_miss.value, 6),
            "requests_per_task": round(self.requests_per_task.value, 3),
            "backend_requests_per_s": round(self.backend_rps(clients), 3),
            "success_delay_ms": ms(self.success_delay_s),
            "ci95": {
                "delay_ms": {k: v.to_list(1000, 3) for k, v in self.delay_s.items()},
                "p_delay_over_threshold": self.p_over.to_list(),
                "p_miss_transient": self.p_miss.to_list(),
                "requests_per_task": self.requests_per_task.to_list(1, 3),
            },
            "simulated_tasks": self.tasks,
        }
        if self.simulated:
            out["monte_carlo_check"] = {k: [round(v.value, 6), *v.to_list()] for k, v in self.simulated.items()}
        return out


def _batch_estimate(pooled: float, per_batch: Sequence[float]) -> Estimate:
    """Point from all samples; 95 % CI half-width from the spread of independent batch values."""
    values = [v for v in per_batch if math.isfinite(v)]
    if len(values) < 2:
        return Estimate.exact(pooled)
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = T_975_19 * sd / math.sqrt(len(values))
    return Estimate(pooled, pooled - half, pooled + half)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    from celerydiag.measure import percentile

    return percentile(sorted_values, q)  # percentile sorts again; inputs are small enough


def _summaries(batches: list[_Tally], threshold_s: float) -> dict[str, dict[str, Estimate] | Estimate]:
    def stats(getter: Callable[[_Tally], list[float]]) -> dict[str, Estimate]:
        pooled = [x for b in batches for x in getter(b)]
        out = {"mean": _batch_estimate(sum(pooled) / len(pooled),
                                       [sum(getter(b)) / len(getter(b)) for b in batches if getter(b)])}
        for key, q in PERCENTILES:
            out[key] = _batch_estimate(_quantile(pooled, q), [_quantile(getter(b), q) for b in batches if getter(b)])
        return out

    def ratio(num: Callable[[_Tally], float], den: Callable[[_Tally], float]) -> Estimate:
        total = sum(den(b) for b in batches)
        pooled = sum(num(b) for b in batches) / total if total else 0.0
        return _batch_estimate(pooled, [num(b) / den(b) for b in batches if den(b)])

    return {
        "delay": stats(lambda b: b.delays),
        "success": stats(lambda b: b.success_delays),
        "p_over": ratio(lambda b: sum(1 for d in b.delays if d > threshold_s), lambda b: len(b.delays)),
        "p_miss": ratio(lambda b: b.missed, lambda b: b.transients),
        "requests": ratio(lambda b: b.requests, lambda b: b.tasks),
    }


def _cdf(values: list[float], points: int = 200) -> tuple[tuple[float, float], ...]:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return ()
    step = max(1, n // points)
    out = [(ordered[i], (i + 1) / n) for i in range(0, n, step)]
    if out[-1][1] < 1.0:
        out.append((ordered[-1], 1.0))
    return tuple(out)


def simulate(strategy: Strategy, scenario: Scenario) -> StrategyResult:
    """Seeded Monte-Carlo of ``scenario`` under ``strategy``; closed-form values replace the
    simulated ones where they exist (the simulation is then kept as ``simulated``, a check)."""
    rng = random.Random(_seed_for(scenario, strategy))
    tasks = task_count(strategy, scenario)
    batches = [_Tally() for _ in range(BATCHES)]
    latency = scenario.latency_s
    for i in range(tasks):
        tally = batches[i % BATCHES]
        changes = _timeline(scenario, rng)
        kind = strategy.kind
        if kind is StrategyKind.FIXED:
            _fixed_task(strategy, changes, latency, rng, tally)
        elif kind is StrategyKind.PUSH:
            _push_task(changes, latency, tally)
        elif kind is StrategyKind.JITTER or kind is StrategyKind.BACKOFF or kind is StrategyKind.SMART:
            _polled_task(strategy, changes, latency, rng, tally)
        else:
            assert_never(kind)
        tally.tasks += 1
    s = _summaries(batches, scenario.threshold_s)
    delays = [d for b in batches for d in b.delays]
    watch = sum(b.watch_s for b in batches) / tasks
    delay, success = s["delay"], s["success"]
    p_over, p_miss, requests = s["p_over"], s["p_miss"], s["requests"]
    assert isinstance(delay, dict) and isinstance(success, dict)
    assert isinstance(p_over, Estimate) and isinstance(p_miss, Estimate) and isinstance(requests, Estimate)
    if strategy.kind is StrategyKind.PUSH:
        exact = {k: Estimate.exact(latency) for k in ("mean", "p50", "p95", "p99")}
        return StrategyResult(strategy, "closed-form", exact, exact,
                              Estimate.exact(1.0 if latency > scenario.threshold_s else 0.0),
                              Estimate.exact(0.0), Estimate.exact(PUSH_REQUESTS), watch, tasks, _cdf(delays))
    if strategy.kind is StrategyKind.FIXED:
        t = strategy.interval_s
        closed = {"mean": Estimate.exact(fixed_mean_delay_s(t, latency))}
        closed.update({k: Estimate.exact(fixed_delay_quantile_s(t, q / 100, latency)) for k, q in PERCENTILES})
        runtime = scenario.queue_wait.mean_s + scenario.states * scenario.durations.mean_s
        check = {f"delay_{k}_s": v for k, v in delay.items()}
        check.update(p_delay_over_threshold=p_over, p_miss_transient=p_miss, requests_per_task=requests)
        return StrategyResult(
            strategy, "closed-form", closed, success,
            Estimate.exact(fixed_p_over(t, scenario.threshold_s, latency)),
            Estimate.exact(scenario.durations.p_miss(t)),
            Estimate.exact(runtime / t + 1), watch, tasks, _cdf(delays), check)
    return StrategyResult(strategy, "monte-carlo", delay, success, p_over, p_miss, requests,
                          watch, tasks, _cdf(delays))


def model(strategies: Sequence[Strategy], scenario: Scenario,
          on_strategy: Callable[[Strategy], None] | None = None) -> list[StrategyResult]:
    results = []
    for strategy in strategies:
        if on_strategy:
            on_strategy(strategy)
        results.append(simulate(strategy, scenario))
    return results


# ---- recommendation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    text: str
    strategy: str | None  # a --strategy spelling, or None when polling cannot meet both
    interval_s: float | None
    backend_requests_per_s: float | None
    meets: tuple[str, ...]  # modelled strategies meeting the target and budget

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "strategy": self.strategy, "interval_s": self.interval_s,
                "backend_requests_per_s": None if self.backend_requests_per_s is None
                else round(self.backend_requests_per_s, 3),
                "meets": list(self.meets)}


def recommend(results: Sequence[StrategyResult], target_delay_s: float, request_budget_rps: float | None,
              clients: int, latency_s: float = 0.0) -> Recommendation:
    """The longest fixed interval whose P99 delay meets the target (P99 = 0.99T + L), checked
    against the request budget; and which modelled strategies meet both."""
    def fits(r: StrategyResult) -> bool:
        return r.p99_s <= target_delay_s and (request_budget_rps is None
                                              or r.backend_rps(clients) <= request_budget_rps)

    meets = tuple(r.strategy.name for r in sorted(results, key=lambda r: r.backend_rps(clients)) if fits(r))
    budget = "" if request_budget_rps is None else f" within {request_budget_rps:g} req/s"
    also = f" Modelled strategies that meet it: {', '.join(meets)}." if meets else ""
    push = ("use push instead of polling: on a Redis or RPC result backend AsyncResult.get(on_message=cb, "
            "propagate=False) calls cb for every state (feed a websocket/SSE from it)")
    interval = (target_delay_s - latency_s) / 0.99
    if interval < MIN_INTERVAL_S:
        return Recommendation(f"No polling interval gives P99 <= {fmt_s(target_delay_s)}: the read latency "
                              f"alone is {fmt_s(latency_s)}; {push}.{also}", None, None, None, meets)
    interval = min(interval, MAX_INTERVAL_S)
    rps = clients / interval
    if request_budget_rps is not None and rps > request_budget_rps:
        affordable = clients / request_budget_rps
        return Recommendation(
            f"No fixed interval meets both: P99 <= {fmt_s(target_delay_s)} needs a poll every "
            f"{fmt_s(interval)} = {rps:.4g} req/s for {clients} clients (budget {request_budget_rps:g}); "
            f"the budget allows one poll every {fmt_s(affordable)} per client (P99 "
            f"{fmt_s(fixed_delay_quantile_s(affordable, 0.99, latency_s))}). {push[0].upper()}{push[1:]}.{also}",
            "push", None, None, meets)
    cheaper = [r for r in results if fits(r) and r.backend_rps(clients) < rps]
    if cheaper:
        best = min(cheaper, key=lambda r: r.backend_rps(clients))
        also += (f" Cheapest of those: {best.strategy.name} at {best.backend_rps(clients):.4g} req/s"
                 + (" (needs a Redis or RPC result backend)." if best.strategy.kind is StrategyKind.PUSH else "."))
    return Recommendation(
        f"Poll every {fmt_s(interval)} (fixed): P99 delay {fmt_s(target_delay_s)} at {rps:.4g} req/s for "
        f"{clients} clients{budget}.{also}", f"fixed:{fmt_s(interval)}", interval, rps, meets)


# ---- the poll-model JSON document ---------------------------------------------------------------


def document(results: Sequence[StrategyResult], scenario: Scenario, clients: int, recommendation: Recommendation,
             claim: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "inputs": {
            "durations": scenario.durations.label,
            "mean_duration_s": round(scenario.durations.mean_s, 6),
            "states_count": scenario.states,
            "queue_wait": scenario.queue_wait.label,
            "read_latency_ms": round(scenario.latency_s * 1000, 3),
            "threshold_ms": round(scenario.threshold_s * 1000, 3),
            "clients_count": clients,
            "seed": scenario.seed,
        },
        "strategies": [r.to_dict(clients) for r in results],
        "recommendation": recommendation.to_dict(),
        "claim": claim,
    }
