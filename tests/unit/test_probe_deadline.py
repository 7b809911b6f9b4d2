"""--max-seconds is a hard bound: the guard cuts a probe blocked in a call with no timeout of its own
(a redis-py read from a server that accepted and went silent), keeps what it had found, and bounds
its cleanup by the stated grace, stuck cleanup steps included. Real sockets, no mocks: the "server"
is a loopback listener that never answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from celerydiag import interrupt
from celerydiag.findings import Cause, Finding, ProbeStatus, Severity
from celerydiag.probe import CUT_REPEAT_S, Limits, Probe, ProbeContext, Skip, run_probe
from celerydiag.target import resolve_target

SLACK_S = 3.0  # generous: a hang check, not a benchmark


@pytest.fixture
def silent() -> Iterator[int]:
    """A loopback port that completes the handshake and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def ctx_for(max_seconds: float, grace_s: float = 0.5) -> ProbeContext:
    target = resolve_target(broker="memory://", backend="disabled://")
    return ProbeContext(target=target, limits=Limits(max_seconds=max_seconds, cleanup_grace_s=grace_s))


def silent_redis(port: int):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=None, socket_connect_timeout=2)


class StuckProbe(Probe):
    """Finds one thing, then blocks in a redis-py PING with no timeout (and, if asked, its cleanup too)."""

    name = "stuck"
    cause = Cause.BACKEND
    port = 0
    stuck_cleanup = False

    def __init__(self) -> None:
        self.cleaned: list[str] = []

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        ctx.cleanup.callback(self.cleaned.append, "last")  # LIFO: runs after the stuck step
        if self.stuck_cleanup:
            ctx.cleanup.callback(lambda: silent_redis(self.port).ping())
        ctx.cleanup.callback(self.cleaned.append, "first")
        yield Finding("stuck.before", Cause.BACKEND, Severity.INFO, "found before the stall")
        ctx.doing("pinging the silent server")
        silent_redis(self.port).ping()  # blocks forever without the guard's cut
        yield Finding("stuck.after", Cause.BACKEND, Severity.INFO, "never reached")


def test_a_probe_blocked_without_a_timeout_is_cut_at_max_seconds(silent: int) -> None:
    probe = StuckProbe()
    probe.port = silent
    ctx = ctx_for(max_seconds=1.0)
    started = time.monotonic()
    result = run_probe(probe, ctx)
    took = time.monotonic() - started
    print(f"cut after {took:.2f} s (bound 1.0 + 0.5 grace)")
    assert result.status is ProbeStatus.FAILED
    assert "cut at its --max-seconds bound (1 s) while pinging the silent server" in result.reason
    assert [f.id for f in result.findings] == ["stuck.before"]
    assert probe.cleaned == ["first", "last"]
    assert 0.9 <= took < 1.0 + 0.5 + SLACK_S


def test_a_stuck_cleanup_step_is_cut_after_the_grace_and_the_rest_still_runs(silent: int) -> None:
    probe = StuckProbe()
    probe.port, probe.stuck_cleanup = silent, True
    ctx = ctx_for(max_seconds=1.0, grace_s=0.5)
    started = time.monotonic()
    result = run_probe(probe, ctx)
    took = time.monotonic() - started
    print(f"probe with a stuck cleanup ended after {took:.2f} s (bound 1.0 + 0.5 grace)")
    assert probe.cleaned == ["first", "last"]
    assert "cleanup was cut after the 0.5 s grace" in result.reason
    assert took < 1.0 + 0.5 + CUT_REPEAT_S + SLACK_S


class SkippingProbe(Probe):
    """Finds the target unfit for the measurement halfway."""

    name = "skipping"
    cause = Cause.E2E

    def __init__(self) -> None:
        self.cleaned = False

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        ctx.cleanup.callback(setattr, self, "cleaned", True)
        raise Skip("the broker blocks publishers")
        yield  # pragma: no cover


def test_skip_from_run_is_a_skipped_probe_after_cleanup() -> None:
    probe = SkippingProbe()
    result = run_probe(probe, ctx_for(5))
    assert result.status is ProbeStatus.SKIPPED and result.reason == "the broker blocks publishers"
    assert probe.cleaned


def test_the_context_hands_out_timeouts_that_end_by_the_deadline() -> None:
    ctx = ctx_for(60)
    assert ctx.left() == float("inf") and ctx.call_timeout() == ctx.limits.timeout_s
    ctx.deadline = time.monotonic() + 1.0
    assert 0.5 < ctx.call_timeout() <= 1.0 and not ctx.expired()
    ctx.deadline = time.monotonic() - 1
    assert ctx.expired() and ctx.left() == 0 and ctx.call_timeout() == pytest.approx(0.05)


def test_nested_deadlines_fire_in_order_and_leave_the_alarm_as_it_was() -> None:
    import signal

    fired = []
    with interrupt.deadline(time.monotonic() + 5) as outer:
        try:
            with interrupt.deadline(time.monotonic() + 0.2):
                time.sleep(3)
        except interrupt.Overrun:
            fired.append("inner")
        assert not outer.fired
    assert fired == ["inner"]
    assert signal.getsignal(signal.SIGALRM) is not interrupt._on_alarm  # the previous one is back


def test_an_outer_timer_such_as_pytest_timeouts_survives_a_deadline() -> None:
    import signal

    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.8)
        with interrupt.deadline(time.monotonic() + 10):
            time.sleep(0.1)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0.3 < left < 0.8
        time.sleep(1.0)
        assert fired == [1]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
