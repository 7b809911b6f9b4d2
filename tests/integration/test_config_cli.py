"""The config probe from the outside: the real console script on the fixture apps (no services
needed: --static opens no connection), and its database fixes applied through Celery's own
SessionManager on the real MariaDB and PostgreSQL, so "READ COMMITTED fixes it" and "this DDL
creates the index" are checked on the servers, not assumed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from celerydiag.compat import celery_version
from celerydiag.config.fixes import index_ddl, recommended_engine_options
from celerydiag.config.probe import DATE_DONE_INDEX_FROM, Facts, check_config
from celerydiag.target import Target, TargetSource

REPO = Path(__file__).resolve().parents[2]  # fixtures.apps.* import from the repository root


def _doctor(run_cli: Any, *args: str) -> Any:
    return run_cli("doctor", "--static", *args, cwd=REPO, timeout=120)


def test_mysql_rr_app_is_a_warning_exit_0_by_default(run_cli: Any, check_report: Any) -> None:
    proc = _doctor(run_cli, "-A", "fixtures.apps.mysql_rr:app", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    check_report(doc)
    found = {f["id"]: f for f in doc["findings"]}
    assert found["config.db-isolation"]["severity"] == "warning"
    assert "READ COMMITTED" in found["config.db-isolation"]["fix"]["config"]
    assert doc["target"]["source"] == "app"
    assert "Traceback" not in proc.stderr


def test_mysql_rr_app_fails_on_warning(run_cli: Any) -> None:
    proc = _doctor(run_cli, "-A", "fixtures.apps.mysql_rr:app", "--format", "json", "--fail-on", "warning")
    assert proc.returncode == 1, proc.stderr
    json.loads(proc.stdout)


def _config_findings(proc: Any) -> dict[str, str]:
    """This probe's findings only: other static probes (polling) add their own."""
    return {f["id"]: f["severity"] for f in json.loads(proc.stdout)["findings"] if f["cause"] == "config"}


