"""The broker probe against the real local RabbitMQ: what it measures, what it reads passively,
what it cleans up (also when interrupted), and how it follows a slow path and a blocked broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from celerydiag.broker.probe import BrokerProbe
from celerydiag.findings import ProbeResult, ProbeStatus, Severity
from celerydiag.probe import Limits, ProbeContext, ProbeOptions, run_probe
from celerydiag.target import Target, resolve_target

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from tests.conftest import check_finding_document  # noqa: E402
from tests.support.relay import Relay  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

SUMMARY_KEYS = {"p50", "p95", "p99", "max"}


def probe(target: Target, scratch: str, *, samples: int = 40, max_seconds: float = 30,
          timeout_s: float = 5, progress: Any = None, **options: Any) -> ProbeResult:
    ctx = ProbeContext(target=target, limits=Limits(samples=samples, max_seconds=max_seconds, timeout_s=timeout_s),
                       scratch=scratch, options=ProbeOptions(**options))
    if progress is not None:
        ctx.progress = progress
    return run_probe(BrokerProbe(), ctx)


def findings(result: ProbeResult) -> dict[str, Any]:
    assert result.status == ProbeStatus.RAN, result.reason
    out = {}
    for f in result.findings:
        check_finding_document(f.to_dict(), f.id)
        out[f.id] = f
    return out


def queue_state(url: str, name: str) -> str:
    """'missing', 'locked' (exclusive to another connection: ours still exists) or 'present'."""
    from amqp.exceptions import NotFound, ResourceLocked
    from kombu import Connection

    with Connection(url, connect_timeout=3, transport_options={"read_timeout": 3}) as conn:
        channel = conn.channel()
        try:
            channel.queue_declare(name, passive=True)
            return "present"
        except NotFound:
            return "missing"
        except ResourceLocked:
            return "locked"


def wait_missing(url: str, name: str, within_s: float = 10) -> str:
    deadline = time.monotonic() + within_s
    state = queue_state(url, name)
    while state != "missing" and time.monotonic() < deadline:
        time.sleep(0.2)
        state = queue_state(url, name)
    return state


def test_measures_publish_confirm_roundtrip_and_cleans_up(amqp_url: str, scratch: str) -> None:
    target = resolve_target(broker=amqp_url, backend="redis://127.0.0.1:6379/15")
    found = findings(probe(target, scratch, samples=60))
    main = found["broker.publish-latency"]
    ev = main.evidence
    assert ev["samples"] == 60
    for key in ("publish_ms", "confirm_ms", "roundtrip_ms", "amqp_rtt_ms", "connect_ms",
                "confirm_transient_ms", "confirm_persistent_ms", "publish_transient_ms", "publish_persistent_ms"):
        assert set(ev[key]) == SUMMARY_KEYS, key
        assert 0 <= ev[key]["p50"] <= ev[key]["p95"] <= ev[key]["p99"] <= ev[key]["max"], (key, ev[key])
    # That a confirmed publish costs a round trip more than a plain one is checked where the
    # difference is large enough to see on a busy machine: the relay test adds a known delay.
    # On loopback both are ~0.3 ms and their medians swap under load (a timing assertion here
    # failed a CI-like run with 0.310 vs 0.319 ms).
    # redis results: the broker is on the dispatch path only, and the report says so
    assert ev["state_path"] == "dispatch-only"
    assert "PENDING→STARTED" in main.title and "redis://" in main.title
    assert main.impact_ms == pytest.approx(ev["roundtrip_ms"]["p99"], abs=0.01)
    confirm = found["broker.confirm-publish"]
    assert confirm.severity == Severity.INFO and "'confirm_publish': True" in confirm.fix.config
    assert found["broker.blocked"].severity == Severity.OK
    assert found["broker.heartbeat"].severity == Severity.OK
    assert queue_state(amqp_url, f"{scratch}.broker") == "missing"


def test_rpc_results_put_every_update_on_the_broker(amqp_url: str, scratch: str) -> None:
    target = resolve_target(broker=amqp_url, backend="rpc://")
    target.conf.broker_transport_options = {"confirm_publish": True}
    found = findings(probe(target, scratch, samples=30))
    main = found["broker.publish-latency"]
    assert main.evidence["state_path"] == "every-update"
    assert "every state update" in main.title
    # rpc results are transient by default: the confirm cost charged per update is the transient one
    confirm = found["broker.confirm-publish"]
    assert confirm.evidence["delivery_mode"] == "transient"
    assert "update_state()" in confirm.title
    assert confirm.impact_ms == pytest.approx(confirm.evidence["confirm_overhead_ms"]["p99"], abs=0.01)
    assert main.impact_ms == pytest.approx(main.evidence["roundtrip_ms"]["p99"] + confirm.impact_ms, abs=0.01)


def test_backlog_is_read_passively_and_never_changed(amqp_url: str, scratch: str) -> None:
    """A user queue with 7 waiting tasks and no consumer: reported critical, and left exactly as it was."""
    from kombu import Connection

    user_queue = f"{scratch}.tasks"
    with Connection(amqp_url, connect_timeout=3) as conn:
        channel = conn.channel()
        channel.queue_declare(user_queue, durable=False, auto_delete=False, arguments={"x-expires": 120_000})
        try:
            import amqp

            for i in range(7):
                channel.basic_publish(amqp.Message(b"task %d" % i), "", user_queue)
            missing = f"{scratch}.never-declared"
            target = resolve_target(broker=amqp_url)
            target.conf.task_default_queue = user_queue
            target.conf.task_routes = {"proj.slow": {"queue": missing}}
            found = findings(probe(target, scratch, samples=10))
            backlog = found["broker.backlog"]
            assert backlog.severity == Severity.CRITICAL
            assert backlog.evidence["queues"][user_queue] == {"messages_count": 7, "consumers_count": 0,
                                                               "messages_at_start_count": 7}
            assert backlog.evidence["queues"][missing] == {"declared": False}
            _, messages, consumers = channel.queue_declare(user_queue, passive=True)
            assert (messages, consumers) == (7, 0)
            assert queue_state(amqp_url, missing) == "missing"  # passive: we did not create it
        finally:
            channel.queue_delete(user_queue)


def test_heartbeat_negotiation_and_disabled_worker_heartbeat(amqp_url: str, scratch: str) -> None:
    target = resolve_target(broker=amqp_url)
    target.conf.broker_heartbeat = 120
    hb = findings(probe(target, scratch, samples=10))["broker.heartbeat"]
    server = hb.evidence["server_heartbeat_s"]
    assert server > 0, "the local RabbitMQ proposes a heartbeat (default 60 s)"
    assert hb.evidence["negotiated_heartbeat_s"] == min(server, 120)
    assert hb.evidence["dead_connection_detect_s"] == 2 * min(server, 120)
    target.conf.broker_heartbeat = 0
    off = findings(probe(target, scratch, samples=10))["broker.heartbeat"]
    assert off.severity == Severity.INFO and off.evidence["negotiated_heartbeat_s"] == 0
    assert "broker_heartbeat = 120" in off.fix.config


def test_management_api_down_is_a_note_without_the_password(amqp_url: str, scratch: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = resolve_target(broker=amqp_url)
    found = findings(probe(target, scratch, samples=10, rabbitmq_api=f"http://admin:apis3cret@127.0.0.1:{port}"))
    api = found["broker.management-api"]
    assert api.severity == Severity.INFO
    assert "apis3cret" not in repr(api.to_dict())
    assert "Connection refused" in api.detail


class _Interrupt:
    """A progress observer that presses Ctrl-C in the middle of the first latency series, after
    checking that our scratch queue really exists at that moment."""

    def __init__(self, url: str, queue: str, after: int) -> None:
        self.url, self.queue, self.after, self.steps, self.seen = url, queue, after, 0, ""

    def start(self, name: str, total: float | None = None) -> None: ...
    def done(self) -> None: ...
    def close(self) -> None: ...

    def step(self, advance: float = 1, description: str | None = None) -> None:
        self.steps += advance
        if self.steps >= self.after:
            self.seen = queue_state(self.url, self.queue)
            raise KeyboardInterrupt


def test_ctrl_c_mid_probe_removes_the_scratch_queue(amqp_url: str, scratch: str) -> None:
    target = resolve_target(broker=amqp_url)
    interrupt = _Interrupt(amqp_url, f"{scratch}.broker", after=30)
    with pytest.raises(KeyboardInterrupt):
        probe(target, scratch, samples=100, progress=interrupt)
    assert interrupt.seen == "locked", "the scratch queue should exist (exclusive to the probe) mid-run"
    assert queue_state(amqp_url, f"{scratch}.broker") == "missing"


@pytest.mark.slow
def test_latency_tracks_an_injected_delay(amqp_url: str, scratch: str) -> None:
    """Through a relay adding d one way (2d per round trip), confirm and publish→consume P50 grow
    by 2d within 10 %, against a same-run baseline so machine noise cancels."""
    samples = 25

    def p50s(url: str, tag: str) -> dict[str, float]:
        ev = findings(probe(resolve_target(broker=url), f"{scratch}-{tag}", samples=samples,
                            max_seconds=120))["broker.publish-latency"].evidence
        assert ev["samples"] == samples
        return {k: ev[k]["p50"] for k in ("confirm_transient_ms", "roundtrip_ms", "amqp_rtt_ms")}

    base = p50s(amqp_url, "base")
    for delay_s in (0.020, 0.050):
        with Relay("127.0.0.1", 5672, delay_s) as relay:
            slow = p50s(amqp_url.replace(":5672", f":{relay.port}"), f"d{int(delay_s * 1000)}")
            assert relay.connections >= 3
        injected = 2 * delay_s * 1000
        for key, value in slow.items():
            added = value - base[key]
            assert abs(added - injected) <= 0.10 * injected, (key, delay_s, base[key], value)
    assert queue_state(amqp_url, f"{scratch}-base.broker") == "missing"


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
def test_blocked_broker_is_reported_with_its_reason(amqp_url: str, scratch: str) -> None:
    """A real memory alarm (watermark lowered to 1 byte) for as short as possible, restored in
    finally. Other engineers share this RabbitMQ: keep the window to a few seconds."""
    previous = _rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
    restore = (["set_vm_memory_high_watermark", "absolute", previous.strip("{}").split(",")[1]]
               if previous.startswith("{absolute") else ["set_vm_memory_high_watermark", previous])
    target = resolve_target(broker=amqp_url)
    try:
        _rabbitmqctl("set_vm_memory_high_watermark", "absolute", "1")
        deadline = time.monotonic() + 5
        while _rabbitmqctl("eval", "rabbit_alarm:get_alarms().") == "[]" and time.monotonic() < deadline:
            time.sleep(0.1)
        result = probe(target, scratch, samples=10, timeout_s=1.5)
    finally:
        _rabbitmqctl(*restore)
    found = findings(result)
    blocked = found["broker.blocked"]
    assert blocked.severity == Severity.CRITICAL
    assert blocked.evidence["blocked"] is True
    assert "memory" in blocked.evidence["reason"], blocked.evidence
    assert blocked.evidence["confirm_wait_s"] >= 1.0
    assert "broker.publish-latency" not in found, "no latency series on a blocked broker"
    assert wait_missing(amqp_url, f"{scratch}.broker") == "missing"


def test_cli_json_report(amqp_url: str, run_cli: Any, check_report: Any) -> None:
    """The console script end to end: a valid report/2 document on stdout, the summary on stderr."""
    import json

    done = run_cli("probe", "broker", "--broker", amqp_url, "--backend", "rpc://", "--samples", "20",
                   "--format", "json", "--fail-on", "never", timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    check_report(doc)
    assert [p["name"] for p in doc["probes"]] == ["broker"] and doc["probes"][0]["status"] == "ran"
    ids = {f["id"] for f in doc["findings"]}
    assert {"broker.publish-latency", "broker.confirm-publish", "broker.blocked", "broker.heartbeat",
            "broker.backlog"} <= ids
    assert doc["latency"]["by_cause_ms"]["broker"] > 0
    assert done.stderr.startswith("celerydiag: ") and "Traceback" not in done.stderr
