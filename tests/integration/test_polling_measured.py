"""The polling probe measures how clients really poll: a real client reads a real task's state
every POLL_S on PostgreSQL, MariaDB and Redis, and the probe, counting the backend's own read
counters over its window, must find about that interval (a loose band: the counters' edges and
machine load move it, the order of magnitude must not); with no poller it must say so.

Each backend gets its own task table (or a Redis of its own): the per-table counters then see this
test's client only. MariaDB's per-table counters need performance_schema, which the shared server
has off (and we never restart it), so a private mariadbd with it on runs for the table path; the
shared server is used for the server-wide fallback, where other clients' SELECTs can only make
the measured interval shorter. A private redis-server is used for the same reason: INFO
commandstats counts every client of the server.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celerydiag.findings import Kind, Severity
from celerydiag.polling.probe import PollingProbe
from celerydiag.probe import Limits, ProbeContext, ProbeOptions, run_probe
from celerydiag.target import Target, TargetSource
from tests.integration.test_backend_db import drop, precreate
from tests.support.redis_server import private_redis as start_private_redis
from tests.support.watch import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLL_S = 0.25  # the client's poll interval
WINDOW_S = 4.0  # the probe's --duration
POLLER_MAX_S = 30.0  # the poller stops by itself after this, whatever happens
LOW, HIGH = 0.4, 2.5  # the measured interval must fall within [LOW, HIGH] x POLL_S


def _app(url: str, table: str | None = None) -> Any:
    from celery import Celery

    backend = url if url.startswith("redis") else f"db+{url}"  # the conftest URLs are SQLAlchemy's
    app = Celery("measured", broker="memory://", backend=backend, set_as_current=False)
    if table:
        app.conf.database_table_names = {"task": table, "group": f"{table}_group"}
    app.conf.update(redis_socket_timeout=5, redis_socket_connect_timeout=2, result_expires=600)
    return app


def _target(app: Any) -> Target:
    return Target(broker_url="memory://", backend_url=app.conf.result_backend, source=TargetSource.APP,
                  app=app, app_name="tests")


class Poller:
    """A client polling ``AsyncResult(task_id).state`` every POLL_S on its own app, bounded."""

    def __init__(self, app: Any, task_id: str) -> None:
        self.app, self.task_id, self.reads = app, task_id, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + POLLER_MAX_S
        while not self.stop.is_set() and time.monotonic() < end:
            assert self.app.AsyncResult(self.task_id).state == "PROGRESS"
            self.reads += 1
            self.stop.wait(POLL_S)

    def __enter__(self) -> Poller:
        self.thread.start()
        time.sleep(1.2)  # past the first reads (table creation, connect) and one stats flush
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _probe(app: Any) -> dict[str, Any]:
    result = run_probe(PollingProbe(), ProbeContext(target=_target(app), limits=Limits(max_seconds=20),
                                                    options=ProbeOptions(duration=WINDOW_S)))
    assert str(result.status) == "ran", result.reason
    return {f.id: f for f in result.findings}


def _in_flight_task(app: Any) -> str:
    task_id = f"measured-{uuid.uuid4()}"
    app.backend.store_result(task_id, {"step": 1}, "PROGRESS")
    return task_id


def _assert_measured_near_poll_interval(found: dict[str, Any], source: str) -> float:
    reads = found["polling.measured-reads"]
    assert reads.evidence["source"] == source, reads.evidence
    interval_s = reads.evidence["poll_interval_ms"] / 1000
    assert LOW * POLL_S <= interval_s <= HIGH * POLL_S, reads.evidence
    delay = found["polling.detection-delay"]
    assert delay.kind is Kind.MEASURED
    assert delay.impact_ms == pytest.approx(0.99 * interval_s * 1000, rel=0.01)  # fixed interval: P99 = 0.99 T
    return interval_s


def _assert_no_pollers(found: dict[str, Any]) -> None:
    reads = found["polling.measured-reads"]
    assert reads.severity is Severity.OK and reads.evidence["client_reads_count"] == 0, reads.evidence
    assert "no client read" in reads.title
    rest = [f for f in found.values() if f.id != "polling.measured-reads"]
    assert rest and all(f.severity <= Severity.INFO for f in rest), rest
    assert "polling.detection-delay" not in found or found["polling.detection-delay"].kind is Kind.MODELLED


@pytest.fixture
def table() -> str:
    return f"cdiag_poll_{uuid.uuid4().hex[:8]}"


def _own_table(url: str, table: str) -> None:
    """The test's task table with index names of its own (see precreate), before Celery's first write."""
    precreate(url, table)


# ---- PostgreSQL ---------------------------------------------------------------------------------

@pytest.mark.postgres
def test_postgresql_poll_interval_is_measured_from_the_task_table(pg_url: str, table: str) -> None:
    _own_table(pg_url, table)
    app = _app(pg_url, table)
    try:
        task_id = _in_flight_task(app)
        _assert_no_pollers(_probe(app))
        with Poller(_app(pg_url, table), task_id) as poller:
            found = _probe(app)
        assert poller.reads > 0
        _assert_measured_near_poll_interval(found, "pg_stat_user_tables")
        assert found["polling.measured-reads"].evidence["tasks_in_flight_count"] == 1
    finally:
        drop(pg_url, table, f"{table}_group")


# ---- MariaDB --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def private_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A mariadbd of our own with performance_schema on (the shared one has it off), stopped by pid."""
    install, server = shutil.which("mariadb-install-db"), shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    if not install or not Path(server).exists():
        pytest.skip("mariadb-install-db/mariadbd not installed (scripts/system-packages.sh installs them)")
    root = tmp_path_factory.mktemp("mariadb")
    data = root / "data"
    subprocess.run([install, "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method=normal",
                    "--skip-test-db", "--user=root"], check=True, capture_output=True, timeout=120)
    port = free_port()
    proc = subprocess.Popen([server, "--no-defaults", f"--datadir={data}", f"--port={port}",
                             "--bind-address=127.0.0.1", f"--socket={root}/s.sock", f"--pid-file={root}/p.pid",
                             "--performance-schema=ON", "--skip-log-bin", "--user=root",
                             "--innodb-buffer-pool-size=32M"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import pymysql

        for _ in range(150):
            try:
                conn = pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=1)
                with conn.cursor() as cur:
                    cur.execute("CREATE DATABASE IF NOT EXISTS test")
                conn.close()
                break
            except pymysql.err.OperationalError:
                time.sleep(0.1)
        yield f"mysql+pymysql://root@127.0.0.1:{port}/test"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.mariadb
def test_mariadb_poll_interval_is_measured_from_performance_schema(private_mariadb: str, table: str) -> None:
    _own_table(private_mariadb, table)
    app = _app(private_mariadb, table)
    task_id = _in_flight_task(app)
    _assert_no_pollers(_probe(app))
    with Poller(_app(private_mariadb, table), task_id):
        found = _probe(app)
    _assert_measured_near_poll_interval(found, "performance_schema")
    assert found["polling.measured-reads"].evidence["scope"] == "table"


@pytest.mark.mariadb
def test_mariadb_without_performance_schema_counts_server_wide_selects(mysql_url: str, table: str) -> None:
    """The shared server (performance_schema off): every SELECT on it counts, so the measured
    interval can only come out shorter than the client's, never longer, and it says so."""
    _own_table(mysql_url, table)
    app = _app(mysql_url, table)
    try:
        task_id = _in_flight_task(app)
        with Poller(_app(mysql_url, table), task_id):
            found = _probe(app)
        reads = found["polling.measured-reads"]
        assert reads.evidence["source"] == "global_status" and reads.evidence["scope"] == "server"
        assert reads.evidence["client_reads_count"] > 0
        assert reads.evidence["poll_interval_ms"] / 1000 <= HIGH * POLL_S, reads.evidence
        assert any("performance_schema is off" in note for note in reads.evidence["notes"])
        modelled = found["polling.detection-delay"]  # a lower bound from other queries too: never a warning
        assert modelled.kind is Kind.MODELLED and modelled.severity <= Severity.INFO
    finally:
        drop(mysql_url, table, f"{table}_group")


# ---- Redis ----------------------------------------------------------------------------------------

@pytest.fixture
def private_redis() -> Iterator[str]:
    """A redis-server of our own: INFO commandstats counts every client of a server."""
    with start_private_redis() as url:
        yield url


@pytest.mark.redis
def test_redis_poll_interval_is_measured_from_commandstats(private_redis: str) -> None:
    """Two tasks in PROGRESS, one polled: the other (a task whose worker died) is untouched for the
    whole window (OBJECT IDLETIME), so the reads are spread over the polled one only."""
    app = _app(private_redis)
    task_id = _in_flight_task(app)
    _in_flight_task(app)  # abandoned: nobody reads or writes it again
    _assert_no_pollers(_probe(app))
    with Poller(_app(private_redis), task_id):
        time.sleep(2.0)  # the abandoned key's idle time grows past the window (the LRU clock ticks per second)
        found = _probe(app)
    _assert_measured_near_poll_interval(found, "commandstats")
    reads = found["polling.measured-reads"]
    assert reads.evidence["tasks_in_flight_count"] == 1, reads.evidence
    assert any("untouched for the whole window" in note for note in reads.evidence["notes"])


class Writer(Poller):
    """A worker's progress: a PROGRESS write to the task every 0.1 s, bounded, and no reader."""

    def _run(self) -> None:
        end = time.monotonic() + POLLER_MAX_S
        while not self.stop.is_set() and time.monotonic() < end and self.reads < 300:
            self.app.backend.store_result(self.task_id, {"step": self.reads}, "PROGRESS")
            self.reads += 1
            self.stop.wait(0.1)


@pytest.mark.parametrize("backend", ["pg", "mariadb", "redis"])
def test_a_workers_own_writes_are_not_counted_as_polls(backend: str, request: pytest.FixtureRequest) -> None:
    """Celery 5.7 looks a row up twice and updates it by id on every state write (three scans or
    fetches), and GETs a Redis key before each SET: none of that is a client polling."""
    url = {"pg": "pg_url", "mariadb": "private_mariadb", "redis": "private_redis"}[backend]
    url = request.getfixturevalue(url)
    table = None if backend == "redis" else f"cdiag_poll_{uuid.uuid4().hex[:8]}"
    if table:
        precreate(url, table)
    try:
        app = _app(url, table)
        task_id = _in_flight_task(app)
        with Writer(_app(url, table), task_id) as writer:
            found = _probe(app)
        reads = found["polling.measured-reads"]
        assert writer.reads > 10 and reads.evidence["state_writes_count"] > 0, reads.evidence
        # a Redis write is two commands: one whose GET falls before the window's end and its SET
        # after it counts one read; a database write is one transaction, flushed as one
        assert reads.evidence["client_reads_count"] <= (1 if backend == "redis" else 0), reads.evidence
        assert "polling.detection-delay" not in found or found["polling.detection-delay"].severity <= Severity.INFO
    finally:
        if table:
            drop(url, table, f"{table}_group")
