"""Serialization: a task whose progress meta carries a multi-MB NumPy array.

Injected for real: a real worker runs ``scenario.progress`` with a 300,000-float array in every
PROGRESS meta (``arr.tolist()``, the usual way to make it JSON-serializable: about 6 MB of JSON per
update), stored in the Redis result backend under this run's own key prefix, where the doctor's
serialization probe reads it. The printed fix says to report progress, not data: its config (comments
and, when one is clearly faster, a serializer) is pasted, and the task is rerun reporting a summary.
"""

from __future__ import annotations

import os
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
    wait_for,
    worker,
)

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq, pytest.mark.redis]

FLOATS = 300_000
MB = 1024 * 1024


def stored_bytes(redis_url: str, prefix: str, task_id: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return int(client.strlen(f"{prefix}celery-task-meta-{task_id}"))
    finally:
        client.close()


def test_multi_mb_progress_meta_is_named_and_a_summary_meta_removes_it(
        amqp_url: str, redis_url: str, redis_prefix: str, user_config: Any) -> None:
    config = user_config(broker_url=amqp_url, result_backend=redis_url,
                         result_backend_transport_options={"global_keyprefix": redis_prefix}, **CAREFUL_REDIS)
    with worker(config):
        task_id = send(config, "scenario.progress", config.stop_file, 90.0, 1.0, FLOATS)
        size = wait_for(lambda: stored_bytes(redis_url, redis_prefix, task_id) > MB and
                        stored_bytes(redis_url, redis_prefix, task_id), 60, "the first multi-MB PROGRESS meta")
        before = doctor(config)
    stored = finding(before, "serialization.stored-meta")
    assert stored and stored["evidence"]["max_bytes"] >= size, (ranked(before), stored)
    assert top_cause(before) == "serialization", ranked(before)
    assert stored["severity"] in ("warning", "critical"), stored
    assert "not the data" in stored["fix"]["summary"], stored["fix"]

    config.paste(fix_config(stored))  # comments, plus a serializer when one measured clearly faster
    os.unlink(config.stop_file)
    with worker(config):
        task_id = send(config, "scenario.progress", config.stop_file, 90.0, 1.0, 0)  # progress, not data
        wait_for(lambda: stored_bytes(redis_url, redis_prefix, task_id), 60, "the first PROGRESS meta")
        after = doctor(config)
    # Any serialization finding counts: with msgpack pasted, the metas stored as JSON before the switch
    # no longer decode (the fix's own caveat), and the probe may fall back to its standard payloads.
    ids = [f["id"] for f in after["findings"] if f["cause"] == "serialization"]
    record("serialization", "serialization", before, after, ids[0] if ids else None)
    worst = max((f["impact_ms"] for f in after["findings"] if f["cause"] == "serialization"), default=0.0)
    assert ids and worst < stored["impact_ms"] / 10, ranked(after, 20)
    assert top_cause(after) != "serialization", ranked(after)
