"""Network: a worker paused long enough to miss heartbeats, and a consumer that stops reading.

Both reach RabbitMQ through tests.support.relay.Relay with no added delay, only so that their traffic
has a port of its own: tcpdump captures ``tcp port <relay>`` on lo (nobody else's traffic) during the
scenario, and the doctor analyses it with ``--pcap`` (the app's broker_url is the relay, so the probe
looks at that port).

- Missed heartbeats: ``broker_heartbeat = 2``; the worker is SIGSTOPped for 8 s, RabbitMQ hears
  nothing for more than two intervals and drops the connection. The printed fix raises the heartbeat
  (``broker_heartbeat = 30``); with it pasted the same pause is ridden out.
- Zero window: a worker (pool solo, so a running task blocks its event loop) with a deep prefetch
  (``worker_prefetch_multiplier = 32``, set for throughput) runs a blocking task while 60 tasks of
  40 KB each wait; RabbitMQ pushes up to the prefetch limit (about 1.3 MB) into a socket nobody
  reads, and the worker's TCP window closes. (With Celery's default of 4, the 160 KB fit the window
  on this machine: no zero window.) The printed fix is ``worker_prefetch_multiplier = 1``: one 40 KB
  message then fits the window.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
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
    tcpdump,
    top_cause,
    worker,
)
from tests.support.relay import Relay

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.capture,
              pytest.mark.scenario_slow]

PAUSE_S = 8.0
PAYLOAD_TASKS = 60
DEEP_PREFETCH = 32
PAYLOAD_BYTES = 40 * 1024
BLOCK_S = 6.0


def redis_results(redis_url: str, prefix: str) -> dict[str, Any]:
    return {"result_backend": redis_url, "result_backend_transport_options": {"global_keyprefix": prefix},
            **CAREFUL_REDIS}


def paused_worker_capture(config: Any, port: int, pcap: Path) -> None:
    with tcpdump(pcap, port), worker(config) as w:
        w.pause()
        try:
            time.sleep(PAUSE_S)
        finally:
            w.resume()
        time.sleep(3)  # it notices the dropped connection and reconnects


def stalled_consumer_capture(config: Any, port: int, pcap: Path) -> None:
    with tcpdump(pcap, port), worker(config):
        send(config, "scenario.block", config.stop_file, BLOCK_S)
        time.sleep(0.5)  # the block task is running: the worker's only thread no longer reads
        for _ in range(PAYLOAD_TASKS):
            send(config, "scenario.payload", "x" * PAYLOAD_BYTES)
        time.sleep(BLOCK_S + 2)  # the backlog is drained after the block ends


@pytest.mark.parametrize("case", ["missed-heartbeats", "zero-window"])
def test_network_fault_is_named_from_a_capture_and_the_fix_removes_it(
        case: str, amqp_url: str, redis_url: str, redis_prefix: str, user_config: Any, tmp_path: Path) -> None:
    fid = f"network.{case}"
    capture = paused_worker_capture if case == "missed-heartbeats" else stalled_consumer_capture
    with Relay("127.0.0.1", 5672, 0.0) as relay:
        url = amqp_url.replace(":5672/", f":{relay.port}/")
        assert url != amqp_url, "CELERYDIAG_TEST_AMQP must use port 5672 for this scenario"
        extra = ({"broker_heartbeat": 2} if case == "missed-heartbeats"
                 else {"worker_prefetch_multiplier": DEEP_PREFETCH})
        config = user_config(broker_url=url, **redis_results(redis_url, redis_prefix), **extra)
        capture(config, relay.port, tmp_path / "before.pcap")
        before = doctor(config, "--pcap", str(tmp_path / "before.pcap"))
        found = finding(before, fid)
        assert found and found["severity"] in ("warning", "critical"), ranked(before)
        assert found["evidence"].get("silent_side", found["evidence"].get("side")) == "client", found["evidence"]
        assert top_cause(before) == "network", ranked(before)

        config.paste(fix_config(found))
        os.unlink(config.stop_file)
        capture(config, relay.port, tmp_path / "after.pcap")
        after = doctor(config, "--pcap", str(tmp_path / "after.pcap"))
    record(f"network-{case}", "network", before, after, fid)
    fixed = finding(after, fid)
    assert fixed and (fixed["severity"] == "ok" or fixed["impact_ms"] < found["impact_ms"]), ranked(after)
