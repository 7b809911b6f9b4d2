"""Redis-broker measurements with redis-py, the client kombu's Redis transport uses.

kombu publishes a task with LPUSH and an idle worker waits in BRPOP, so the dispatch round trip
is "LPUSH returns" (what ``apply_async`` waits for: Redis has no publisher confirms, each LPUSH is
already a request and its reply) and "the BRPOP waiting on another connection gets it" (when the
worker could start). We reproduce exactly that on one key of our own, deleted afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celerydiag.broker.amqp import body, seq_of
from celerydiag.measure import ms, schedule

PRIORITY_STEPS = (0, 3, 6, 9)  # kombu.transport.redis.PRIORITY_STEPS
PRIORITY_SEP = "\x06\x16"  # kombu.transport.redis.Channel.sep
BRPOP_WAIT_S = 1  # the consumer thread looks at its stop flag this often


def client(target: Any, timeout_s: float, name: str | None = None) -> Any:
    """A redis-py client for the broker URL, with the app's TLS settings and our timeouts. The
    name (CLIENT SETNAME) lets an operator, and our tests, see which connections are ours."""
    import redis

    extra: dict[str, Any] = {}
    ssl = target.conf.broker_use_ssl
    if target.broker_scheme == "rediss" and isinstance(ssl, dict):
        extra.update({k: v for k, v in ssl.items() if k.startswith("ssl_")})
    if name:
        extra["client_name"] = name
    return redis.Redis.from_url(target.broker_url, socket_timeout=timeout_s,
                                socket_connect_timeout=timeout_s, **extra)


def queue_keys(name: str, options: dict[str, Any]) -> list[str]:
    """Every list kombu may hold a queue's messages in: one per priority step, with the
    transport's ``global_keyprefix``. Counting only the bare name under-reports the backlog."""
    prefix = str(options.get("global_keyprefix") or "")
    sep = str(options.get("sep") or PRIORITY_SEP)
    steps = options.get("priority_steps") or PRIORITY_STEPS
    keys = []
    for step in sorted(set(steps)):
        key = f"{name}{sep}{step}" if step else name
        keys.append(prefix + key)
    return keys


def backlog(redis_client: Any, names: Iterable[str], options: dict[str, Any]) -> dict[str, int]:
    """LLEN over each queue's keys: read-only, one pipeline round trip."""
    names = list(names)
    pipe = redis_client.pipeline(transaction=False)
    plan = [(name, queue_keys(name, options)) for name in names]
    for _, keys in plan:
        for key in keys:
            pipe.llen(key)
    counts = iter(pipe.execute())
    return {name: sum(int(next(counts)) for _ in keys) for name, keys in plan}


@dataclass(frozen=True)
class RoundTrips:
    publish_ms: list[float]
    roundtrip_ms: list[float]
    interval_s: float


class _Waiter(threading.Thread):
    """The idle worker: BRPOP on our key from its own connection, noting when each message lands."""

    def __init__(self, redis_client: Any, key: str) -> None:
        super().__init__(daemon=True, name="celerydiag-brpop")
        self.client = redis_client
        self.key = key
        self.arrived: dict[int, float] = {}
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                item = self.client.brpop([self.key], timeout=BRPOP_WAIT_S)
                if item is None:
                    continue
                now = time.perf_counter()
                with self.cond:
                    self.arrived[seq_of(item[1])] = now
                    self.cond.notify_all()
        except BaseException as exc:  # reported to the main thread, never lost
            self.error = exc
            with self.cond:
                self.cond.notify_all()

    def wait_for(self, seq: int, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while seq not in self.arrived:
                if self.error is not None:
                    raise self.error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"message {seq} not received by BRPOP within {timeout_s:g} s")
                self.cond.wait(left)
            return self.arrived.pop(seq)


def round_trips(publisher: Any, consumer: Any, key: str, count: int, deadline_s: float,
                timeout_s: float, step: Callable[[], None], min_interval_s: float = 0.002) -> RoundTrips:
    """LPUSH on a fixed schedule from one connection, BRPOP already waiting on another.
    Both latencies count from the intended send time."""
    waiter = _Waiter(consumer, key)
    waiter.start()
    try:
        took = []
        for i in range(5):  # warm-up, also sizes the interval at twice the median round trip
            started = time.perf_counter()
            publisher.lpush(key, body(-1 - i))
            waiter.wait_for(-1 - i, timeout_s)
            took.append(time.perf_counter() - started)
        interval = max(min_interval_s, 2 * sorted(took)[len(took) // 2])
        pushed, received = [], []
        for seq, intended in enumerate(schedule(count, interval, deadline_s)):
            publisher.lpush(key, body(seq))
            pushed.append(ms(time.perf_counter() - intended))
            received.append(ms(waiter.wait_for(seq, timeout_s) - intended))
            step()
        return RoundTrips(pushed, received, interval)
    finally:
        waiter.stop.set()
        waiter.join(BRPOP_WAIT_S + timeout_s)


@dataclass(frozen=True)
class ServerFacts:
    used_memory_bytes: int
    maxmemory_bytes: int
    maxmemory_policy: str
    evicted_keys_count: int
    blocked_clients_count: int
    connected_clients_count: int
    version: str

    @classmethod
    def read(cls, redis_client: Any) -> ServerFacts:
        info = redis_client.info()
        return cls(
            used_memory_bytes=int(info.get("used_memory", 0)),
            maxmemory_bytes=int(info.get("maxmemory", 0)),
            maxmemory_policy=str(info.get("maxmemory_policy", "")),
            evicted_keys_count=int(info.get("evicted_keys", 0)),
            blocked_clients_count=int(info.get("blocked_clients", 0)),
            connected_clients_count=int(info.get("connected_clients", 0)),
            version=str(info.get("redis_version", "")),
        )
