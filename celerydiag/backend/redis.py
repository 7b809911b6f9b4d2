"""The Redis result backend: what one update_state and one client read cost, and what can lose a state.

Writes go through Celery's own ``RedisBackend.store_result`` (GET of the old meta, then
MULTI/SETEX/PUBLISH/EXEC: reference A.1) on a task id of our own, on a fixed schedule timed from
the intended send time, so a stall shows up in every later sample instead of hiding. The key
name comes from Celery too, so ``global_keyprefix`` is honoured. The key is deleted at the end
(its delete is registered before the first write) and expires by itself within minutes anyway.
The rest is read-only: subscribers on result channels, the eviction policy, TTLs of result keys.
"""

from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass, field
from typing import Any

from celerydiag.access.app import redis_backend_app
from celerydiag.errors import quietly
from celerydiag.measure import Summary, interval_for, ms, schedule, summarize

WRITE_INTERVAL_S = 0.002
MAX_WRITES = 500
KEY_SAMPLE = 500  # result keys whose TTL we look at, at most
SCAN_CALLS = 20  # SCAN round trips, at most (COUNT 100 each)
OUR_KEY_TTL_S = 600  # our own key outlives no run by more than this, even if cleanup cannot run
EVICTING = ("allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu",
            "volatile-random", "volatile-ttl")


@dataclass
class RedisFacts:
    write: Summary
    read: Summary
    expires_s: float | None  # result_expires as Celery applies it (None: keys never expire)
    our_ttl_s: int | None = None
    maxmemory_bytes: int = 0
    used_memory_bytes: int = 0
    policy: str = ""
    channels_count: int = 0
    subscribers_count: int = 0
    pattern_subscriptions_count: int = 0
    keys_sampled_count: int = 0
    keys_without_ttl_count: int = 0
    notes: list[str] = field(default_factory=list)


def expires_seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    value = float(value)
    return value if value > 0 else None


def measure(target: Any, scratch: str, cleanup: Any, samples: int, seconds: float, timeout_s: float,
            stop: threading.Event | None = None, on_step: Any = None) -> RedisFacts:
    app = redis_backend_app(target, timeout_s)
    backend = app.backend
    client = backend.client
    task_id = f"{scratch}-backend-probe"
    key = backend.get_key_for_task(task_id).decode()
    cleanup.callback(quietly, client.delete, key)  # before the first write
    cleanup.callback(quietly, client.close)
    step = on_step or (lambda: None)

    writes: list[float] = []
    reads: list[float] = []
    count = min(samples, MAX_WRITES)

    def write(seq: int) -> None:
        backend.store_result(task_id, {"current": seq, "total": count}, "PROGRESS")

    # Paced by the measured cost, not a fixed 2 ms: a remote Redis's 4 ms writes on a 2 ms
    # schedule would queue behind each other and read as a P99 of a second.
    for intended in schedule(count, interval_for(write, WRITE_INTERVAL_S), seconds):
        if stop is not None and stop.is_set():
            break
        write(len(writes))
        writes.append(ms(_now() - intended))
        step()
    read_interval = interval_for(lambda seq: backend.get_task_meta(task_id), WRITE_INTERVAL_S)
    for intended in schedule(count, read_interval, seconds):
        if stop is not None and stop.is_set():
            break
        backend.get_task_meta(task_id)
        reads.append(ms(_now() - intended))
        step()

    facts = RedisFacts(summarize(writes), summarize(reads), expires_seconds(backend.expires))
    ttl = client.ttl(key)
    facts.our_ttl_s = int(ttl) if ttl is not None and ttl >= 0 else None
    client.expire(key, OUR_KEY_TTL_S)
    _memory(client, facts)
    prefix = key[: -len(task_id)]  # "<global_keyprefix>celery-task-meta-"
    _subscribers(client, prefix, facts)
    _ttls(client, prefix, key, facts)
    return facts


def _now() -> float:
    import time

    return time.perf_counter()


def _memory(client: Any, facts: RedisFacts) -> None:
    try:
        info = client.info("memory")
    except Exception as exc:  # managed Redis may rename INFO; we still have the latencies
        facts.notes.append(f"INFO memory refused ({type(exc).__name__}): eviction policy not checked")
        return
    facts.maxmemory_bytes = int(info.get("maxmemory") or 0)
    facts.used_memory_bytes = int(info.get("used_memory") or 0)
    facts.policy = str(info.get("maxmemory_policy") or "")


def _subscribers(client: Any, prefix: str, facts: RedisFacts) -> None:
    try:
        channels = client.pubsub_channels(f"{prefix}*")
        facts.channels_count = len(channels)
        if channels:
            facts.subscribers_count = sum(n for _, n in client.pubsub_numsub(*channels[:1000]))
        facts.pattern_subscriptions_count = int(client.pubsub_numpat())
    except Exception as exc:
        facts.notes.append(f"PUBSUB refused ({type(exc).__name__}): result subscribers not counted")


def _ttls(client: Any, prefix: str, ours: str, facts: RedisFacts) -> None:
    """TTLs of a bounded sample of existing result keys (SCAN, never KEYS)."""
    cursor, keys = 0, []
    try:
        for _ in range(SCAN_CALLS):
            cursor, batch = client.scan(cursor, match=f"{prefix}*", count=100)
            keys += [k for k in batch if (k.decode() if isinstance(k, bytes) else k) != ours]
            if not cursor or len(keys) >= KEY_SAMPLE:
                break
        keys = keys[:KEY_SAMPLE]
        if keys:
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.ttl(k)
            ttls = pipe.execute()
            facts.keys_sampled_count = len(keys)
            facts.keys_without_ttl_count = sum(1 for t in ttls if t == -1)
    except Exception as exc:
        facts.notes.append(f"SCAN refused ({type(exc).__name__}): result key TTLs not sampled")

