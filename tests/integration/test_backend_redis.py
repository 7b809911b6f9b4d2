"""The backend probe against real Redis: the shared local one, and one of the test's own (for the
eviction policy, which must not be changed on a server other tests use)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celerydiag.backend.probe import BackendProbe
from celerydiag.findings import Severity
from celerydiag.probe import Limits, ProbeContext, run_probe
from celerydiag.target import Target, TargetSource
from tests.support.redis_server import private_redis as start_private_redis

pytestmark = [pytest.mark.integration, pytest.mark.redis]

LIMITS = Limits(samples=200, max_seconds=6, timeout_s=3)


def target_for(url: str, **conf: Any) -> Target:
    from celery import Celery

    app = Celery("celerydiag-test-redis", broker="memory://", backend=url, set_as_current=False)
    app.conf.update(conf)
    return Target("memory://", url, TargetSource.APP, app, "tests")


def by_id(result: Any) -> dict[str, Any]:
    assert result.status.value == "ran", result
    return {f.id: f for f in result.findings}


def test_healthy_redis_no_warning_prefix_honoured_key_removed(redis_url: str) -> None:
    import redis

    prefix = f"cdtest_{uuid.uuid4().hex[:8]}"
    target = target_for(redis_url, result_backend_transport_options={"global_keyprefix": prefix})
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    watcher = client.pubsub()
    watcher.psubscribe(f"{prefix}_celery-task-meta-*")  # PUBLISH goes to the key's own name
    listener = client.pubsub()
    listener.subscribe(f"{prefix}_celery-task-meta-someone-waits")  # a client in result.get()
    scratch = f"celerydiag-{uuid.uuid4().hex[:8]}"
    try:
        result = run_probe(BackendProbe(), ProbeContext(target, limits=LIMITS, scratch=scratch))
        published = []
        for _ in range(50):
            message = watcher.get_message(timeout=0.1)
            if message and message["type"] == "pmessage":
                published.append(message["channel"].decode())
    finally:
        watcher.close()
        listener.close()
    findings = by_id(result)
    loud = [(f.id, f.title) for f in findings.values() if f.severity >= Severity.WARNING]
    assert not loud, loud
    write = findings["backend.write-latency"]
    assert write.evidence["samples"] >= 100
    assert 0 < write.evidence["write_ms"]["p50"] <= write.evidence["write_ms"]["p99"]
    assert findings["backend.read-latency"].evidence["samples"] >= 100
    assert published and set(published) == {f"{prefix}_celery-task-meta-{scratch}-backend-probe"}
    subs = findings["backend.result-subscribers"].evidence
    assert subs["channels_count"] >= 1 and subs["subscribers_count"] >= 1
    assert subs["pattern_subscriptions_count"] >= 1
    expires = findings["backend.result-expires"]
    assert expires.severity == Severity.OK and 86000 < expires.evidence["written_key_ttl_s"] <= 86400
    assert client.keys(f"{prefix}*") == [], "the probe left its key behind"
    client.close()


def test_result_keys_without_ttl_are_reported(redis_url: str) -> None:
    import redis

    prefix = f"cdtest_{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    stale = f"{prefix}_celery-task-meta-old-task"
    client.set(stale, b"{}")  # what result_expires=None leaves behind
    try:
        target = target_for(redis_url, result_expires=None,
                            result_backend_transport_options={"global_keyprefix": prefix})
        findings = by_id(run_probe(BackendProbe(), ProbeContext(target, limits=LIMITS)))
    finally:
        client.delete(stale)
    expires = findings["backend.result-expires"]
    assert expires.severity == Severity.INFO
    assert expires.evidence["result_expires_s"] is None and expires.evidence["written_key_ttl_s"] is None
    assert expires.evidence["keys_without_ttl_count"] == 1
    assert "result_expires = 86400" in expires.fix.config
    assert client.keys(f"{prefix}*") == []
    client.close()


@pytest.fixture
def evicting_redis() -> Iterator[str]:
    """A redis-server of our own on a free loopback port, with an LRU policy and a tiny maxmemory."""
    with start_private_redis("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru") as url:
        yield url


def test_evicting_policy_is_reported(evicting_redis: str) -> None:
    findings = by_id(run_probe(BackendProbe(), ProbeContext(target_for(evicting_redis), limits=LIMITS)))
    eviction = findings["backend.redis-eviction"]
    assert eviction.severity >= Severity.INFO
    assert "allkeys-lru" in eviction.title
    assert eviction.evidence["maxmemory_bytes"] == 64 * 1024 * 1024
    assert 0 < eviction.evidence["used_ratio"] < 1
    assert "noeviction" in eviction.fix.summary


def test_write_latency_on_a_slower_redis_is_its_own_not_a_queue_we_built(redis_url: str, scratch: str) -> None:
    """Through a relay adding 2 ms each way one store_result (GET, then MULTI..EXEC) costs ~8 ms.
    Sent on a fixed 2 ms schedule they would queue behind each other (P99 near a second for 200
    writes); paced by their measured cost, P99 stays near the cost of one write."""
    from contextlib import ExitStack

    from celerydiag.backend import redis as backend_redis
    from tests.support.relay import Relay

    host_db = redis_url.split("//", 1)[1]
    db = host_db.rsplit("/", 1)[1]
    with Relay("127.0.0.1", 6379, 0.002) as relay, ExitStack() as cleanup:
        target = target_for(f"redis://127.0.0.1:{relay.port}/{db}")
        facts = backend_redis.measure(target, scratch, cleanup, samples=200, seconds=10, timeout_s=5)
    assert facts.write.samples >= 50
    assert facts.write.p50_ms >= 6  # the relay's delay is really in the path
    assert facts.write.p99_ms < 250, facts.write  # a queue of our own making would be ~1000 ms
