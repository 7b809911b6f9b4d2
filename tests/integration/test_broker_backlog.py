"""A real backlog drained at a known rate: broker.backlog must turn N queued messages into about
N / rate seconds before a new task starts (PENDING->STARTED), measured from the queue's depth over
the probe's window, or from the management API's deliver rate when --rabbitmq-api is read.

Each test uses a queue of its own (the scratch prefix), a bounded number of messages, a consumer
thread that takes one every DRAIN_EVERY_S (bounded in count and seconds), and deletes the queue
at the end. Bands are loose: the machine's load moves the consumer's real rate; the finding's
own arithmetic (wait = depth / rate) is checked exactly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celerydiag.findings import Severity
from celerydiag.rank import rated
from celerydiag.target import resolve_target
from tests.integration.test_broker_api import api_queue, api_url  # noqa: F401  (fixture)
from tests.integration.test_broker_rabbitmq import findings, probe
from tests.support.rabbitmq import waiting_tasks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGES = 600
DRAIN_EVERY_S = 0.025  # the consumer's pace: at most 40 messages/s
DRAIN_MAX_S = 40.0
RATE_BAND = (8.0, 45.0)  # messages/s the probe may measure for that consumer


class Drainer(threading.Thread):
    """Takes one message every DRAIN_EVERY_S with ``take()`` (returns False when there is none)."""

    def __init__(self, take: Any) -> None:
        super().__init__(daemon=True, name="drainer")
        self.take, self.taken = take, 0
        self.halt = threading.Event()

    def run(self) -> None:
        end = time.monotonic() + DRAIN_MAX_S
        while not self.halt.is_set() and time.monotonic() < end and self.taken < MESSAGES:
            if self.take():
                self.taken += 1
            self.halt.wait(DRAIN_EVERY_S)

    def __enter__(self) -> Drainer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(10)


def _check_wait(backlog: Any, queue: str, source: str) -> dict[str, Any]:
    entry = backlog.evidence["queues"][queue]
    assert entry.get("drain_rate_source") == source, backlog.evidence
    rate = entry["drain_rate_per_s"]
    assert RATE_BAND[0] <= rate <= RATE_BAND[1], entry
    assert entry["wait_ms"] == pytest.approx(1000.0 * entry["messages_count"] / rate, rel=1e-3)
    assert backlog.impact_ms == pytest.approx(entry["wait_ms"])
    assert rated(backlog, 1000).severity >= Severity.WARNING  # hundreds of messages at < 45/s: seconds
    assert "pass --rabbitmq-api" not in backlog.title
    return entry


@pytest.fixture
def rabbit_backlog(amqp_url: str, scratch: str) -> Iterator[tuple[str, Drainer]]:
    from kombu import Connection

    queue = f"{scratch}.backlog"
    with waiting_tasks(amqp_url, queue, MESSAGES), Connection(amqp_url, connect_timeout=3) as conn:
        channel = conn.channel()
        channel.basic_qos(0, 1, False)  # one message at a time, like a worker with prefetch 1
        got: list[Any] = []
        channel.basic_consume(queue, callback=got.append)  # a real consumer: the queue shows 1

        def take() -> bool:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                return False
            while got:
                channel.basic_ack(got.pop().delivery_tag)
            return True

        with Drainer(take) as drainer:
            yield queue, drainer


@pytest.mark.rabbitmq
def test_rabbitmq_backlog_wait_from_its_depth_over_the_window(amqp_url: str, scratch: str,
                                                              rabbit_backlog: tuple[str, Drainer]) -> None:
    queue, drainer = rabbit_backlog
    time.sleep(0.5)
    target = resolve_target(broker=amqp_url)
    target.conf.task_default_queue = queue
    backlog = findings(probe(target, scratch, samples=30, max_seconds=10))["broker.backlog"]
    assert drainer.taken > 0
    entry = _check_wait(backlog, queue, "depth")
    assert entry["messages_at_start_count"] > entry["messages_count"] > 0
    assert backlog.evidence["window_s"] >= 1.0


@pytest.mark.rabbitmq
def test_rabbitmq_backlog_wait_from_the_management_api(amqp_url: str, api_url: str,  # noqa: F811
                                                       scratch: str, rabbit_backlog: tuple[str, Drainer]) -> None:
    queue, drainer = rabbit_backlog
    from celerydiag.broker import api as broker_api

    deadline = time.monotonic() + 15  # the API's statistics are emitted every 5 s
    while not ((broker_api.get(api_url, f"/api/queues/%2F/{queue}", 3).get("message_stats") or {})
               .get("deliver_get_details", {}).get("rate")):
        assert time.monotonic() < deadline, "the management API never showed a deliver rate"
        time.sleep(0.5)
    target = resolve_target(broker=amqp_url)
    target.conf.task_default_queue = queue
    backlog = findings(probe(target, scratch, samples=20, max_seconds=8, rabbitmq_api=api_url))["broker.backlog"]
    _check_wait(backlog, queue, "management-api")


@pytest.mark.redis
def test_redis_backlog_wait_from_its_depth_over_the_window(redis_url: str, scratch: str) -> None:
    import redis

    queue = f"{scratch}.backlog"
    client = redis.Redis.from_url(redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.lpush(queue, *[b"task %d" % i for i in range(MESSAGES)])
        client.expire(queue, 120)  # a safety net if the test is killed
        with Drainer(lambda: client.rpop(queue) is not None) as drainer:
            time.sleep(0.5)
            target = resolve_target(broker=redis_url)
            target.conf.task_default_queue = queue
            backlog = findings(probe(target, scratch, samples=30, max_seconds=10))["broker.backlog"]
        assert drainer.taken > 0
        entry = _check_wait(backlog, queue, "depth")
        assert entry["messages_at_start_count"] > entry["messages_count"] > 0
    finally:
        client.delete(queue)
        client.close()
