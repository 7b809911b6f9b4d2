"""The backend probe against the real local PostgreSQL and MariaDB (no mocks).

The lock-holder test builds the situation the probe exists for: a real Celery worker (in-process,
pool solo, its own queue) writes its task's row into a task table of the test's own (named via
``database_table_names``, created by Celery and dropped by the test), then a test transaction holds
``SELECT … FOR UPDATE`` on that row while a second writer (Celery's ``store_result``) waits. The
probe, pointed at that table, must name the blocker's pid / connection id and the wait.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celerydiag.backend.probe import BackendProbe
from celerydiag.compat import celery_version
from celerydiag.config.probe import DATE_DONE_INDEX_FROM
from celerydiag.doctor import diagnose
from celerydiag.findings import Report, Severity
from celerydiag.probe import Limits, ProbeOptions
from celerydiag.target import Target, TargetSource

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# max_seconds: room for every phase on a loaded machine; the phases end by their write counts first
LIMITS = Limits(samples=90, max_seconds=20, timeout_s=5)


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mariadb)])
def db_url(request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL of each database in turn (the session fixtures fail when one is down)."""
    return request.getfixturevalue("pg_url" if request.param == "postgres" else "mysql_url")


def engine_for(url: str) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from celerydiag.access.backend import connect_timeout_args

    return create_engine(url, poolclass=NullPool, connect_args=connect_timeout_args(url, 10))


def scratch_tables(url: str, like: str) -> list[str]:
    from sqlalchemy import inspect

    engine = engine_for(url)
    try:
        return sorted(t for t in inspect(engine).get_table_names() if _like(t, like))
    finally:
        engine.dispose()


