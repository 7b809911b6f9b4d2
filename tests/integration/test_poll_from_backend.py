"""`poll-model --from-backend TASK_ID` against a real task on the local Redis result backend.

A real Celery worker (in-process thread, pool solo, on a queue named after the test's scratch
prefix) runs a task that stays PENDING for a while, then holds PROGRESS states for 0.3, 0.6 and
0.9 s, then succeeds. The task records the moment each update_state() returned, with the clock
the watcher uses, so the reported durations are compared with what really happened (band
+-80 ms: one 20 ms read interval plus machine load), not only with the nominal sleeps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celerydiag.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.redis]

HOLD_S = (0.3, 0.6, 0.9)
QUEUED_S = 0.8  # before the first update_state the backend shows PENDING: the watch starts in it
BAND_S = 0.08


def _keys(client: Any, scratch: str) -> list[bytes]:
    return list(client.scan_iter(match=f"*{scratch}*", count=1000))


@pytest.fixture
def worker(redis_url: str, scratch: str) -> Iterator[tuple[Any, Any, dict[str, list[float]]]]:
    import redis
    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    broker_url = redis_url.rsplit("/", 1)[0] + "/14"
    queue = f"{scratch}-q"
    app = Celery(scratch, broker=broker_url, backend=redis_url, set_as_current=False)
    app.conf.update(task_default_queue=queue, result_expires=600, worker_enable_remote_control=False,
                    broker_connection_retry_on_startup=False, redis_socket_timeout=5,
                    redis_socket_connect_timeout=2, broker_transport_options={"socket_timeout": 5})
    marks: dict[str, list[float]] = {}

    @app.task(bind=True, name=f"{scratch}.hold")
    def hold(self: Any, queued: float, durations: list[float]) -> str:
        times = marks.setdefault(self.request.id, [])
        time.sleep(queued)
        for i, d in enumerate(durations):
            self.update_state(state="PROGRESS", meta={"step": i})
            times.append(time.perf_counter())  # the moment update_state() returned
            time.sleep(d)
        return "done"

    clients = [redis.Redis.from_url(u, socket_timeout=5) for u in (redis_url, broker_url)]
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, queues=[queue], loglevel="WARNING",
                          shutdown_timeout=10):
            yield app, hold, marks
    finally:
        for client in clients:  # our keys only: the result meta, the queue, its binding
            for key in _keys(client, scratch):
                client.delete(key)
        app.close()
    leaked = [k for c in clients for k in _keys(c, scratch)]
    for client in clients:
        client.close()
    assert not leaked, f"keys left behind: {leaked}"


def test_durations_measured_on_the_backend_match_the_task(worker: Any, redis_url: str, scratch: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    app, hold, marks = worker
    task_id = f"{scratch}-task"
    try:
        hold.apply_async(args=[QUEUED_S, list(HOLD_S)], task_id=task_id)
        code = main(["poll-model", "--from-backend", task_id, "--backend", redis_url, "--watch-seconds", "20s",
                     "--interval", "1s", "-s", "fixed", "-s", "smart", "--format", "json"])
    finally:
        app.AsyncResult(task_id).forget()
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)
    observed = doc["observed"]
    assert observed["finished"] and observed["final_status"] == "SUCCESS", observed
    assert [s["status"] for s in observed["states"]] == ["PENDING", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCESS"]
    true = [b - a for a, b in zip(marks[task_id], marks[task_id][1:])]
    measured = observed["durations_s"]
    assert len(measured) == 3
    # The last PROGRESS ends when SUCCESS is written, which the task cannot stamp: compare it
    # with its nominal hold; the others with what really happened.
    for got, want in zip(measured, [*true, HOLD_S[-1]]):
        assert abs(got - want) <= BAND_S, f"measured {measured} vs true {true} + {HOLD_S[-1]}"
    for got, nominal in zip(measured, HOLD_S):
        assert got >= nominal - 0.025  # a state cannot look shorter than its sleep by more than a read
    # The model ran on them: three states of mean ~0.6 s and the measured read time as latency.
    assert observed["used"] is True
    assert doc["inputs"]["states_count"] == 3
    assert doc["inputs"]["mean_duration_s"] == pytest.approx(sum(measured) / 3, abs=1e-6)
    assert doc["inputs"]["read_latency_ms"] == pytest.approx(observed["read_ms"]["p50_ms"], abs=1e-3)
    assert 0 < observed["read_ms"]["p50_ms"] < 1000
    # A 1 s fixed poll misses a 0.3/0.6/0.9 s state with probability 0.4 on average (1 - d/T).
    [fixed] = [s for s in doc["strategies"] if s["name"] == "fixed:1s"]
    expected = sum(max(0.0, 1 - d) for d in measured) / 3
    assert fixed["p_miss_transient"] == pytest.approx(expected, abs=1e-6)
    assert observed["reads_count"] <= 20 / 0.02 + 1


def test_a_task_that_stays_pending_ends_at_watch_seconds_with_a_note(redis_url: str, scratch: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    code = main(["poll-model", "--from-backend", f"{scratch}-missing", "--backend", redis_url,
                 "--watch-seconds", "1s", "--interval", "1s", "-s", "fixed", "--durations", "fixed:0.5s"])
    elapsed = time.perf_counter() - started
    out = capsys.readouterr().out
    assert code == 0  # documented: the model still ran, on --durations
    assert 1.0 <= elapsed < 10, elapsed
    assert "stayed PENDING" in out and "modelling --durations fixed:500ms instead" in out
    assert "PENDING      still current when the watch ended" in out
    assert "Polling model: 10 PROGRESS states per task, each fixed:500ms" in out  # the defaults stand


def test_missing_task_json_keeps_the_fallback_inputs(redis_url: str, scratch: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["poll-model", "--from-backend", f"{scratch}-missing", "--backend", redis_url,
                 "--watch-seconds", "0.3s", "-s", "fixed", "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["observed"]["used"] is False and doc["observed"]["final_status"] == "PENDING"
    assert doc["observed"]["durations_s"] == [] and "stayed PENDING" in doc["observed"]["note"]
    assert doc["inputs"]["durations"] == "exp:2s" and doc["inputs"]["read_latency_ms"] == 0


def test_unreachable_backend_is_exit_3_without_the_password(run_cli: Any, closed_port: int) -> None:
    proc = run_cli("poll-model", "--from-backend", "t-1", "--backend",
                   f"redis://:s3cret-pw@127.0.0.1:{closed_port}/0", timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "unreachable" in proc.stderr and "s3cret-pw" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.mariadb
def test_database_backend_is_watched_read_only_under_repeatable_read(redis_url: str, mysql_url: str,
                                                                      scratch: str) -> None:
    """MariaDB's REPEATABLE READ would freeze a long-lived reader's view at its first read; each
    read is its own transaction, so the watcher still sees every state. Tables are our own
    (database_table_names), created by Celery when the backend is set up (before the task is
    sent) and dropped at the end."""
    from contextlib import ExitStack

    from celery import Celery
    from celery.contrib.testing.worker import start_worker
    from sqlalchemy import create_engine, text

    from celerydiag.polling import observe as watch
    from celerydiag.target import Target, TargetSource

    table = scratch.replace("-", "_")
    app = Celery(scratch, broker=redis_url.rsplit("/", 1)[0] + "/14", backend=f"db+{mysql_url}",
                 set_as_current=False)
    app.conf.update(task_default_queue=f"{scratch}-q", worker_enable_remote_control=False,
                    broker_connection_retry_on_startup=False, database_create_tables_at_setup=True,
                    database_table_names={"task": f"{table}_task", "group": f"{table}_group"})

    @app.task(bind=True, name=f"{scratch}.hold")
    def hold(self: Any) -> str:
        time.sleep(QUEUED_S)
        for i, d in enumerate(HOLD_S):
            self.update_state(state="PROGRESS", meta={"step": i})
            time.sleep(d)
        return "done"

    target = Target(redis_url, f"db+{mysql_url}", TargetSource.APP, app=app, app_name="test")
    engine = create_engine(mysql_url)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, queues=[f"{scratch}-q"],
                          loglevel="WARNING", shutdown_timeout=10):
            hold.apply_async(task_id=f"{scratch}-task")  # PENDING for QUEUED_S: the watch starts in it
            with ExitStack() as cleanup:
                reader = watch.open_reader(target, f"{scratch}-task", cleanup)
                result = watch.watch(reader, f"{scratch}-task", "db", limit_s=20)
    finally:
        with engine.begin() as conn:
            for suffix in ("task", "group"):
                conn.execute(text(f"DROP TABLE IF EXISTS `{table}_{suffix}`"))
        engine.dispose()
        app.close()
    assert result.finished, result.to_dict()
    assert [s.status for s in result.states] == ["PENDING", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCESS"]
    assert result.durations_s == pytest.approx(list(HOLD_S), abs=BAND_S)
