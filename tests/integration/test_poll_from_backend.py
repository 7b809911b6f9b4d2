"""`poll-model --from-backend TASK_ID` against a real task on the local Redis result backend.

A real Celery worker (in-process thread, pool solo, on a queue named after the test's scratch
prefix) runs a task that stays PENDING for a while, then holds PROGRESS states for 0.3, 0.6 and
0.9 s, then succeeds. The task records, with the clock the watcher uses, when each write began
and when it returned (the success write ends at Celery's ``task_success`` signal, sent after
``mark_as_done``), so a state became visible somewhere in that window. The reported durations
are compared with those windows (plus one 20 ms read interval and a read: BAND_S), not with the
nominal sleeps: on a loaded machine a MariaDB commit alone can take 100 ms.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from celerydiag.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.redis]

HOLD_S = (0.3, 0.6, 0.9)
QUEUED_S = 0.8  # before the first update_state the backend shows PENDING: the watch starts in it
BAND_S = 0.08

Window = tuple[float, float]  # (write began, write returned), perf_counter seconds


def _marking_task(app: Any, name: str, marks: dict[str, list[Window]]) -> tuple[Any, Callable[[], None]]:
    """A task that sleeps ``queued``, then writes one PROGRESS per duration and holds it, recording
    each write's window in ``marks[task_id]``; the success write's window closes at task_success."""
    from celery.signals import task_success

    @app.task(bind=True, name=name)
    def hold(self: Any, queued: float, durations: list[float]) -> str:
        windows = marks.setdefault(self.request.id, [])
        time.sleep(queued)
        for i, d in enumerate(durations):
            began = time.perf_counter()
            self.update_state(state="PROGRESS", meta={"step": i})
            windows.append((began, time.perf_counter()))
            time.sleep(d)
        windows.append((time.perf_counter(), float("inf")))  # the success write begins on return
        return "done"

    def stamp_success(sender: Any = None, **_: Any) -> None:
        if sender is not None and sender.name == name:
            windows = marks.get(sender.request.id)
            if windows:
                windows[-1] = (windows[-1][0], time.perf_counter())

    task_success.connect(stamp_success, weak=False)
    return hold, lambda: task_success.disconnect(stamp_success)


def _assert_within_windows(measured: list[float], windows: list[Window]) -> None:
    """State i lasts from its write to the next one: between next-began minus this-returned and
    next-returned minus this-began, give or take one read interval and a read."""
    bounds = [(b1 - a0 - BAND_S, a1 - b0 + BAND_S) for (b0, a0), (b1, a1) in zip(windows, windows[1:])]
    assert len(measured) == len(bounds), (measured, windows)
    for got, (low, high) in zip(measured, bounds):
        assert low <= got <= high, f"measured {measured} outside the write windows {bounds}"


def _keys(client: Any, scratch: str) -> list[bytes]:
    return list(client.scan_iter(match=f"*{scratch}*", count=1000))


@pytest.fixture
def worker(redis_url: str, scratch: str) -> Iterator[tuple[Any, Any, dict[str, list[Window]]]]:
    import redis
    from celery import Celery
    from celery.contrib.testing.worker import start_worker

    broker_url = redis_url.rsplit("/", 1)[0] + "/14"
    queue = f"{scratch}-q"
    app = Celery(scratch, broker=broker_url, backend=redis_url, set_as_current=False)
    app.conf.update(task_default_queue=queue, result_expires=600, worker_enable_remote_control=False,
                    broker_connection_retry_on_startup=False, redis_socket_timeout=5,
                    redis_socket_connect_timeout=2, broker_transport_options={"socket_timeout": 5})
    marks: dict[str, list[Window]] = {}
    hold, disconnect = _marking_task(app, f"{scratch}.hold", marks)

    clients = [redis.Redis.from_url(u, socket_timeout=5) for u in (redis_url, broker_url)]
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, queues=[queue], loglevel="WARNING",
                          shutdown_timeout=10):
            yield app, hold, marks
    finally:
        disconnect()
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
    measured = observed["durations_s"]
    _assert_within_windows(measured, marks[task_id])
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

    marks: dict[str, list[Window]] = {}
    hold, disconnect = _marking_task(app, f"{scratch}.hold", marks)
    target = Target(redis_url, f"db+{mysql_url}", TargetSource.APP, app=app, app_name="test")
    engine = create_engine(mysql_url)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, queues=[f"{scratch}-q"],
                          loglevel="WARNING", shutdown_timeout=10):
            hold.apply_async(args=[QUEUED_S, list(HOLD_S)], task_id=f"{scratch}-task")  # PENDING first
            with ExitStack() as cleanup:
                reader = watch.open_reader(target, f"{scratch}-task", cleanup)
                result = watch.watch(reader, f"{scratch}-task", "db", limit_s=20)
    finally:
        disconnect()
        with engine.begin() as conn:
            for suffix in ("task", "group"):
                conn.execute(text(f"DROP TABLE IF EXISTS `{table}_{suffix}`"))
        engine.dispose()
        app.close()
    assert result.finished, result.to_dict()
    assert [s.status for s in result.states] == ["PENDING", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCESS"]
    _assert_within_windows(result.durations_s, marks[f"{scratch}-task"])
