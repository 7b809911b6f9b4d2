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
from celerydiag.measure import Budget, StopRule, Summary, ms, schedule, summarize

WRITE_INTERVAL_S = 0.002
MAX_WRITES = 500
KEY_SAMPLE = 500  # result keys whose TTL we look at, at most
SCAN_CALLS = 20  # SCAN round trips, at most (COUNT 100 each)
WARMUPS = 3  # untimed calls that set the schedule's pace (through a 40 ms path each costs 80-160 ms)
TAIL_ROUND_TRIPS = 10  # what the read-only checks after the writes and reads cost, in round trips
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
    connect_s: float = 0.0  # the first write, connect included
    round_trip_ms: float = 0.0  # one PING


def expires_seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    value = float(value)
    return value if value > 0 else None


def measure(target: Any, scratch: str, cleanup: Any, samples: int, seconds: float, timeout_s: float,
            stop: threading.Event | None = None, on_step: Any = None, budget: Budget | None = None,
            enough: StopRule | None = None) -> RedisFacts:
    """Celery's own writes then reads on our key, then the read-only facts, within ``budget``
    (``seconds`` from now when none is given): the writes and the reads each get half of what is
    left once the read-only checks' round trips are set aside, each call starts only while it
    still fits, and every socket timeout is what is left (never more than ``timeout_s``). With
    ``enough``, the writes and the reads each stop as soon as it says their percentiles are
    pinned down (measure.StopRule), else at ``samples``."""
    budget = budget or Budget.within(seconds, timeout_s)
    app = redis_backend_app(target, budget.call_timeout(timeout_s))
    backend = app.backend
    client = backend.client
    task_id = f"{scratch}-backend-probe"
    key = backend.get_key_for_task(task_id).decode()
    cleanup.callback(quietly, client.delete, key)  # before the first write
    cleanup.callback(quietly, client.close)
    step = on_step or (lambda: None)
    count = min(samples, MAX_WRITES)

    def write(seq: int) -> None:
        backend.store_result(task_id, {"current": seq, "total": count}, "PROGRESS")

    def read(seq: int) -> None:
        backend.get_task_meta(task_id)

    started = _now()
    write(-1)  # connects: not a write's cost
    rtt = max(0.0001, client_round_trip(client))
    facts = RedisFacts(summarize([]), summarize([]), expires_seconds(backend.expires))
    facts.connect_s = _now() - started
    facts.round_trip_ms = rtt * 1000
    tail = TAIL_ROUND_TRIPS * rtt  # TTL, EXPIRE, INFO, PUBSUB x3, a few SCANs
    writes = _paced(write, count, (budget.left() - tail) / 2, budget, stop, step, enough)
    reads = _paced(read, count, budget.left() - tail, budget, stop, step, enough)
    facts.write, facts.read = summarize(writes), summarize(reads)
    if not budget.fits(2 * rtt):
        facts.notes.append("no time left for the key TTL, eviction and subscriber checks (--max-seconds)")
        if budget.fits(rtt):
            client.expire(key, OUR_KEY_TTL_S)
        return facts
    ttl = client.ttl(key)
    facts.our_ttl_s = int(ttl) if ttl is not None and ttl >= 0 else None
    client.expire(key, OUR_KEY_TTL_S)
    if budget.fits(2 * rtt):
        _memory(client, facts)
    prefix = key[: -len(task_id)]  # "<global_keyprefix>celery-task-meta-"
    if budget.fits(4 * rtt):
        _subscribers(client, prefix, facts)
    _ttls(client, prefix, key, facts, budget, rtt)
    return facts


def client_round_trip(client: Any) -> float:
    """One PING, timed: what every later call is expected to cost at least."""
    started = _now()
    client.ping()
    return _now() - started


def _paced(op: Any, count: int, seconds: float, budget: Budget, stop: threading.Event | None,
           step: Any, enough: StopRule | None = None) -> list[float]:
    """Up to ``count`` calls of ``op`` on a fixed schedule paced by its measured cost (a remote
    Redis's 4 ms writes on a 2 ms schedule would queue behind each other and read as a P99 of a
    second), each timed from its intended send time, for at most ``seconds``; a call starts only
    while one more (as long as the slowest so far) still ends before the deadline."""
    out: list[float] = []
    if seconds <= 0:
        return out
    warm: list[float] = []
    for i in range(WARMUPS):
        if not budget.fits(max(warm, default=0.0)):
            return out
        t0 = _now()
        op(-1 - i)
        warm.append(_now() - t0)
    interval = max(WRITE_INTERVAL_S, 2 * sorted(warm)[len(warm) // 2])
    slowest = max(warm)
    for intended in schedule(count, interval, seconds):
        if (stop is not None and stop.is_set()) or not budget.fits(slowest):
            break
        t0 = _now()
        op(len(out))
        done = _now()
        out.append(ms(done - intended))
        slowest = max(slowest, done - t0)
        step()
        if enough is not None and enough.met(out):
            break
    return out


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


def _ttls(client: Any, prefix: str, ours: str, facts: RedisFacts, budget: Budget | None = None,
          rtt: float = 0.0) -> None:
    """TTLs of a bounded sample of existing result keys (SCAN, never KEYS), as many SCAN calls
    as the budget leaves time for (each one round trip, the TTL pipeline one more)."""
    cursor, keys = 0, []
    room = (lambda n: budget.fits(n * rtt)) if budget is not None else (lambda n: True)
    try:
        for _ in range(SCAN_CALLS):
            if not room(3):
                facts.notes.append("result key TTLs sampled from fewer SCAN calls: --max-seconds ran out")
                break
            cursor, batch = client.scan(cursor, match=f"{prefix}*", count=100)
            keys += [k for k in batch if (k.decode() if isinstance(k, bytes) else k) != ours]
            if not cursor or len(keys) >= KEY_SAMPLE:
                break
        keys = keys[:KEY_SAMPLE]
        if keys and room(1):
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.ttl(k)
            ttls = pipe.execute()
            facts.keys_sampled_count = len(keys)
            facts.keys_without_ttl_count = sum(1 for t in ttls if t == -1)
    except Exception as exc:
        facts.notes.append(f"SCAN refused ({type(exc).__name__}): result key TTLs not sampled")
