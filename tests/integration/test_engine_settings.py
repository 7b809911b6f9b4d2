"""Two user settings that stopped the measuring probes (backend, e2e) with an internal error, on the
real PostgreSQL, MariaDB and SQLite.

- ``result_extended = True``: Celery's ``TaskExtended.to_dict`` calls ``super().to_dict()``; our
  scratch model is no TaskExtended subclass, so every read raised ``TypeError: super(type, obj)``.
  Now the probes run, and the scratch backend reads back the extended columns Celery wrote.
- ``database_engine_options = {'autocommit': True}``: SQLAlchemy 2 rejects it in create_engine()
  (the config probe's critical config.db-autocommit). The measuring probes now skip with one line
  naming the setting and the fix, instead of "internal error".
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from celerydiag.backend.probe import BackendProbe
from celerydiag.e2e.probe import E2EProbe
from celerydiag.findings import ProbeStatus
from celerydiag.probe import Limits, ProbeContext, run_probe
from celerydiag.target import Target, TargetSource

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKEND_LIMITS = Limits(samples=40, max_seconds=15, timeout_s=5)
E2E_LIMITS = Limits(updates=40, max_seconds=20, timeout_s=5)


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mariadb), "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLAlchemy URL of each database in turn (SQLite: a file of the test's own)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/results.sqlite"
    return request.getfixturevalue("pg_url" if request.param == "postgres" else "mysql_url")


def target_with(broker: str, url: str, **settings: Any) -> Target:
    """A target whose app carries ``settings``, the way a user's celeryconfig does."""
    from celery import Celery

    app = Celery("celerydiag-test-settings", broker=broker, backend=f"db+{url}", set_as_current=False)
    app.conf.update(**settings)
    return Target(broker_url=broker, backend_url=app.conf.result_backend, source=TargetSource.APP,
                  app=app, app_name="tests")


def test_backend_probe_runs_with_result_extended(db_url: str, scratch: str) -> None:
    target = target_with("memory://", db_url, result_extended=True)
    result = run_probe(BackendProbe(), ProbeContext(target, limits=BACKEND_LIMITS, scratch=scratch))
    assert result.status == ProbeStatus.RAN, result.reason
    write = next(f for f in result.findings if f.id == "backend.write-latency")
    assert write.evidence["writes_count"] > 0


def test_scratch_backend_reads_back_the_extended_columns(db_url: str) -> None:
    """Celery's own store_result with a request, then get_task_meta: name/args/worker/queue come back."""
    from celery import Celery

    from celerydiag.access.backend import engine
    from celerydiag.backend.scratch import scratch_backend, scratch_model

    app = Celery("celerydiag-test-extended", broker="memory://", backend=f"db+{db_url}", set_as_current=False)
    app.conf.result_extended = True
    model = scratch_model(f"cdtest_{uuid.uuid4().hex[:8]}_ext_taskmeta", None, extended=True)
    db = engine(db_url, 5)
    model.__table__.create(db)
    try:
        backend = scratch_backend(app, db_url, model, {}, forked=False)

        class Request:
            id = task = "cdtest-extended"
            args, kwargs = [1, 2], {"k": "v"}
            hostname, retries, delivery_info = "w1@host", 1, {"routing_key": "q1"}
            ignore_result = False
            group = parent_id = root_id = None

        backend.store_result("cdtest-extended", {"i": 3}, "PROGRESS", request=Request())
        meta = backend.get_task_meta("cdtest-extended")
        assert meta["status"] == "PROGRESS" and meta["result"] == {"i": 3}
        assert (meta["name"], meta["worker"], meta["retries"], meta["queue"]) == \
            ("cdtest-extended", "w1@host", 1, "q1")
        assert meta["args"] == [1, 2] and meta["kwargs"] == {"k": "v"}
    finally:
        model.__table__.drop(db)
        db.dispose()


@pytest.mark.mariadb
def test_e2e_probe_runs_with_result_extended(amqp_url: str, mysql_url: str, scratch: str) -> None:
    target = target_with(amqp_url, mysql_url, result_extended=True)
    result = run_probe(E2EProbe(), ProbeContext(target, limits=E2E_LIMITS, scratch=scratch))
    assert result.status == ProbeStatus.RAN, result.reason
    poll = next(f for f in result.findings if f.id == "e2e.visibility-poll")
    assert poll.evidence["samples"] > 0, poll.title


@pytest.mark.mariadb
@pytest.mark.parametrize("probe", [BackendProbe(), E2EProbe()], ids=["backend", "e2e"])
def test_autocommit_engine_option_skips_with_the_fix(probe: Any, amqp_url: str, mysql_url: str,
                                                     scratch: str) -> None:
    target = target_with(amqp_url, mysql_url, database_engine_options={"autocommit": True})
    result = run_probe(probe, ProbeContext(target, limits=BACKEND_LIMITS, scratch=scratch))
    assert result.status == ProbeStatus.SKIPPED, result.reason
    assert "internal error" not in result.reason and "\n" not in result.reason
    assert "database_engine_options 'autocommit'" in result.reason
    assert "remove 'autocommit' from database_engine_options" in result.reason
