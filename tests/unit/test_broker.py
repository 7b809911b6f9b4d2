"""Pure parts of the broker probe, no services: fixes are pasteable real settings, queue names and
Redis keys are the ones kombu uses, the blocked reason is decoded from a real py-amqp frame, and the
findings built from numbers say the right thing."""

from __future__ import annotations

import ast
import struct

import pytest
from celery import Celery
from celery.app.defaults import SETTING_KEYS
from kombu import Queue

from celerydiag.broker import amqp as broker_amqp
from celerydiag.broker import api as broker_api
from celerydiag.broker import probe as broker
from celerydiag.broker import redis as broker_redis
from celerydiag.findings import Severity
from celerydiag.probe import ProbeContext
from celerydiag.rank import rated  # probes leave a delay's severity to the ranking stage
from celerydiag.target import Target, TargetSource


def target(broker_url: str = "amqp://guest:guest@127.0.0.1//", backend: str = "redis://h/0", **conf: object) -> Target:
    app = Celery("t", broker=broker_url, backend=backend, set_as_current=False)
    for key, value in conf.items():
        setattr(app.conf, key, value)
    return Target(broker_url, backend, TargetSource.FLAGS, app)


@pytest.mark.parametrize("name", [n for n in dir(broker) if n.startswith("FIX_")])
def test_every_fix_compiles_and_assigns_real_settings(name: str) -> None:
    source = getattr(broker, name)
    tree = ast.parse(source)
    assigned = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]
    assert assigned, f"{name} assigns nothing"
    assert set(assigned) <= SETTING_KEYS, set(assigned) - SETTING_KEYS


def test_confirm_fix_keeps_the_users_transport_options_and_no_secret() -> None:
    t = target(broker_transport_options={"visibility_timeout": 60, "password": "hunter2-x",
                                         "confirm_delivery": True})
    text = broker.fix_confirm_on(t)
    namespace: dict[str, object] = {}
    exec(text, namespace)  # noqa: S102 - we generated it
    assert namespace["broker_transport_options"] == {"visibility_timeout": 60, "confirm_publish": True}
    assert "hunter2-x" not in text and "confirm_delivery" not in text
    assert set(namespace) - {"__builtins__"} <= SETTING_KEYS


@pytest.mark.parametrize(("url", "skipped"), [
    ("memory://", True), ("sqs://", True), ("amqp://h//", False), ("pyamqp://h//", False),
    ("amqps://h//", False), ("redis://h/0", False), ("rediss://h/0", False),
])
def test_applies(url: str, skipped: bool) -> None:
    reason = broker.BrokerProbe().applies(ProbeContext(target(url)))
    assert bool(reason) is skipped
    if url == "memory://":
        assert "memory://" in reason


def test_app_queues_follow_task_queues_and_routes() -> None:
    assert broker.app_queues(target().conf) == ["celery"]
    conf = target(task_queues=[Queue("fast"), Queue("slow")],
                  task_routes={"a.b": {"queue": "reports"}, "c.d": {"queue": "fast"}, "e.*": "x"}).conf
    assert broker.app_queues(conf) == ["fast", "slow", "reports"]
    assert broker.app_queues(target(task_default_queue="jobs").conf) == ["jobs"]


@pytest.mark.parametrize(("mode", "persistent"), [(2, True), ("persistent", True), (1, False), ("transient", False)])
def test_delivery_mode(mode: object, persistent: bool) -> None:
    assert broker.is_persistent(target(task_default_delivery_mode=mode).conf) is persistent


def test_redis_queue_keys_match_kombu() -> None:
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    assert tuple(PRIORITY_STEPS) == broker_redis.PRIORITY_STEPS and Channel.sep == broker_redis.PRIORITY_SEP
    assert broker_redis.queue_keys("celery", {}) == ["celery", "celery\x06\x163", "celery\x06\x166",
                                                     "celery\x06\x169"]
    assert broker_redis.queue_keys("q", {"global_keyprefix": "p:", "priority_steps": [0, 5]}) == ["p:q", "p:q\x06\x165"]


@pytest.mark.parametrize("seq", [0, 7, 499, -1, -1000])
def test_message_body_round_trips_its_sequence(seq: int) -> None:
    payload = broker_amqp.body(seq)
    assert len(payload) == broker_amqp.BODY_BYTES
    assert broker_amqp.seq_of(payload) == seq
    assert broker_amqp.seq_of(payload.decode()) == seq


def test_blocked_reason_is_decoded_from_a_real_frame() -> None:
    """py-amqp alone reports "connection blocked, see broker logs"; the frame says why."""
    import amqp
    from amqp import spec

    raw = amqp.Connection(host="127.0.0.1:1")  # never connected: only its method table is used
    watch = broker_amqp.BlockedWatch()
    broker_amqp.decode_blocked_reason(raw, watch)
    reason = b"low on memory"
    payload = struct.pack(">HHB", *spec.Connection.Blocked, len(reason)) + reason
    raw.dispatch_method(spec.Connection.Blocked, payload, None)
    assert watch.blocked and watch.reason == "low on memory"
    raw.dispatch_method(spec.Connection.Unblocked, struct.pack(">HH", *spec.Connection.Unblocked), None)
    assert not watch.blocked and watch.ever_blocked


