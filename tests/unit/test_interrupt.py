"""Ctrl-C wins even when a library turns it into its own exception (sqlite3 raises
OperationalError('interrupted')): the guard must re-raise KeyboardInterrupt, not record a failed
probe and carry on to exit 0."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from celerydiag import interrupt
from celerydiag.errors import DiagError
from celerydiag.findings import Cause, Finding, ProbeStatus
from celerydiag.probe import Probe, ProbeContext, run_probe
from celerydiag.target import resolve_target


class SwallowingProbe(Probe):
    """Raises what a driver raises when Ctrl-C arrives mid-call."""

    name = "swallowing"
    cause = Cause.BACKEND
    error: Exception = sqlite3.OperationalError("interrupted")

    interrupt_mid_run = False

    def __init__(self) -> None:
        self.cleaned: list[bool] = []  # what the cleanup stack ran

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        ctx.cleanup.callback(self.cleaned.append, True)
        if self.interrupt_mid_run:
            interrupt.requested.set()  # what the SIGINT handler does, before the driver swallows it
        raise self.error
        yield  # pragma: no cover


@pytest.fixture
def ctx() -> Iterator[ProbeContext]:
    target = resolve_target(broker="memory://", backend="disabled://")
    yield ProbeContext(target=target)
    interrupt.requested.clear()


@pytest.mark.parametrize("error", [sqlite3.OperationalError("interrupted"), DiagError("timed out")])
def test_an_interrupted_probe_stops_the_run_after_cleaning_up(ctx: ProbeContext, error: Exception) -> None:
    probe = SwallowingProbe()
    probe.error, probe.interrupt_mid_run = error, True
    with pytest.raises(KeyboardInterrupt):
        run_probe(probe, ctx)
    assert probe.cleaned == [True]


def test_without_an_interrupt_the_same_error_is_a_failed_probe(ctx: ProbeContext, monkeypatch) -> None:
    import celerydiag.probe as probes

    monkeypatch.setattr(probes, "_on_internal_error", lambda probe, exc: None)  # the user's setting
    probe = SwallowingProbe()
    probe.error = sqlite3.OperationalError("disk I/O error")
    result = run_probe(probe, ctx)
    assert result.status == ProbeStatus.FAILED and "disk I/O error" in result.reason


def test_no_probe_starts_after_an_interrupt(ctx: ProbeContext) -> None:
    interrupt.requested.set()
    probe = SwallowingProbe()
    with pytest.raises(KeyboardInterrupt):
        run_probe(probe, ctx)
    assert probe.cleaned == []


def test_a_target_that_drops_mid_probe_is_a_failed_probe_not_our_bug(ctx: ProbeContext) -> None:
    """A driver's connection error is the target failing: one line naming it, not 'internal error,
    please report' (the guard in tests re-raises internal errors, so this also proves the path)."""
    import redis.exceptions

    probe = SwallowingProbe()
    probe.error = redis.exceptions.ConnectionError("Error 104 while reading from 10.0.0.7:6379: reset by peer")
    result = run_probe(probe, ctx)
    assert result.status == ProbeStatus.FAILED
    assert result.reason.startswith("lost the connection to the target during the probe:")
    assert "reset by peer" in result.reason and "internal error" not in result.reason
    assert probe.cleaned == [True]


def test_a_signal_inside_a_gc_callback_prints_no_traceback(monkeypatch) -> None:  # noqa: ANN001
    """A SIGTERM that lands in a weakref/GC callback (SQLAlchemy's _collection_gced) raises our
    KeyboardInterrupt where Python cannot raise: the default hook printed "Exception ignored ...
    Traceback". Under handled() it is dropped (the flag stays set, the guard re-raises); any other
    unraisable error still reaches the hook that was there before."""
    import sys
    import weakref

    from celerydiag import interrupt

    reported: list[type] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(type(u.exc_value)))

    class Thing:
        pass

    def interrupted(_ref: object) -> None:
        raise KeyboardInterrupt

    def buggy(_ref: object) -> None:
        raise ValueError("a real bug in a finalizer")

    with interrupt.handled():
        for callback in (interrupted, buggy):
            thing = Thing()
            ref = weakref.ref(thing, callback)
            del thing  # the callback runs now, where Python cannot raise
            assert ref() is None
    assert reported == [ValueError], reported
