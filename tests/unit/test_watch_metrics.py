"""The Prometheus sink, its naming and label rules, the view and the JSON line: no services.

Samples are built by hand here, so every rule is checked on known values; the real measurements
are tests/unit/test_watch_loop.py (embedded default) and tests/integration/test_watch_*.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celerydiag.watch import view
from celerydiag.watch.metrics import Metrics, is_loopback, parse_listen
from celerydiag.watch.sample import REASONS, SIGNALS, Sample, reason_of

SECRET = "s3cr3t-pw"


def sample(**kw: object) -> Sample:
    base: dict[str, Any] = {
        "round": 3, "time": 1_700_000_000.0, "up": {"broker": True, "backend": False},
        "visibility_ms": {"poll": [2.0, 4.0, 30.0], "push": [0.5]}, "missed": {"poll": 1, "push": 0},
        "dispatch_ms": [3.0, 5.0], "backend_write_ms": [1.0, 1.5], "backlog": {"celery": 7, "emails": 0},
        "broker_blocked": False, "rtt_ms": {"broker": {"ping": 0.4, "tcp_info": 0.1}},
        "backend_writes_per_s": 12.5, "backend_counter": "pg_stat_user_tables n_tup_ins+n_tup_upd", "canary": "ok"}
    base.update(kw)
    s = Sample(**base)
    s.fail("backend", ConnectionRefusedError(111, f"amqp://u:{SECRET}@h refused"))
    return s


def families(metrics: Metrics) -> dict[str, object]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text  # type: ignore[return-value]


def test_metric_names_units_help_and_types_follow_prometheus_conventions() -> None:
    m = Metrics(["poll", "push"], "amqp", "db")
    m.observe(sample())
    fams, text = families(m)
    expected = {
        "celerydiag_state_visibility_seconds": "histogram", "celerydiag_dispatch_latency_seconds": "histogram",
        "celerydiag_backend_write_seconds": "histogram", "celerydiag_task_queue_wait_seconds": "histogram",
        "celerydiag_broker_backlog_messages": "gauge", "celerydiag_broker_blocked": "gauge",
        "celerydiag_rtt_seconds": "gauge", "celerydiag_backend_writes_per_second": "gauge",
        "celerydiag_target_up": "gauge", "celerydiag_canary_runs": "counter", "celerydiag_errors": "counter",
    }
    for name, kind in expected.items():
        assert fams[name].type == kind, name  # type: ignore[attr-defined]
        assert len(fams[name].documentation) > 20, name  # type: ignore[attr-defined]
    assert "celerydiag_canary_runs_total{result=\"ok\"} 1.0" in text
    assert "celerydiag_errors_total{reason=\"unreachable\",signal=\"backend\"} 1.0" in text
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.match(r"celerydiag_[a-z_]+(\{.*\})? ", line), line


def test_values_are_in_seconds_and_land_in_the_right_series() -> None:
    m = Metrics(["poll", "push"], "amqp", "db")
    m.observe(sample())
    _, text = families(m)
    assert 'celerydiag_state_visibility_seconds_count{path="poll"} 3.0' in text
    assert 'celerydiag_state_visibility_seconds_sum{path="poll"} 0.036' in text
    assert 'celerydiag_state_visibility_seconds_bucket{le="0.025",path="poll"} 2.0' in text
    assert 'celerydiag_broker_backlog_messages{queue="celery"} 7.0' in text
    assert 'celerydiag_rtt_seconds{method="tcp_info",peer="broker"} 0.0001' in text
    assert 'celerydiag_target_up{side="backend"} 0.0' in text
    assert "celerydiag_backend_writes_per_second 12.5" in text


def test_labels_are_bounded_and_never_carry_a_message_secret_or_task_id() -> None:
    m = Metrics(["poll"], "amqp", "redis")
    for n in range(20):  # many rounds, many distinct error messages: the series count stays put
        s = sample(round=n)
        s.fail("canary", f"task celerydiag-w1234-r{n}-progress-poll failed: {SECRET}", "failed")
        m.observe(s)
    _, text = families(m)
    assert SECRET not in text and "celerydiag-w1234" not in text and "amqp://" not in text
    labels = set(re.findall(r'(\w+)="', text))
    assert labels <= {"path", "le", "queue", "peer", "method", "side", "result", "signal", "reason",
                      "version", "broker", "backend"}
    for value in re.findall(r'signal="([^"]+)"', text):
        assert value in SIGNALS
    for value in re.findall(r'reason="([^"]+)"', text):
        assert value in REASONS


def test_a_queue_or_peer_no_longer_read_loses_its_series_instead_of_keeping_a_stale_value() -> None:
    m = Metrics(["poll"], "redis", "redis")
    m.observe(sample())
    m.observe(sample(backlog={"celery": 1}, rtt_ms={}))
    _, text = families(m)
    assert 'queue="emails"' not in text and 'queue="celery"} 1.0' in text
    assert "celerydiag_rtt_seconds{" not in text


def test_every_error_series_and_canary_result_exists_from_the_first_scrape() -> None:
    _, text = families(Metrics(["poll"], "memory", "db"))
    assert text.count("celerydiag_errors_total{") == len(SIGNALS) * len(REASONS)
    assert 'celerydiag_canary_runs_total{result="failed"} 0.0' in text


@pytest.mark.parametrize(("value", "want"), [("127.0.0.1:9808", ("127.0.0.1", 9808)), (":9808", ("127.0.0.1", 9808)),
                                             ("9808", ("127.0.0.1", 9808)), ("[::1]:9808", ("::1", 9808)),
                                             ("0.0.0.0:0", ("0.0.0.0", 0))])
def test_listen_address_defaults_to_loopback(value: str, want: tuple[str, int]) -> None:
    assert parse_listen(value) == want


def test_listen_refuses_a_non_port_and_knows_loopback() -> None:
    with pytest.raises(ValueError):
        parse_listen("localhost:http")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")


@pytest.mark.parametrize(("exc", "reason"), [(TimeoutError("x"), "timeout"),
                                             (ConnectionRefusedError(111, "x"), "unreachable"),
                                             (RuntimeError("Access denied for user"), "refused"),
                                             (ValueError("odd"), "failed")])
def test_reasons_are_classified_into_the_closed_set(exc: BaseException, reason: str) -> None:
    assert reason_of(exc) == reason


def test_json_line_is_one_versioned_object_and_the_views_name_each_signal() -> None:
    s = sample()
    line = view.json_line(s)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["schema"] == "celerydiag.watch/1" and doc["round"] == 3
    assert doc["visibility_ms"]["poll"] == [2.0, 4.0, 30.0] and doc["problems"][0]["reason"] == "unreachable"
    rows = view.rows(s)
    assert rows["state visibility (poll) P99"][0] == 29.5  # P99 of 2, 4, 30 ms, one decimal
    assert rows["backlog"][1] == "celery=7, emails=0"
    plain = view.plain_line(s)
    assert "backend=DOWN" in plain and "error=backend:unreachable" in plain


def test_sparkline_scales_to_the_largest_value_and_shows_gaps() -> None:
    assert view.spark([0.0, 5.0, 10.0, None]) == "▁▄█ "
    assert view.spark([None, None]) == ""