class Rate:
    def __init__(self, deliver_per_s: float | None) -> None:
        self.deliver_per_s = deliver_per_s


def test_backlog_findings() -> None:
    t = target()
    idle = rated(next(broker.backlog_findings({"celery": (12, 0), "other": (None, 0)}, {}, 1000, t)), 1000)
    assert idle.severity == Severity.CRITICAL and "celery (12 messages)" in idle.title
    assert idle.evidence["queues"]["other"] == {"declared": False}
    busy = rated(next(broker.backlog_findings({"celery": (300, 4)}, {"celery": Rate(100.0)}, 1000, t)), 1000)
    assert busy.impact_ms == pytest.approx(3000) and busy.severity == Severity.CRITICAL
    assert busy.evidence["queues"]["celery"]["deliver_interval_ms"] == 10.0
    unknown = rated(next(broker.backlog_findings({"celery": (5, -1)}, {}, 1000, t)), 1000)
    assert unknown.severity == Severity.INFO and "consumers_count" not in unknown.evidence["queues"]["celery"]
    ok = rated(next(broker.backlog_findings({"celery": (0, 2)}, {}, 1000, t)), 1000)
    assert ok.severity == Severity.OK


def facts(**kw: object) -> broker_redis.ServerFacts:
    base = {"used_memory_bytes": 1000, "maxmemory_bytes": 0, "maxmemory_policy": "noeviction",
            "evicted_keys_count": 0, "blocked_clients_count": 0, "connected_clients_count": 1, "version": "7"}
    base.update(kw)
    return broker_redis.ServerFacts(**base)  # type: ignore[arg-type]


def test_redis_memory_findings() -> None:
    assert next(broker.redis_memory_findings(facts())).severity == Severity.OK
    lru = next(broker.redis_memory_findings(facts(maxmemory_bytes=10_000, maxmemory_policy="allkeys-lru")))
    assert lru.severity == Severity.INFO and lru.fix and "noeviction" in lru.fix.summary
    evicted = next(broker.redis_memory_findings(facts(maxmemory_bytes=1100, maxmemory_policy="allkeys-lru",
                                                      evicted_keys_count=3)))
    assert evicted.severity == Severity.WARNING and evicted.evidence["used_memory_ratio"] == pytest.approx(0.9091)


def test_state_path_words() -> None:
    assert "every update_state()" in broker.state_path_words(target(backend="rpc://"))
    assert "PENDING→STARTED" in broker.state_path_words(target(backend="db+postgresql://h/d"))
    assert "no result backend" in broker.state_path_words(target(backend="disabled://"))


def test_management_api_url_keeps_credentials_out_of_the_address() -> None:
    base, headers = broker_api._split("http://admin:s3cr%40t@rabbit.local:15672/")
    assert base == "http://rabbit.local:15672"
    assert headers["Authorization"] == "Basic YWRtaW46czNjckB0"  # admin:s3cr@t
    with pytest.raises(broker_api.ApiError) as err:
        broker_api._split("ftp://admin:s3cret@h")
    assert "s3cret" not in str(err.value)


def test_backlog_wait_is_depth_over_the_drain_rate_measured_from_two_readings() -> None:
    """200 -> 150 messages in 2 s: 25/s, so a new task waits 150 / 25 = 6 s (not 'info at 0 ms')."""
    t = target()
    first = broker.Depths({"celery": (200, 2)}, 10.0)
    last = broker.Depths({"celery": (150, 2)}, 12.0)
    f = rated(next(broker.backlog_findings(last, {}, 1000, t, first)), 1000)
    assert f.impact_ms == pytest.approx(6000) and f.severity == Severity.CRITICAL
    entry = f.evidence["queues"]["celery"]
    assert entry["drain_rate_per_s"] == 25.0 and entry["drain_rate_source"] == "depth"
    assert entry["messages_at_start_count"] == 200 and "6.0 s" in f.title


def test_backlog_that_does_not_drain_says_why_its_wait_is_unknown() -> None:
    t = target()
    first, last = broker.Depths({"celery": (40, 1)}, 0.0), broker.Depths({"celery": (40, 1)}, 3.0)
    without = rated(next(broker.backlog_findings(last, {}, 1000, t, first)), 1000)
    assert without.impact_ms == 0 and "did not fall in 3.0 s" in without.title
    assert "pass --rabbitmq-api" in without.title
    read = rated(next(broker.backlog_findings(last, {"celery": Rate(0.0)}, 1000, t, first, api_read=True)), 1000)
    assert "--rabbitmq-api" not in read.title and "management API shows no deliveries" in read.title
