"""The e2e probe against every broker/backend pair this machine has, and what it leaves behind.

Each run uses a real in-process worker, the real services, and checks three things: the numbers
are there and coherent (≥ 200 observed updates, P50 ≤ P99 ≤ max), the report's latency block
carries the observation, and nothing of ours survives the run (queue, result keys, tables, and the
process-wide names of Celery's database models).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from celerydiag.e2e.probe import E2EProbe
from celerydiag.findings import ProbeStatus
from celerydiag.probe import Limits, ProbeContext, run_probe
from celerydiag.target import resolve_target

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UPDATES = 250
MIN_SAMPLES = 200


def _run(broker: str, backend: str, scratch: str):
    target = resolve_target(broker=broker, backend=backend)
    ctx = ProbeContext(target=target, limits=Limits(updates=UPDATES, max_seconds=30, timeout_s=5),
                       scratch=scratch)
    return run_probe(E2EProbe(), ctx)


def _assert_measured(result, modes: tuple[str, ...]) -> None:
    assert result.status == ProbeStatus.RAN, result.reason
    by_id = {f.id: f for f in result.findings}
    dispatch = by_id["e2e.dispatch-latency"].evidence
    assert dispatch["samples"] == 30 and dispatch["lost_count"] == 0
    for mode in modes:
        ev = by_id[f"e2e.visibility-{mode}"].evidence
        assert ev["samples"] >= MIN_SAMPLES, ev
        assert ev["samples"] + ev["missed_count"] == ev["updates_written_count"] >= UPDATES
        assert 0 <= ev["p50_ms"] <= ev["p95_ms"] <= ev["p99_ms"] <= ev["max_ms"]
        assert by_id[f"e2e.visibility-{mode}"].impact_ms == pytest.approx(ev["p99_ms"], abs=0.01)
    assert set(by_id) == {"e2e.dispatch-latency"} | {f"e2e.visibility-{m}" for m in modes}
    observed = "push" if "push" in modes else "poll"
    assert result.latency["observed_mode"] == observed
    assert result.latency["observed_p99_ms"] == by_id[f"e2e.visibility-{observed}"].evidence["p99_ms"]


def _assert_queue_gone(amqp_url: str, scratch: str) -> None:
    from amqp.exceptions import NotFound
    from kombu import Connection

    with Connection(amqp_url, connect_timeout=5) as conn:
        channel = conn.channel()
        with pytest.raises(NotFound):
            channel.queue_declare(f"celerydiag.probe.{scratch.split('-', 1)[1]}", passive=True)


def _assert_no_redis_keys(redis_url: str, scratch: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        assert list(client.scan_iter(match=f"*{scratch}*", count=1000)) == []
        assert list(client.scan_iter(match=f"*celerydiag.probe.{scratch.split('-', 1)[1]}*")) == []
    finally:
        client.close()


def _assert_no_tables(sqlalchemy_url: str, scratch: str) -> None:
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.pool import NullPool

    engine = create_engine(sqlalchemy_url, poolclass=NullPool)
    try:
        prefix = scratch.replace("-", "_")
        assert [t for t in inspect(engine).get_table_names() if t.startswith(prefix)] == []
    finally:
        engine.dispose()


def _assert_models_restored() -> None:
    from celery.backends.database.models import Task, TaskExtended, TaskSet

    assert Task.__table__.name == TaskExtended.__table__.name == "celery_taskmeta"
    assert TaskSet.__table__.name == "celery_tasksetmeta"


def test_amqp_and_redis(amqp_url: str, redis_url: str, scratch: str) -> None:
    _assert_measured(_run(amqp_url, redis_url, scratch), ("poll", "push"))
    _assert_queue_gone(amqp_url, scratch)
    _assert_no_redis_keys(redis_url, scratch)


def test_amqp_and_mariadb(amqp_url: str, mysql_url: str, scratch: str) -> None:
    _assert_measured(_run(amqp_url, "db+" + mysql_url, scratch), ("poll",))
    _assert_queue_gone(amqp_url, scratch)
    _assert_no_tables(mysql_url, scratch)
    _assert_models_restored()


def test_amqp_and_postgres(amqp_url: str, pg_url: str, scratch: str) -> None:
    _assert_measured(_run(amqp_url, "db+" + pg_url, scratch), ("poll",))
    _assert_queue_gone(amqp_url, scratch)
    _assert_no_tables(pg_url, scratch)
    _assert_models_restored()


def test_redis_and_redis(redis_url: str, scratch: str) -> None:
    broker = redis_url.rsplit("/", 1)[0] + "/14"
    _assert_measured(_run(broker, redis_url, scratch), ("poll", "push"))
    _assert_no_redis_keys(broker, scratch)
    _assert_no_redis_keys(redis_url, scratch)


def test_amqp_and_rpc(amqp_url: str, scratch: str) -> None:
    _assert_measured(_run(amqp_url, "rpc://", scratch), ("push",))
    _assert_queue_gone(amqp_url, scratch)


def test_doctor_on_embedded_default_measures_and_says_so(tmp_path) -> None:
    """`celerydiag doctor` with nothing configured does a real measurement and says what it measured."""
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "celerydiag", "doctor", "--format", "json", "-o", str(out)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(out.read_text())
    assert report["target"]["source"] == "embedded"
    assert report["target"]["broker"] == "memory://"
    e2e = next(p for p in report["probes"] if p["name"] == "e2e")
    assert e2e["status"] == "ran", e2e
    visibility = next(f for f in report["findings"] if f["id"] == "e2e.visibility-poll")
    assert visibility["evidence"]["samples"] >= MIN_SAMPLES
    assert report["latency"]["observed_p99_ms"] == visibility["evidence"]["p99_ms"]
    text = subprocess.run([sys.executable, "-m", "celerydiag", "report", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert "embedded" in text.stdout and "Observed state visibility" in text.stdout


def test_a_real_celery_table_survives_an_e2e_run(amqp_url: str, pg_url: str, scratch: str) -> None:
    """PostgreSQL holding a real celery_taskmeta (made by Celery: table, task_id_sequence, the
    date_done index): the e2e run must leave all of it as it was and still writable by Celery."""
    from celery import Celery
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.pool import NullPool

    admin = create_engine(pg_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    database = scratch.replace("-", "_")
    user_url = pg_url.rsplit("/", 1)[0] + "/" + database
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    try:
        user_app = Celery("user", broker="memory://", backend="db+" + user_url, set_as_current=False)
        user_app.backend.store_result("user-task-1", {"progress": 1}, "PROGRESS")
        engine = create_engine(user_url, poolclass=NullPool)
        try:
            def schema_objects() -> tuple[set[str], set[str], set[str]]:
                with engine.connect() as conn:
                    sequences = {r[0] for r in conn.execute(text(
                        "SELECT sequence_name FROM information_schema.sequences"))}
                inspector = inspect(engine)
                return (set(inspector.get_table_names()), sequences,
                        {i["name"] for i in inspector.get_indexes("celery_taskmeta")})

            before = schema_objects()
            assert "celery_taskmeta" in before[0] and "task_id_sequence" in before[1]
            _assert_measured(_run(amqp_url, "db+" + user_url, scratch), ("poll",))
            assert schema_objects() == before
            user_app.backend.store_result("user-task-2", {"progress": 2}, "PROGRESS")  # sequence still works
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT task_id FROM celery_taskmeta ORDER BY id")).fetchall()
            assert [r[0] for r in rows] == ["user-task-1", "user-task-2"]
        finally:
            engine.dispose()
            user_app.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
    _assert_models_restored()


def test_the_in_process_worker_leaves_result_get_usable(redis_url: str, scratch: str) -> None:
    """Starting a worker's pool sets Celery's process-wide "task joins will block" flag; left set,
    every later AsyncResult.get() in the process raises "Never call result.get() within a task!"
    (a user's `probe e2e` from their own code, or the next test here). The probe restores it."""
    from celery import _state as celery_state

    assert not celery_state.task_join_will_block()
    result = _run(redis_url, redis_url, scratch)
    assert result.status == ProbeStatus.RAN, result.reason
    assert not celery_state.task_join_will_block()


def test_a_run_cut_short_says_its_p99_is_not_to_be_trusted(redis_url: str, scratch: str) -> None:
    """--max-seconds too short for 250 updates: the probe still ends within --max-seconds plus its
    cleanup grace, and a result from fewer than 200 updates says so in its title and evidence
    instead of printing a P99, and leaves the report's observed P99 empty. (2.5 s: at the 5 ms
    update spacing a Redis target gets, 3 s already leaves room for 200 updates of one mode.)"""
    import re
    import time

    target = resolve_target(broker=redis_url, backend=redis_url)
    limits = Limits(updates=UPDATES, max_seconds=2.5, timeout_s=2)
    started = time.monotonic()
    result = run_probe(E2EProbe(), ProbeContext(target=target, limits=limits, scratch=scratch))
    took = time.monotonic() - started
    print(f"e2e with --max-seconds {limits.max_seconds:g}: {took:.2f} s, {result.status}: {result.reason}")
    assert took < limits.probe_bound_s() + 3, f"{took:.1f} s"
    assert result.status == ProbeStatus.RAN, result.reason
    thin = [f for f in result.findings if f.id.startswith("e2e.visibility-") and "samples" in f.evidence]
    assert thin, [f.id for f in result.findings]
    for finding in thin:
        assert finding.evidence["samples"] < 200, finding.evidence
        assert "too few for a P99" in finding.title and not re.search(r"P99 \d", finding.title), finding.title
        assert finding.evidence["trusted"] is False and finding.evidence["trust_floor_count"] == 200
    assert result.latency.get("observed_p99_ms") is None
