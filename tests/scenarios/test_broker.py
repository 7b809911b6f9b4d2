"""Broker: rpc:// results with publisher confirms over a slow broker path.

Injected for real: tests.support.relay.Relay holds every chunk 100 ms each way in front of the real
RabbitMQ, and the user's app (worker, client and the doctor alike) reaches the broker through it,
with ``result_backend = 'rpc://'`` and ``broker_transport_options = {'confirm_publish': True}``:
every update_state() is a confirmed publish through the slow path. The printed fix (keep confirms,
move task states off the broker: ``result_backend = 'redis://REDIS-HOST:6379/0'``) is pasted with
the host filled in, and the broker's impact must shrink (the task message still crosses the slow
path, but states no longer do).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.scenarios.harness import (
    CAREFUL_REDIS,
    doctor,
    finding,
    fix_config,
    ranked,
    record,
    send,
    top_cause,
    top_finding,
    worker,
)
from tests.support.relay import Relay

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.scenario_slow]

DELAY_S = 0.100  # each way: +200 ms per request/reply on the broker path


def test_rpc_confirms_over_slow_broker_is_named_and_redis_results_shrink_it(
        amqp_url: str, redis_url: str, redis_prefix: str, user_config: Any) -> None:
    with Relay("127.0.0.1", 5672, DELAY_S) as relay:
        slow = amqp_url.replace(":5672/", f":{relay.port}/")
        assert slow != amqp_url, "CELERYDIAG_TEST_AMQP must use port 5672 for this scenario"
        config = user_config(broker_url=slow, result_backend="rpc://",
                             broker_transport_options={"confirm_publish": True})
        with worker(config):
            send(config, "scenario.progress", config.stop_file, 90.0, 0.2)
            before = doctor(config)
        top = top_finding(before)
        assert top_cause(before) == "broker", ranked(before)
        assert top and top["severity"] in ("warning", "critical") and top["impact_ms"] >= 2 * DELAY_S * 1000, top
        latency = finding(before, "broker.publish-latency")
        assert latency and latency["evidence"]["state_path"] == "every-update", latency
        paste = fix_config(top)
        assert "result_backend" in paste and "REDIS-HOST" in paste, top["fix"]

        # The fix, as a user applies it: their Redis host in place of the placeholder; plus the Redis
        # settings a careful user has anyway, and a key prefix of this run's own.
        config.paste(paste.replace("REDIS-HOST", "127.0.0.1"))
        config.paste(f"result_backend_transport_options = {{'global_keyprefix': {redis_prefix!r}}}\n"
                     + "".join(f"{k} = {v!r}\n" for k, v in CAREFUL_REDIS.items()))
        import os

        os.unlink(config.stop_file)
        with worker(config):
            send(config, "scenario.progress", config.stop_file, 90.0, 0.2)
            after = doctor(config)
    record("broker", "broker", before, after, "broker.publish-latency")
    fixed = finding(after, "broker.publish-latency")
    assert fixed and fixed["evidence"]["state_path"] == "dispatch-only", fixed
    assert fixed["impact_ms"] < latency["impact_ms"], (ranked(before), ranked(after))
