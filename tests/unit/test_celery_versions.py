"""Every config check whose verdict depends on the Celery version, against the Celery installed
here (issue 16, point 3). ``make test-matrix`` runs this file in one virtualenv per Celery 5.3..5.7.

Each test makes the installed Celery do the thing the check is about (build its engine on the
NullPool path, create its tables, construct its backends and ask them what they retry) and
asserts that the check, given the installed version through ``Facts.installed`` (celery.__version__
as the package reports it, never a patched string), says what that Celery actually did. So a
version boundary in config/probe.py or config/fixes.py that is wrong for one release fails in
that release's venv. No service is needed: SQLite files under tmp_path, and Redis backends that
are constructed but never connect.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import celery
import pytest
from celery import Celery

from celerydiag.compat import celery_version, own_session_manager, version_tuple
from celerydiag.config.fixes import NULLPOOL_FILTER_FROM, recommended_engine_options
from celerydiag.config.probe import (
    DATE_DONE_INDEX_FROM,
    DB_RETRY_DEFAULT_ON_FROM,
    RETRY_EFFECTIVE_FROM,
    Facts,
    check_always_retry,
    check_date_done_index,
    check_nullpool_options,
)
from celerydiag.findings import Kind, Severity
from celerydiag.target import Target, TargetSource

INSTALLED = version_tuple(celery.__version__)
MYSQL = "db+mysql+pymysql://u@127.0.0.1:3306/test"
PG = "db+postgresql+psycopg://u@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


def facts() -> Facts:
    return Facts.installed(celery_version())


def target(backend: str, **conf: Any) -> Target:
    app = Celery("versions", broker="memory://", backend=backend, set_as_current=False)
    app.conf.update(conf)
    return Target(broker_url="memory://", backend_url=backend, source=TargetSource.APP, app=app)


@pytest.fixture
def db_backend(tmp_path) -> Iterator[Any]:
    """``make(**conf)``: Celery's own DatabaseBackend on a SQLite file, as a client process has it
    (not forked: the NullPool path)."""
    from celery.backends.database import DatabaseBackend

    made: list[Any] = []

    def make(**conf: Any) -> Any:
        url = f"sqlite:///{tmp_path}/results-{len(made)}.db"
        app = Celery("versions", broker="memory://", backend=f"db+{url}", set_as_current=False)
        app.conf.update(conf)
        backend = DatabaseBackend(app=app, url=url)
        # Before 5.5 every DatabaseBackend shares one SessionManager, whose "tables created" flag
        # would then skip creating this file's tables: give each its own, as 5.5+ does.
        backend.ResultSession = functools.partial(DatabaseBackend.ResultSession, backend,
                                                  own_session_manager(backend))
        made.append(backend)
        return backend

    yield make


def test_the_installed_version_is_what_the_checks_are_given() -> None:
    assert facts().celery == INSTALLED and INSTALLED >= (5, 3)


def test_nullpool_option_check_matches_what_celery_does(db_backend) -> None:
    """A.2 / G.5: before 5.6.3 max_overflow reaches create_engine(poolclass=NullPool) and every
    state write outside a forked worker raises TypeError; the check says so exactly then."""
    options = {"max_overflow": 3, "echo_pool": True}
    # create_tables_at_setup (5.5+) would hit the crash in the constructor; the write below hits it in all
    backend = db_backend(database_engine_options=options, database_create_tables_at_setup=False)
    try:
        backend.store_result("versions-nullpool", {"step": 1}, "PROGRESS")
        crashed = False
    except TypeError:
        crashed = True
    assert crashed == (INSTALLED < NULLPOOL_FILTER_FROM), celery.__version__
    found = list(check_nullpool_options(target(PG, database_engine_options=options).conf,
                                        target(PG, database_engine_options=options), facts()))
    assert bool(found) == crashed, [f.id for f in found]
    if crashed:
        assert found[0].severity is Severity.CRITICAL
    # and the recommended options (what every database fix pastes) no longer crash this Celery
    fixed = recommended_engine_options(target(PG, database_engine_options=options).conf, target(PG), INSTALLED)
    backend = db_backend(database_engine_options={k: v for k, v in fixed.items() if k != "connect_args"},
                         database_create_tables_at_setup=False)
    backend.store_result("versions-nullpool-fixed", {"step": 1}, "PROGRESS")


def test_date_done_index_check_matches_the_tables_celery_creates(db_backend) -> None:
    """E / G.1: Celery creates celery_taskmeta with an index on date_done only from 5.6.3; the
    check calls the missing index a hazard on MySQL exactly when this Celery creates none."""
    import sqlalchemy as sa

    backend = db_backend()
    backend.store_result("versions-index", 1, "SUCCESS")  # the first use creates Celery's tables
    engine = sa.create_engine(backend.url)
    try:
        indexed = {col for ix in sa.inspect(engine).get_indexes("celery_taskmeta") for col in ix["column_names"]}
    finally:
        engine.dispose()
    has_index = "date_done" in indexed
    assert has_index == (INSTALLED >= DATE_DONE_INDEX_FROM), (celery.__version__, indexed)
    mysql = target(MYSQL)
    (finding,) = check_date_done_index(mysql.conf, mysql, facts())
    # a missing index on InnoDB is a hazard (cleanup locks out writes); with one, a reminder only
    assert (finding.kind is Kind.HAZARD) == (not has_index), (finding.kind, finding.title)


def test_database_retry_default_check_matches_the_backend(db_backend) -> None:
    """Celery 5.7's DatabaseBackend retries by default (always_retry on, 3 tries) unless the
    setting is given; the check warns about an explicit False exactly where that default exists."""
    default_on = bool(db_backend().always_retry)
    assert default_on == (INSTALLED >= DB_RETRY_DEFAULT_ON_FROM), celery.__version__
    explicit_off = db_backend(result_backend_always_retry=False)
    assert not explicit_off.always_retry
    db = target(PG, result_backend_always_retry=False)
    found = list(check_always_retry(db.conf, db, facts()))
    assert bool(found) == default_on, [f.title for f in found]
    if default_on:
        assert db_backend().max_retries == 3


def _retry_verdict(t: Target) -> Severity:
    (finding,) = check_always_retry(t.conf, t, facts())
    return finding.severity


def test_always_retry_on_the_database_backend_is_effective_when_celery_retries(db_backend) -> None:
    """A.2: result_backend_always_retry retries only what exception_safe_to_retry accepts; the
    database backend has one from 5.6.3. The check says "does nothing" exactly when it has none."""
    from sqlalchemy.exc import OperationalError

    backend = db_backend(result_backend_always_retry=True)
    retried = bool(backend.exception_safe_to_retry(OperationalError("UPDATE", {}, Exception("gone away"))))
    assert retried == (INSTALLED >= RETRY_EFFECTIVE_FROM["db"]), celery.__version__
    # a finite limit: an infinite one is a hazard of its own (config.always-retry, unbounded)
    verdict = _retry_verdict(target(PG, result_backend_always_retry=True, result_backend_max_retries=3))
    assert (verdict is Severity.OK) == retried, verdict


def test_always_retry_on_redis_is_effective_when_celery_retries() -> None:
    """A.1: the Redis backend retries connection errors under always_retry from 5.5.0."""
    import redis
    from celery.backends.redis import RedisBackend

    app = Celery("versions", broker="memory://", backend=REDIS, set_as_current=False)
    app.conf.result_backend_always_retry = True
    backend = RedisBackend(app=app, url=REDIS)  # constructing does not connect
    retried = bool(backend.exception_safe_to_retry(redis.exceptions.ConnectionError("reset")))
    assert retried == (INSTALLED >= RETRY_EFFECTIVE_FROM["redis"]), celery.__version__
    verdict = _retry_verdict(target(REDIS, result_backend_always_retry=True, result_backend_max_retries=3))
    assert (verdict is Severity.OK) == retried, verdict


def test_engine_option_fix_keeps_this_celerys_defaults() -> None:
    """5.6.3 added database_engine_options defaults (pool_pre_ping, pool_recycle); a user's dict
    replaces them, so the one dict every database fix pastes must carry them on, never drop them."""
    db = target(PG)
    defaults = dict(db.conf.database_engine_options or {})
    fixed = recommended_engine_options(db.conf, db, INSTALLED)
    assert {k: fixed.get(k) for k in defaults} == defaults, (celery.__version__, defaults, fixed)
