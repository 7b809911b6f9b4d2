"""The broker probe against the real local Redis: LPUSH/BRPOP round trip, INFO facts, backlog
across priority sub-queues and global_keyprefix, and nothing of ours left behind (keys, client
connections, threads), also after Ctrl-C. Plus the test relay itself, which other tests reuse."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import pytest

from celerydiag.broker.probe import BrokerProbe
from celerydiag.findings import ProbeResult, ProbeStatus, Severity
from celerydiag.probe import Limits, ProbeContext, run_probe
from celerydiag.target import resolve_target

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from tests.conftest import check_finding_document  # noqa: E402
from tests.support.relay import Relay  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)


def probe(url: str, scratch: str, samples: int = 50, progress: Any = None, **conf: Any) -> ProbeResult:
    target = resolve_target(broker=url, backend=url)
    for key, value in conf.items():
        setattr(target.conf, key, value)
    ctx = ProbeContext(target=target, limits=Limits(samples=samples, max_seconds=20, timeout_s=3), scratch=scratch)
    if progress is not None:
        ctx.progress = progress
    return run_probe(BrokerProbe(), ctx)


def by_id(result: ProbeResult) -> dict[str, Any]:
    assert result.status == ProbeStatus.RAN, result.reason
    for f in result.findings:
        check_finding_document(f.to_dict(), f.id)
    return {f.id: f for f in result.findings}


def leftovers(url: str, scratch: str) -> dict[str, Any]:
    client = redis_client(url)
    try:
        keys = list(client.scan_iter(match=f"{scratch}*", count=1000))
        ours = [c for c in client.client_list() if c.get("name") == scratch]
    finally:
        client.close()
    threads = [t.name for t in threading.enumerate() if t.name == "celerydiag-brpop" and t.is_alive()]
    return {"keys": keys, "connections": ours, "threads": threads}


NOTHING = {"keys": [], "connections": [], "threads": []}


def test_round_trip_and_info(redis_url: str, scratch: str) -> None:
    found = by_id(probe(redis_url, scratch, samples=80))
    main = found["broker.publish-latency"]
    ev = main.evidence
    assert ev["samples"] == 80
    for key in ("publish_ms", "roundtrip_ms", "redis_rtt_ms"):
        assert 0 < ev[key]["p50"] <= ev[key]["p99"] <= ev[key]["max"], (key, ev[key])
    assert "confirm_ms" not in ev, "Redis has no publisher confirms; we must not invent a number"
    assert ev["state_path"] == "dispatch-only" and "PENDING→STARTED" in main.title
    assert main.impact_ms == pytest.approx(ev["roundtrip_ms"]["p99"], abs=0.01)
    memory = found["broker.redis-memory"]
    client = redis_client(redis_url)
    try:
        policy = client.config_get("maxmemory-policy")["maxmemory-policy"]
        maxmemory = int(client.config_get("maxmemory")["maxmemory"])
    finally:
        client.close()
    assert memory.evidence["maxmemory_policy"] == policy
    assert memory.evidence["maxmemory_bytes"] == maxmemory
    assert memory.evidence["used_memory_bytes"] > 0
    expected = Severity.OK if maxmemory == 0 or policy == "noeviction" else Severity.INFO
    assert memory.severity >= expected
    assert leftovers(redis_url, scratch) == NOTHING


def test_backlog_counts_priority_subqueues_under_the_key_prefix(redis_url: str, scratch: str) -> None:
    prefix = f"{scratch}:"
    client = redis_client(redis_url)
    keys = [f"{prefix}tasks", f"{prefix}tasks\x06\x163", f"{prefix}tasks\x06\x169"]
    try:
        client.lpush(keys[0], b"a", b"b", b"c")
        client.lpush(keys[1], b"d", b"e")
        client.lpush(keys[2], b"f")
        found = by_id(probe(redis_url, scratch, samples=10, task_default_queue="tasks",
                            broker_transport_options={"global_keyprefix": prefix}))
        backlog = found["broker.backlog"]
        assert backlog.evidence["queues"]["tasks"] == {"messages_count": 6, "messages_at_start_count": 6}
        assert backlog.severity == Severity.INFO  # waiting tasks; consumers are unknowable on Redis
        assert [client.llen(k) for k in keys] == [3, 2, 1], "the backlog must be read, never consumed"
    finally:
        client.delete(*keys)
        client.close()
    assert leftovers(redis_url, scratch) == NOTHING


class _Interrupt:
    def __init__(self, after: int) -> None:
        self.after, self.steps = after, 0

    def start(self, name: str, total: float | None = None) -> None: ...
    def done(self) -> None: ...
    def close(self) -> None: ...

    def step(self, advance: float = 1, description: str | None = None) -> None:
        self.steps += advance
        if self.steps >= self.after:
            raise KeyboardInterrupt


def test_ctrl_c_mid_round_trips_leaves_nothing(redis_url: str, scratch: str) -> None:
    with pytest.raises(KeyboardInterrupt):
        probe(redis_url, scratch, samples=200, progress=_Interrupt(after=40))
    deadline = time.monotonic() + 5  # the BRPOP thread notices its stop flag within 1 s
    while leftovers(redis_url, scratch) != NOTHING and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(redis_url, scratch) == NOTHING


def test_relay_adds_its_delay_each_way(redis_url: str) -> None:
    """tests/support/relay.py: d per direction, so 2d per request/reply (others rely on this)."""

    def ping_p50(port: int) -> float:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=3)
        try:
            client.ping()
            took = []
            for _ in range(15):
                started = time.perf_counter()
                client.ping()
                took.append(time.perf_counter() - started)
        finally:
            client.close()
        return sorted(took)[len(took) // 2]

    base = ping_p50(6379)
    with Relay("127.0.0.1", 6379, 0.025) as relay:
        slow = ping_p50(relay.port)
        assert relay.connections == 1
    assert 0.045 <= slow - base <= 0.055