def _like(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(name, pattern)


def make_app(url: str, table: str) -> Any:
    """A Celery app writing results to the test's own task table; memory broker, own queue."""
    from celery import Celery

    app = Celery("celerydiag-test-backend", broker="memory://", backend=f"db+{url}", set_as_current=False)
    app.conf.update(database_table_names={"task": table, "group": f"{table}_group"},
                    broker_transport_options={"polling_interval": 0.01},
                    task_default_queue=f"{table}_queue", worker_hijack_root_logger=False)
    return app


def target_of(app: Any) -> Target:
    return Target(broker_url="memory://", backend_url=app.conf.result_backend, source=TargetSource.APP,
                  app=app, app_name="tests")


def drop(url: str, *tables: str) -> None:
    from sqlalchemy import text

    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            for table in tables:
                conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    finally:
        engine.dispose()


def precreate(url: str, table: str) -> None:
    """Celery's two tables under the test's names, with index names of their own.

    Celery's create_all would name the date_done indexes after its classes
    (ix_celery_taskmeta_date_done) whatever the table is called, and on PostgreSQL index names are
    per schema: two renamed tables (another test's, a real celery_taskmeta) collide. With the
    tables already there, Celery's create_all leaves them alone (and creates no sequence either,
    so the shared ones Celery's INSERTs use are created here when missing)."""
    from celery.backends.database.models import Task, TaskSet
    from sqlalchemy import MetaData, Table

    metadata = MetaData()
    for source, name in ((Task.__table__, table), (TaskSet.__table__, f"{table}_group")):
        columns = [c._copy() for c in source.columns]
        for column in columns:
            if column.name == "id":
                column.default = None  # not Celery's shared task_id_sequence
        Table(name, metadata, *columns)
    engine = engine_for(url)
    try:
        metadata.create_all(engine)
        if engine.dialect.supports_sequences:  # Celery's INSERTs name its shared sequences
            for source in (Task.__table__, TaskSet.__table__):
                source.c.id.default.create(engine, checkfirst=True)
    finally:
        engine.dispose()


@pytest.fixture
def task_table(db_url: str) -> Iterator[str]:
    table = f"cdtest_{uuid.uuid4().hex[:8]}_taskmeta"
    precreate(db_url, table)
    yield table
    drop(db_url, table, f"{table}_group")


def finding(report: Report, fid: str) -> Any:
    found = [f for f in report.findings if f.id == fid]
    assert found, f"no {fid} in {[f.id for f in report.findings]}; probes: {report.probes}"
    return found[0]


def test_lock_holder_is_named_with_its_wait(db_url: str, task_table: str) -> None:
    from celery.contrib.testing.worker import start_worker
    from sqlalchemy import text

    app = make_app(db_url, task_table)

    @app.task(name=f"celerydiag_test.write_row.{task_table}")
    def write_row() -> str:
        return "done"

    with start_worker(app, pool="solo", perform_ping_check=False, queues=[f"{task_table}_queue"],
                      shutdown_timeout=10):
        result = write_row.delay()
        assert result.get(timeout=20) == "done"
    task_id = result.id

    engine = engine_for(db_url)
    holder = engine.connect()
    waiter_error: list[BaseException] = []
    try:
        holder_id = holder.execute(text("SELECT pg_backend_pid()" if db_url.startswith("postgresql")
                                        else "SELECT CONNECTION_ID()")).scalar()
        holder.execute(text(f"SELECT * FROM {task_table} WHERE task_id = :t FOR UPDATE"), {"t": task_id})

        def second_writer() -> None:
            try:
                app.backend.store_result(task_id, {"current": 1}, "PROGRESS")
            except BaseException as exc:  # surfaced below; the writer may time out on MariaDB
                waiter_error.append(exc)

        writer = threading.Thread(target=second_writer, daemon=True)
        writer.start()
        time.sleep(0.5)  # the writer is now queued behind our row lock
        assert writer.is_alive(), f"the second writer did not wait: {waiter_error}"
        report = diagnose(target_of(app), [BackendProbe], budget_ms=1000, limits=LIMITS,
                          options=ProbeOptions(duration=2.0))
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    writer.join(20)
    assert not writer.is_alive()

    lock = finding(report, "backend.lock-wait")
    assert lock.severity >= Severity.WARNING, lock
    assert lock.evidence["blocker_id"] == str(holder_id)
    assert str(holder_id) in lock.title
    assert lock.evidence["wait_ms"] >= 1000, lock.evidence  # waited 0.5 s before + 2 s of sampling
    assert lock.impact_ms == pytest.approx(lock.evidence["wait_ms"], rel=0.01)
    assert lock.fix is not None and str(holder_id) in lock.fix.summary
    episode = lock.evidence["episodes"][0]
    assert episode["on_task_table"] is True and episode["seen_count"] >= 2
    server = finding(report, "backend.server")
    assert server.evidence["table"] == task_table and server.evidence["table_exists"] is True


def test_healthy_database_gives_no_warning_and_leaves_nothing(db_url: str, task_table: str,
                                                              check_report: Any) -> None:
    app = make_app(db_url, task_table)
    app.backend  # noqa: B018 - Celery sets up on the task table, as a real deployment has it
    report = diagnose(target_of(app), [BackendProbe], budget_ms=1000, limits=LIMITS, options=ProbeOptions(duration=1.0))
    assert [p.status.value for p in report.probes] == ["ran"], report.probes
    check_report(report.to_dict())
    loud = [(f.id, f.title) for f in report.findings if f.severity >= Severity.WARNING]
    assert not loud, loud
    assert finding(report, "backend.lock-wait").severity == Severity.OK
    # Celery indexes date_done on the tables it creates from 5.6.3; before, the probe measures the scan
    indexed = celery_version() >= DATE_DONE_INDEX_FROM
    assert (finding(report, "backend.date-done-index").severity == Severity.OK) == indexed
    write = finding(report, "backend.write-latency")
    phases = finding(report, "backend.row-contention").evidence["phases"]
    assert set(phases) == {"distinct_rows", "one_row", "one_row_with_fix"}
    for phase in phases.values():
        assert phase["writes_count"] > 0 and phase["writers_count"] == 4
        assert phase["deadlocks_count"] == 0
    assert 0 < write.evidence["write_ms"]["p50"] <= write.evidence["write_ms"]["p99"]
    read = finding(report, "backend.reconnect-per-read")
    assert read.evidence["fresh_connection_read_ms"]["p50"] > read.evidence["pooled_read_ms"]["p50"]
    assert scratch_tables(db_url, "celerydiag_*_bk_taskmeta") == []


def test_missing_date_done_index_is_measured(db_url: str, task_table: str) -> None:
    """A task table from before Celery 5.6.3 (no date_done index): the probe times the cleanup scan."""
    from sqlalchemy import text

    app = make_app(db_url, task_table)
    from sqlalchemy import inspect

    engine = engine_for(db_url)
    try:
        # Celery creates the index from 5.6.3 (one to drop); before, its table has none already
        indexes = [i["name"] for i in inspect(engine).get_indexes(task_table) if i["column_names"] == ["date_done"]]
        assert len(indexes) == (celery_version() >= DATE_DONE_INDEX_FROM), indexes
        for index in indexes:
            with engine.begin() as conn:
                conn.execute(text(f"DROP INDEX {index}" + ("" if db_url.startswith("postgresql")
                                                           else f" ON {task_table}")))
    finally:
        engine.dispose()
    report = diagnose(target_of(app), [BackendProbe], limits=Limits(samples=30, max_seconds=3),
                      options=ProbeOptions(duration=0.3))
    index = finding(report, "backend.date-done-index")
    assert index.severity != Severity.OK
    assert index.evidence["scan_ms"] > 0 and index.evidence["scan_cut_by_timeout"] is False
    assert f"ON {task_table} (date_done)" in index.fix.summary