def test_pasted_fix_clears_the_warning(run_cli: Any) -> None:
    proc = _doctor(run_cli, "-A", "fixtures.apps.mysql_rc:app", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    found = _config_findings(proc)
    assert found["config.db-isolation"] == "ok"
    if celery_version() < DATE_DONE_INDEX_FROM:  # a real hazard on MySQL, fixed by DDL, not by config
        assert found.pop("config.db-date-done-index") == "warning", found
    assert not [fid for fid, sev in found.items() if sev in ("warning", "critical")], found


def test_postgres_app_gets_no_isolation_advice(run_cli: Any) -> None:
    proc = _doctor(run_cli, "-A", "fixtures.apps.pg:app", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert _config_findings(proc)["config.db-isolation"] == "ok"
    for finding in json.loads(proc.stdout)["findings"]:
        assert "READ COMMITTED" not in ((finding["fix"] or {}).get("config") or "").upper(), finding["id"]


def test_broken_app_is_usage_error_in_one_line(run_cli: Any) -> None:
    proc = _doctor(run_cli, "-A", "fixtures.apps.broken")
    assert proc.returncode == 2
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("celerydiag: error:")]
    assert len(errors) == 1 and "fixtures.apps.broken" in errors[0], proc.stderr
    assert "ImportError" in errors[0] or "ModuleNotFoundError" in errors[0]
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 2, proc.stderr


def test_junit_lists_what_passed(run_cli: Any) -> None:
    proc = _doctor(run_cli, "-A", "fixtures.apps.mysql_rc:app", "--format", "junit", "--fail-on", "critical")
    assert proc.returncode == 0, proc.stderr
    assert "config.db-isolation" in proc.stdout and "config.pickle-accepted" in proc.stdout


# ---- the fixes on the real servers -----------------------------------------------------------

def _app_target(backend: str, **conf: Any) -> Target:
    from celery import Celery

    app = Celery("cfgint", broker="memory://", backend=backend, set_as_current=False)
    app.conf.update(database_create_tables_at_setup=False, **conf)  # never touch result tables
    return Target("memory://", backend, TargetSource.APP, app)


def _client_isolation(sqlalchemy_url: str, engine_options: dict[str, Any]) -> str:
    """The isolation a non-forked client really gets: Celery's SessionManager, NullPool path,
    asked of the server by the dialect (MariaDB spells the variable tx_isolation)."""
    from celery.backends.database.session import SessionManager

    engine = SessionManager().get_engine(sqlalchemy_url, **engine_options)
    try:
        with engine.connect() as conn:
            return str(conn.get_isolation_level())
    finally:
        engine.dispose()


def _fix_namespace(finding_config: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(finding_config, namespace)  # noqa: S102 (the probe's own pasteable text)
    namespace.pop("__builtins__", None)
    return namespace


@pytest.mark.integration
@pytest.mark.mariadb
def test_isolation_fix_gives_read_committed_on_mariadb(mysql_url: str) -> None:
    import celery
    import sqlalchemy

    from celerydiag.compat import version_tuple

    target = _app_target("db+" + mysql_url)
    facts = Facts(version_tuple(celery.__version__), version_tuple(sqlalchemy.__version__))
    found = {f.id: f for f in check_config(target, facts)}
    before = _client_isolation(mysql_url, dict(target.conf.database_engine_options or {}))  # None before 5.6.3
    assert before == "REPEATABLE READ", "the premise of config.db-isolation: the server default"
    options = _fix_namespace(found["config.db-isolation"].fix.config)["database_engine_options"]
    assert _client_isolation(mysql_url, options) == "READ COMMITTED"


@pytest.mark.integration
@pytest.mark.postgres
def test_postgres_fix_keeps_read_committed_and_connects(pg_url: str) -> None:
    target = _app_target("db+" + pg_url)
    facts = Facts((5, 7, 0), (2, 1, 9))
    options = recommended_engine_options(target.conf, target, facts.celery)
    assert "isolation_level" not in options and options["connect_args"] == {"connect_timeout": 5}
    assert _client_isolation(pg_url, options) == "READ COMMITTED"


@pytest.mark.integration
@pytest.mark.mariadb
def test_autocommit_really_crashes_the_backend(mysql_url: str) -> None:
    """The premise of config.db-autocommit (critical): Celery's own store_result raises."""
    target = _app_target("db+" + mysql_url, database_engine_options={"autocommit": True})
    with pytest.raises(TypeError, match="autocommit"):
        target.app.backend.store_result(f"celerydiag-test-{uuid.uuid4().hex}", None, "PROGRESS")


def _index_ddl_runs(sqlalchemy_url: str) -> None:
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.pool import NullPool

    from celerydiag.access.backend import connect_timeout_args

    prefix = f"celerydiag_test_{uuid.uuid4().hex[:8]}"
    names = {"task": f"{prefix}_task", "group": f"{prefix}_group"}
    target = _app_target("db+" + sqlalchemy_url, database_table_names=names)
    engine = create_engine(sqlalchemy_url, poolclass=NullPool, connect_args=connect_timeout_args(sqlalchemy_url, 5))
    try:
        with engine.begin() as conn:
            for name in names.values():  # a table as Celery < 5.6.3 made it: date_done, no index
                conn.execute(text(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, date_done TIMESTAMP NULL)"))
        try:
            with engine.begin() as conn:
                for statement in index_ddl(target.conf).splitlines():
                    conn.execute(text(statement.rstrip(";")))
            inspector = inspect(engine)
            for name in names.values():
                indexed = {tuple(ix["column_names"]) for ix in inspector.get_indexes(name)}
                assert ("date_done",) in indexed, (name, indexed)
        finally:
            with engine.begin() as conn:
                for name in names.values():
                    conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
    finally:
        engine.dispose()


@pytest.mark.integration
@pytest.mark.mariadb
def test_index_ddl_runs_on_mariadb(mysql_url: str) -> None:
    _index_ddl_runs(mysql_url)


@pytest.mark.integration
@pytest.mark.postgres
def test_index_ddl_runs_on_postgres(pg_url: str) -> None:
    _index_ddl_runs(pg_url)
