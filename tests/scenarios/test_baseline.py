"""The healthy baseline: RabbitMQ broker, Redis results, a real worker reporting small progress.

A careful user's app: the config probe's Redis fix (config.redis-socket-timeout: bounded socket
waits, a health check on idle connections, and result_backend_always_retry with a finite
result_backend_max_retries, so a store on a stalled connection is retried on a new one and a Redis
that stays away ends in BackendStoreError, not a task blocked for ever) is already applied, as
CAREFUL_REDIS. With that, the doctor must report nothing at warning or above: every such finding
here is a false positive.
"""

from __future__ import annotations

from typing import Any

import pytest

from celerydiag.config.paste import parse
from celerydiag.config.probe import ConfigProbe
from celerydiag.findings import Severity
from celerydiag.probe import ProbeContext, run_probe
from celerydiag.target import resolve_target
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


def test_the_careful_redis_settings_are_the_config_probes_current_fix() -> None:
    """CAREFUL_REDIS is what config.redis-socket-timeout prints on a default Redis backend, and
    with it applied that check passes and says the store is retried on a new connection."""
    target = resolve_target(broker="memory://", backend="redis://127.0.0.1:6379/15", environ={})
    found = {f.id: f for f in run_probe(ConfigProbe(), ProbeContext(target)).findings}
    fix = found["config.redis-socket-timeout"].fix
    assert fix is not None and parse(fix.config).settings == CAREFUL_REDIS
    target.app.conf.update(CAREFUL_REDIS)
    careful = {f.id: f for f in run_probe(ConfigProbe(), ProbeContext(target)).findings}
    ok = careful["config.redis-socket-timeout"]
    assert ok.severity == Severity.OK and "Celery retries it on a new connection" in ok.detail, ok
