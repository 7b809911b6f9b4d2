"""Polling: a web client that reads AsyncResult.state every 5 s (`doctor --poll-interval 5`).

Injected for real: a client thread polls a real worker's progress task every 5 s while the doctor
runs, and the doctor is told how the clients poll, as a user would tell it. The printed fix on a
push-based (Redis) backend is to stop polling and stream states with get(on_message=...); applied,
the client streams and the doctor is rerun with --poll-strategy push.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.scenarios.harness import CAREFUL_REDIS, doctor, finding, ranked, record, send, top_cause, worker

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.redis]

POLL_S = 5.0


def poll_every(app: Any, task_id: str, interval_s: float, stop: threading.Event, seen: list[str]) -> None:
    """What the stale page does: result.state every interval_s (bounded by ``stop``)."""
    result = app.AsyncResult(task_id)
    while not stop.is_set():
        seen.append(result.state)
        stop.wait(interval_s)


def stream(app: Any, task_id: str, seen: list[str]) -> None:
    """The fix: every state the worker writes arrives by push (the task ends via its stop file)."""
    app.AsyncResult(task_id).get(on_message=lambda meta: seen.append(meta["status"]), propagate=False, timeout=120)


def test_five_second_polling_is_named_and_push_removes_it(amqp_url: str, redis_url: str, redis_prefix: str,
                                                         user_config: Any) -> None:
    config = user_config(broker_url=amqp_url, result_backend=redis_url,
                         result_backend_transport_options={"global_keyprefix": redis_prefix}, **CAREFUL_REDIS)
    client = config.client()
    stop = threading.Event()
    polled: list[str] = []
    try:
        with worker(config):
            task_id = send(config, "scenario.progress", config.stop_file, 90.0, 0.2)
            poller = threading.Thread(target=poll_every, args=(client, task_id, POLL_S, stop, polled), daemon=True)
            poller.start()
            before = doctor(config, "--poll-interval", str(POLL_S))
            stop.set()
            poller.join(POLL_S + 5)
        delay = finding(before, "polling.detection-delay")
        assert delay and delay["severity"] == "critical", ranked(before)
        assert delay["impact_ms"] == pytest.approx(0.99 * POLL_S * 1000, rel=0.05)
        assert top_cause(before) == "polling", ranked(before)
        assert "on_message" in delay["fix"]["summary"], delay["fix"]

        # The fix: stream states instead of polling, and say so to the doctor.
        import os

        os.unlink(config.stop_file)  # the first worker's stop file ended its task; start afresh
        streamed: list[str] = []
        with worker(config):
            task_id = send(config, "scenario.progress", config.stop_file, 90.0, 0.2)
            streamer = threading.Thread(target=stream, args=(client, task_id, streamed), daemon=True)
            streamer.start()
            after = doctor(config, "--poll-strategy", "push")
        streamer.join(15)
        record("polling", "polling", before, after, "polling.detection-delay")
        fixed = finding(after, "polling.detection-delay")
        assert fixed and fixed["severity"] == "ok" and fixed["impact_ms"] == 0, ranked(after)
        assert "PROGRESS" in streamed and polled, (streamed[-3:], polled)
    finally:
        stop.set()
        client.close()
