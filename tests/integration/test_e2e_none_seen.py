"""A client that sees none of the task's state updates (e2e.visibility-poll/-push), on the real
RabbitMQ and Redis.

The fault is injected on the client side only: its watch drops every update it receives
(``E2ERun._note``), the way a client reading another key, database or channel than the worker
writes would; the worker, broker and backend are the real ones. The finding must then say what it
costs in milliseconds: the client was still looking that long after the first update returned, a
measured lower bound, marked as one. Before, it was a warning at 0 ms.
"""

from __future__ import annotations

from typing import Any

import pytest

from celerydiag.e2e.probe import E2EProbe, E2ERun
from celerydiag.findings import Kind, ProbeStatus, Severity
from celerydiag.probe import Limits, ProbeContext, run_probe
from celerydiag.rank import rated as rate
from celerydiag.target import resolve_target

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.slow]


def test_a_client_that_sees_no_update_gets_a_lower_bound_impact(amqp_url: str, redis_url: str, scratch: str,
                                                                 monkeypatch: Any) -> None:
    monkeypatch.setattr(E2ERun, "_note", lambda self, seen, meta, now: None)
    target = resolve_target(broker=amqp_url, backend=redis_url)
    ctx = ProbeContext(target=target, limits=Limits(updates=20, max_seconds=12, timeout_s=2), scratch=scratch)
    result = run_probe(E2EProbe(), ctx)
    assert result.status == ProbeStatus.RAN, result.reason
    by_id = {f.id: f for f in result.findings}
    for mode in ("poll", "push"):
        f = by_id[f"e2e.visibility-{mode}"]
        assert f.evidence["updates_written_count"] > 0 and f.evidence["impact_is_lower_bound"] is True, f
        assert f.kind is Kind.MEASURED and f.impact_ms > 0
        assert f.impact_ms == pytest.approx(f.evidence["watched_after_first_ms"], abs=0.01)
        assert "a lower bound" in f.title and f"{f.impact_ms:.0f} ms" in f.title
        assert f.severity >= Severity.WARNING


def test_updates_lost_before_the_clients_last_look_get_no_milliseconds_and_say_why(scratch: str) -> None:
    """The task ended before the client ever looked without seeing one: no delay to put a number on."""
    target = resolve_target(broker="memory://", backend="cache+memory://")
    run = E2ERun(ProbeContext(target=target, limits=Limits(updates=5), scratch=scratch))
    task_id = f"{scratch}-progress-poll"
    run.trace.returned = {(task_id, 0): 10.0, (task_id, 1): 10.5}
    f = rate(run._none_seen("poll", 2, 2), 1000.0)
    assert f.severity == Severity.WARNING and f.impact_ms == 0.0
    assert f.evidence["impact_is_lower_bound"] is False
    assert "lost (overwritten between two reads or never delivered), not slow" in f.detail
    run.trace.blind["poll"] = 10.25
    bounded = rate(run._none_seen("poll", 2, 2), 1000.0)
    assert bounded.impact_ms == pytest.approx(250.0) and bounded.severity >= Severity.WARNING
