"""`celerydiag watch --events`: real tasks' queue wait from their task-sent and task-started events.

A worker of the test's own (in-process, pool solo, task events on) consumes a queue of the test's
own on the shared RabbitMQ; the test sends tasks with ``task_send_sent_event`` while watch runs, and
watch reports a queue wait for them in its JSON lines and in /metrics.
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from tests.conftest import clean_env
from tests.integration.conftest import AMQP_URL, REDIS_URL
from tests.support.watch import free_port, scrape, watching

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.slow]


def test_queue_wait_of_real_tasks_comes_from_their_events(cli_argv: list[str]) -> None:
    from celery import Celery
    from celery.contrib.testing.worker import start_worker
    from kombu import Queue

    queue = f"celerydiag-test-events-{uuid.uuid4().hex[:8]}"
    app = Celery("events-test", broker=AMQP_URL, backend=REDIS_URL, set_as_current=False)
    app.conf.update(task_send_sent_event=True, worker_send_task_events=True, task_default_queue=queue,
                    task_queues=[Queue(queue, auto_delete=True, queue_arguments={"x-expires": 120_000})],
                    worker_hijack_root_logger=False)

    @app.task(name="events_test.noop", ignore_result=True)
    def noop() -> None:
        return None

    port = free_port()
    argv = [*cli_argv, "watch", "--broker", AMQP_URL, "--backend", REDIS_URL, "--interval", "1",
            "--timeout", "3", "--updates", "2", "--events", "--prometheus", f"127.0.0.1:{port}"]
    with watching(argv, env=clean_env()) as w:
        w.next_where(lambda d: d["canary"] == "ok", 90)
        with start_worker(app, pool="solo", concurrency=1, perform_ping_check=False, queues=[queue],
                          loglevel="ERROR", shutdown_timeout=10):
            time.sleep(1)  # the worker's consumer is up
            for _ in range(5):
                noop.apply_async()
            seen = w.next_where(lambda d: len(d["queue_wait_ms"]) > 0, 90)
        assert all(v >= 0 for v in seen["queue_wait_ms"])
        assert "celerydiag_task_queue_wait_seconds_count" in scrape(port)
        count = [line for line in scrape(port).splitlines()
                 if line.startswith("celerydiag_task_queue_wait_seconds_count")]
        assert float(count[0].rsplit(" ", 1)[1]) >= 1
        err, _ = w.stop(signal.SIGTERM)
        assert w.proc.returncode == 143, err
    app.close()
