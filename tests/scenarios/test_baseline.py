"""The healthy baseline: RabbitMQ broker, Redis results, a real worker reporting small progress.

A careful user's app: the config probe's Redis timeout advice (config.redis-socket-timeout is a
warning on every default Redis backend) is already applied, as CAREFUL_REDIS. With that, the doctor
must report nothing at warning or above: every such finding here is a false positive.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.scenarios.harness import CAREFUL_REDIS, at_or_above_warning, doctor, ranked, record, send, worker

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.redis]


def test_healthy_system_has_nothing_at_warning(amqp_url: str, redis_url: str, redis_prefix: str,
                                               user_config: Any) -> None:
    config = user_config(broker_url=amqp_url, result_backend=redis_url,
                         result_backend_transport_options={"global_keyprefix": redis_prefix}, **CAREFUL_REDIS)
    with worker(config):
        send(config, "scenario.progress", config.stop_file, 60.0, 0.2)
        report = doctor(config)
    record("baseline", "none", report)
    assert not at_or_above_warning(report), f"false positives on a healthy system: {ranked(report)}"
    ran = {p["name"] for p in report["probes"] if p["status"] == "ran"}
    assert {"config", "broker", "backend", "serialization", "polling", "e2e"} <= ran, report["probes"]
