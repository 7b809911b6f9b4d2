"""The serialization probe reading real results that Celery's own database backend stored in
PostgreSQL and MariaDB, in scratch tables named through ``database_table_names`` (never a real
``celery_taskmeta``), dropped afterwards; and proof that the probe writes nothing."""

from __future__ import annotations

import os
import random
import sys

import pytest

from celerydiag.errors import InputError
from celerydiag.probe import ProbeContext, run_probe
from celerydiag.serialization.probe import SerializationProbe
from celerydiag.serialization.stored import read_task_meta
from celerydiag.target import resolve_target

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from tests.conftest import check_finding_document  # noqa: E402

pytestmark = [pytest.mark.integration]

DATABASES = [pytest.param("pg_url", marks=pytest.mark.postgres, id="postgres"),
             pytest.param("mysql_url", marks=pytest.mark.mariadb, id="mariadb")]


def _meta(floats: int) -> dict:
    rng = random.Random(floats)
    return {"current": floats, "total": floats, "values": [round(rng.random(), 6) for _ in range(floats)]}


def _engine(url: str):  # noqa: ANN202
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from celerydiag.access.backend import connect_timeout_args

    return create_engine(url, poolclass=NullPool, connect_args=connect_timeout_args(url, 5))


def _has_table(url: str, name: str, schema: str | None = None) -> bool:
    from sqlalchemy import inspect

    engine = _engine(url)
    try:
        if schema and not inspect(engine).has_schema(schema):
            return False
        return inspect(engine).has_table(name, schema=schema)
    finally:
        engine.dispose()


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, scratch: str):  # noqa: ANN201
    """(SQLAlchemy URL, target with scratch table names); drops the tables after the test."""
    from sqlalchemy import text

    url = request.getfixturevalue(request.param)
    base = scratch.replace("-", "_")
    names = {"task": f"{base}_task", "group": f"{base}_group"}
    target = resolve_target(broker="memory://", backend=f"db+{url}")
    target.conf.database_table_names = names
    postgres = url.startswith("postgresql")
    engine = _engine(url)
    if postgres:
        # Celery 5.7 names the date_done index ix_celery_taskmeta_date_done whatever the table
        # name, and PostgreSQL index names are per schema: a scratch schema avoids the clash
        # with any real celery_taskmeta in the same database (and takes the sequence with it).
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {base}"))
        target.conf.database_table_schemas = {"task": base, "group": base}
    try:
        yield url, target, names, (base if postgres else None)
    finally:
        with engine.begin() as conn:
            if postgres:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {base} CASCADE"))
            else:
                for table in names.values():
                    conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
    schema = base if postgres else None
    assert not any(_has_table(url, t, schema) for t in names.values()), "scratch tables leaked"


def test_probe_reads_recent_results_from_the_task_table(database, scratch: str) -> None:  # noqa: ANN001
    from sqlalchemy import text

    url, target, names, schema = database
    table = f"{schema}.{names['task']}" if schema else names["task"]
    backend = target.app.backend  # Celery creates the scratch tables on first use
    ids = {f"{scratch}-{n}": n for n in (5, 300, 2_000)}  # MariaDB's BLOB holds 64 KiB at most
    for task_id, floats in ids.items():
        backend.store_result(task_id, _meta(floats), "PROGRESS")
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            largest = conn.execute(text(f"SELECT max(length(result)) FROM {table}")).scalar()
            rows_before = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
    finally:
        engine.dispose()

    result = run_probe(SerializationProbe(), ProbeContext(target=target, budget_ms=1000))

    assert str(result.status) == "ran", result.reason
    (finding,) = result.findings
    check_finding_document(finding.to_dict())
    assert finding.id == "serialization.stored-meta"
    ev = finding.evidence
    assert ev["metas_count"] == 3 and rows_before == 3
    assert ev["max_bytes"] == largest > 15_000
    assert ev["measured_bytes"] == largest  # the result column holds result_serializer bytes (5.7)
    assert table in finding.detail and f"{scratch}-2000" in finding.detail
    assert finding.impact_ms == pytest.approx(ev["update_ms"]) and finding.impact_ms > 0

    payload = read_task_meta(target, f"{scratch}-300", timeout_s=5, max_bytes=1 << 20)
    assert payload.stored == _meta(300)  # what Celery stored, decoded the way Celery reads it
    assert payload.name == f"backend:{scratch}-300"


def test_probe_writes_nothing_not_even_a_missing_table(database) -> None:  # noqa: ANN001
    url, target, names, schema = database
    table = f"{schema}.{names['task']}" if schema else names["task"]

    result = run_probe(SerializationProbe(), ProbeContext(target=target, budget_ms=1000))

    (finding,) = result.findings
    assert finding.id == "serialization.standard-meta"
    assert f"no task table {table} yet" in finding.detail
    with pytest.raises(InputError, match="no task table"):
        read_task_meta(target, "no-such-task", timeout_s=5, max_bytes=1 << 20)
    assert not _has_table(url, names["task"], schema)  # Celery's backend would have created it


def test_a_login_failure_is_unreachable_not_a_missing_task_table(pg_url: str, run_cli) -> None:  # noqa: ANN001
    """PostgreSQL says 'role "x" does not exist': that is the target refusing us (exit 3), not
    'no task table' (exit 2 with a hint about database_table_names)."""
    host_db = pg_url.split("@", 1)[1]
    done = run_cli("bench-serialize", "--backend", f"db+postgresql+psycopg://celerydiag_no_such_role@{host_db}",
                   "--from-backend", "some-task-id", timeout=60)
    assert done.returncode == 3, done.stderr
    assert "no_such_role" in done.stderr and "no task table" not in done.stderr
    assert "Traceback" not in done.stderr
