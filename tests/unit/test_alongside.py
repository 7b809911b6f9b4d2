"""doctor runs the broker probe in a child process beside the backend probe (celerydiag/alongside.py):
both really run at once, each in its own process, the report keeps the probe order, and a child
that dies without a result is a failed probe with a reason, not a hang or a traceback."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from celerydiag import doctor
from celerydiag.findings import Cause, Finding, ProbeStatus, Severity
from celerydiag.probe import Probe, ProbeContext
from celerydiag.target import resolve_target

NAP_S = 0.3


def _span(name: str, cause: Cause) -> Finding:
    started = time.monotonic()
    time.sleep(NAP_S)
    return Finding(f"{name}.span", cause, Severity.OK, f"{name} ran",
                   evidence={"pid": os.getpid(), "start_s": started, "end_s": time.monotonic()})


class FakeBroker(Probe):
    """Sleeps, says where and when."""

    name = "broker"
    cause = Cause.BROKER

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        yield _span(self.name, self.cause)


class FakeBackend(Probe):
    """Sleeps, says where and when."""

    name = "backend"
    cause = Cause.BACKEND

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        yield _span(self.name, self.cause)


class FakeE2E(Probe):
    """Needs the broker's child joined first."""

    name = "e2e"
    cause = Cause.E2E

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        yield _span(self.name, self.cause)


class DyingBroker(Probe):
    """Ends its process without a word."""

    name = "broker"
    cause = Cause.BROKER

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        os._exit(3)
        yield  # pragma: no cover


@pytest.fixture
def target(monkeypatch):
    monkeypatch.setattr(doctor, "OVERLAP", True)  # off by default (doctor.py says why)
    return resolve_target(broker="memory://", backend="disabled://")


def spans(report) -> dict[str, dict]:
    return {f.id.split(".")[0]: dict(f.evidence) for f in report.findings}


def test_broker_runs_in_its_own_process_at_the_same_time_as_the_backend(target) -> None:
    report = doctor.diagnose(target, [FakeBroker, FakeBackend, FakeE2E])
    assert [(p.name, p.status) for p in report.probes] == [
        ("broker", ProbeStatus.RAN), ("backend", ProbeStatus.RAN), ("e2e", ProbeStatus.RAN)]
    s = spans(report)
    assert s["broker"]["pid"] != os.getpid() and s["backend"]["pid"] == os.getpid()
    assert s["broker"]["start_s"] < s["backend"]["end_s"] and s["backend"]["start_s"] < s["broker"]["end_s"]
    assert s["e2e"]["start_s"] >= s["broker"]["end_s"]  # joined before a probe that uses the broker


def test_no_child_when_no_partner_follows_or_overlap_is_off(target, monkeypatch) -> None:
    report = doctor.diagnose(target, [FakeBroker, FakeE2E])
    assert spans(report)["broker"]["pid"] == os.getpid()
    monkeypatch.setattr(doctor, "OVERLAP", False)
    report = doctor.diagnose(target, [FakeBroker, FakeBackend])
    assert spans(report)["broker"]["pid"] == os.getpid()


def test_a_child_that_dies_is_a_failed_probe_with_a_reason(target) -> None:
    report = doctor.diagnose(target, [DyingBroker, FakeBackend])
    broker, backend = report.probes
    assert broker.status == ProbeStatus.FAILED and "ended without a result (exit 3" in broker.reason
    assert backend.status == ProbeStatus.RAN
