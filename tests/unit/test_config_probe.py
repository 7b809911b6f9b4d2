"""The static config probe, case by case: a real Celery app per row (no network), the finding id
and severity it must produce. Versions vary through ``Facts`` so the version-dependent facts of
celery-facts.md are exercised on the one installed Celery; a separate test checks that the
version table agrees with the installed Celery's own code."""

from __future__ import annotations

import inspect
import shutil
import socket
from typing import Any

import pytest
from celery import Celery

from celerydiag.compat import version_tuple
from celerydiag.config.probe import (
    DATE_DONE_INDEX_FROM,
    DB_RETRY_DEFAULT_ON_FROM,
    NULLPOOL_FILTER_FROM,
    RETRY_EFFECTIVE_FROM,
    ConfigProbe,
    Facts,
    check_config,
)
from celerydiag.findings import Finding, Severity
from celerydiag.probe import ProbeContext, run_probe
from celerydiag.rank import rated
from celerydiag.target import Target, TargetSource, resolve_target

AMQP = "amqp://guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6379/0"
MYSQL = "db+mysql+pymysql://root@127.0.0.1:3306/test"
MARIADB = "db+mariadb+pymysql://root@127.0.0.1:3306/test"
PG = "db+postgresql+psycopg://postgres@127.0.0.1:5432/test"
SQLITE = "db+sqlite:///results.sqlite"
NOW = (5, 7, 0)
SA2 = (2, 1, 9)


def make_target(broker: str = AMQP, backend: str = REDIS, source: TargetSource = TargetSource.APP,
                **conf: Any) -> Target:
    app = Celery("cfgtest", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(conf)
    return Target(broker_url=broker, backend_url=backend, source=source, app=app)


def findings(target: Target, celery: tuple[int, ...] = NOW, sqlalchemy: tuple[int, ...] = SA2,
             budget_ms: float = 1000.0) -> dict[str, Finding]:
    # the probe leaves severity to the ranking stage: rate as the guard and the report do
    found = [rated(f, budget_ms) for f in check_config(target, Facts(celery, sqlalchemy))]
    ids = [f.id for f in found]
    assert len(ids) == len(set(ids)), f"one finding per check and target: {ids}"
    return {f.id: f for f in found}


OK, INFO, WARNING, CRITICAL = Severity.OK, Severity.INFO, Severity.WARNING, Severity.CRITICAL

# (case name, target kwargs, versions, expected id, expected severity or None for "absent")
CASES: list[tuple[str, dict[str, Any], dict[str, Any], str, Severity | None]] = [
    # database isolation (E, H.4)
    ("mysql-default-rr", {"backend": MYSQL}, {}, "db-isolation", WARNING),
    ("mariadb-url-rr", {"backend": MARIADB}, {}, "db-isolation", WARNING),
    ("mysql-explicit-rr", {"backend": MYSQL, "database_engine_options": {"isolation_level": "REPEATABLE-READ"}},
     {}, "db-isolation", WARNING),
    ("mysql-autocommit-isolation", {"backend": MYSQL, "database_engine_options": {"isolation_level": "AUTOCOMMIT"}},
     {}, "db-isolation", WARNING),
    ("mysql-rc", {"backend": MYSQL, "database_engine_options": {"isolation_level": "READ COMMITTED"}},
     {}, "db-isolation", OK),
    ("mysql-rc-spelled-like-my-cnf", {"backend": MYSQL,
                                      "database_engine_options": {"isolation_level": "read-committed"}},
     {}, "db-isolation", OK),
    ("postgres-default", {"backend": PG}, {}, "db-isolation", OK),
    ("postgres-serializable", {"backend": PG, "database_engine_options": {"isolation_level": "SERIALIZABLE"}},
     {}, "db-isolation", OK),
    ("sqlite-no-isolation-check", {"backend": SQLITE}, {}, "db-isolation", None),
    ("redis-no-isolation-check", {}, {}, "db-isolation", None),
    # autocommit (E, H.4)
    ("autocommit-sa2", {"backend": PG, "database_engine_options": {"autocommit": True}}, {}, "db-autocommit", CRITICAL),
    ("autocommit-sa14", {"backend": PG, "database_engine_options": {"autocommit": True}},
     {"sqlalchemy": (1, 4, 54)}, "db-autocommit", INFO),
    ("no-autocommit", {"backend": PG}, {}, "db-autocommit", OK),
    # NullPool crash before 5.6.3 (A.2, G.5)
    ("max-overflow-553", {"backend": PG, "database_engine_options": {"max_overflow": 5}},
     {"celery": (5, 5, 3)}, "db-nullpool-option-crash", CRITICAL),
    ("max-overflow-now", {"backend": PG, "database_engine_options": {"max_overflow": 5}},
     {}, "db-nullpool-option-crash", None),
    # rpc + confirms (A.3, C.1)
    ("rpc-confirm", {"backend": "rpc://", "broker_transport_options": {"confirm_publish": True}},
     {}, "rpc-confirm-publish", INFO),
    ("rpc-no-confirm", {"backend": "rpc://"}, {}, "rpc-confirm-publish", OK),
    ("redis-results-confirm", {"broker_transport_options": {"confirm_publish": True}}, {}, "rpc-confirm-publish", OK),
    # retry keys in the wrong place (C.3, C.4)
    ("blog-snippet", {"broker_transport_options": {"confirm_publish": True, "max_retries": 3,
                                                   "interval_start": 0.1, "interval_step": 0.2}},
     {}, "publish-retry-keys", INFO),
    ("retry-policy-explicit", {"broker_transport_options": {"max_retries": 3},
                               "task_publish_retry_policy": {"max_retries": 3}}, {}, "publish-retry-keys", OK),
    # confirm options that do nothing (C.1, H.2)
    ("confirm-on-redis-broker", {"broker": REDIS, "broker_transport_options": {"confirm_publish": True}},
     {}, "confirm-publish-ignored", INFO),
    ("confirm-on-amqp", {"broker_transport_options": {"confirm_publish": True}}, {}, "confirm-publish-ignored", None),
    ("confirm-delivery", {"broker_transport_options": {"confirm_delivery": True}}, {},
     "confirm-delivery-unknown", INFO),
    # Redis socket timeout (A.1)
    ("redis-default-timeout", {}, {}, "redis-socket-timeout", INFO),  # issue 17: a default is not a warning
    ("redis-explicit-long-timeout", {"redis_socket_timeout": 120.0}, {}, "redis-socket-timeout", WARNING),
    ("redis-bounded", {"redis_socket_timeout": 5.0, "redis_socket_connect_timeout": 5.0},
     {}, "redis-socket-timeout", OK),
    ("redis-url-query-wins", {"backend": REDIS + "?socket_timeout=3&socket_connect_timeout=3"},
     {}, "redis-socket-timeout", OK),
    ("redis-no-connect-timeout", {"redis_socket_timeout": 5.0}, {}, "redis-socket-timeout", WARNING),
    ("redis-timeout-below-budget-share", {"redis_socket_timeout": 30.0, "redis_socket_connect_timeout": 0.1},
     {"budget_ms": 1_000_000}, "redis-socket-timeout", INFO),
    # result_backend_always_retry (A.0-A.2)
    ("always-retry-rpc", {"backend": "rpc://", "result_backend_always_retry": True}, {}, "always-retry", INFO),
    ("always-retry-redis-54", {"result_backend_always_retry": True}, {"celery": (5, 4, 0)}, "always-retry", INFO),
    # issue 17: Redis keeps Celery's infinite result_backend_max_retries: a down backend blocks forever
    ("always-retry-redis-55", {"result_backend_always_retry": True}, {"celery": (5, 5, 0)}, "always-retry", WARNING),
    ("always-retry-redis-limited", {"result_backend_always_retry": True, "result_backend_max_retries": 3},
     {"celery": (5, 5, 0)}, "always-retry", OK),
    ("always-retry-db-default-limit", {"backend": PG, "result_backend_always_retry": True}, {}, "always-retry", OK),
    ("always-retry-db-explicit-inf", {"backend": PG, "result_backend_always_retry": True,
                                      "result_backend_max_retries": float("inf")}, {}, "always-retry", WARNING),
    ("always-retry-db-56", {"backend": PG, "result_backend_always_retry": True}, {"celery": (5, 6, 0)},
     "always-retry", INFO),
    ("always-retry-db-563", {"backend": PG, "result_backend_always_retry": True}, {"celery": (5, 6, 3)},
     "always-retry", OK),
    ("always-retry-off-db-57", {"backend": PG, "result_backend_always_retry": False}, {}, "always-retry", INFO),
    ("always-retry-off-db-563", {"backend": PG, "result_backend_always_retry": False}, {"celery": (5, 6, 3)},
     "always-retry", None),
    ("always-retry-unset", {}, {}, "always-retry", None),
    # date_done index (A.2, E, G.1)
    ("index-mysql-553", {"backend": MYSQL}, {"celery": (5, 5, 3)}, "db-date-done-index", WARNING),
    ("index-pg-553", {"backend": PG}, {"celery": (5, 5, 3)}, "db-date-done-index", INFO),
    ("index-mysql-now", {"backend": MYSQL}, {}, "db-date-done-index", INFO),
    ("index-sqlite", {"backend": SQLITE}, {}, "db-date-done-index", None),
    # costs (A.0, B)
    ("track-started", {"task_track_started": True}, {}, "track-started", INFO),
    ("track-started-off", {}, {}, "track-started", OK),
    ("track-started-ignored", {"task_track_started": True, "task_ignore_result": True}, {}, "track-started", None),
    ("result-extended", {"result_extended": True}, {}, "result-extended", INFO),
    ("result-extended-off", {}, {}, "result-extended", OK),
    # security (D)
    ("pickle-accept", {"accept_content": ["json", "pickle"]}, {}, "pickle-accepted", WARNING),
    ("pickle-result-accept", {"result_accept_content": ["application/x-python-serialize"]}, {},
     "pickle-accepted", WARNING),
    ("custom-pickle5", {"accept_content": ["json", "application/x-python-serialize-p5"]}, {},
     "pickle-accepted", WARNING),
    ("json-only", {"accept_content": ["json", "msgpack"]}, {}, "pickle-accepted", OK),
    # results not stored
    ("backend-disabled-app", {"backend": "disabled://"}, {}, "result-backend-disabled", WARNING),
    ("backend-disabled-flags", {"backend": "disabled://", "source": TargetSource.FLAGS}, {},
     "result-backend-disabled", INFO),
    ("ignore-result", {"task_ignore_result": True}, {}, "ignore-result", WARNING),
    ("results-stored", {}, {}, "ignore-result", OK),
    # database connection per read (A.2, B)
    ("db-connection-per-read", {"backend": PG}, {}, "db-connection-per-read", INFO),
    ("db-connection-per-read-sqlite", {"backend": SQLITE}, {}, "db-connection-per-read", None),
    # broker settings (C.2)
    ("heartbeat-off", {"broker_heartbeat": 0}, {}, "broker-heartbeat", WARNING),
    ("heartbeat-none", {"broker_heartbeat": None}, {}, "broker-heartbeat", WARNING),
    ("heartbeat-default", {}, {}, "broker-heartbeat", OK),
    ("heartbeat-redis-broker", {"broker": REDIS, "broker_heartbeat": 0}, {}, "broker-heartbeat", None),
    ("pool-disabled", {"broker_pool_limit": 0}, {}, "broker-pool-limit", INFO),
    ("pool-small-threads", {"broker_pool_limit": 10, "worker_pool": "threads", "worker_concurrency": 50},
     {}, "broker-pool-limit", INFO),
    ("pool-prefork", {"worker_concurrency": 50}, {}, "broker-pool-limit", OK),
    ("pool-memory-broker", {"broker": "memory://", "broker_pool_limit": 0}, {}, "broker-pool-limit", None),
    # a documented-looking option the result backend never reads (A.1)
    ("result-visibility-timeout", {"result_backend_transport_options": {"visibility_timeout": 3600}}, {},
     "result-transport-visibility-timeout", INFO),
]


@pytest.mark.parametrize(("target_kw", "versions", "slug", "severity"),
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_case(target_kw: dict[str, Any], versions: dict[str, Any], slug: str, severity: Severity | None) -> None:
    found = findings(make_target(**target_kw), **versions)
    fid = f"config.{slug}"
    if severity is None:
        assert fid not in found, f"{fid} should not apply here: {found.get(fid)}"
        return
    assert fid in found, f"{fid} missing; got {sorted(found)}"
    finding = found[fid]
    assert finding.severity == severity, f"{fid}: {finding.severity} ({finding.title})"
    assert finding.title
    if severity > OK:
        assert finding.detail, f"{fid}: a problem must explain itself"
        assert finding.fix is not None and finding.fix.summary and finding.fix.docs, fid


def test_postgres_never_gets_isolation_advice() -> None:
    for options in ({}, {"isolation_level": "REPEATABLE READ"}, {"autocommit": True}):
        found = findings(make_target(backend=PG, database_engine_options=options))
        assert found["config.db-isolation"].severity == OK and found["config.db-isolation"].fix is None
        for f in found.values():
            config = f.fix.config if f.fix else ""
            assert "READ COMMITTED" not in config.upper(), (f.id, config)
            # the user's own isolation level is kept as it is, never changed or added
            if "database_engine_options" in config:
                assert config.count("isolation_level") == ("isolation_level" in options), (f.id, config)


def test_mysql_fix_merges_user_options_and_keeps_celery_defaults() -> None:
    found = findings(make_target(backend=MYSQL, database_engine_options={"pool_size": 7, "echo": False}))
    namespace: dict[str, Any] = {}
    exec(found["config.db-isolation"].fix.config, namespace)  # noqa: S102 (our own generated text)
    # issue 17 point 4: a user's dict replaces Celery's defaults, so the fix puts them back
    defaults = dict(make_target().conf.database_engine_options or {})  # this Celery's (5.6.3+), or none
    assert namespace["database_engine_options"] == {
        **defaults,
        "pool_size": 7, "echo": False, "isolation_level": "READ COMMITTED",
        "connect_args": {"connect_timeout": 5}}
    unset_target = make_target(backend=MYSQL)
    unset = findings(unset_target)["config.db-isolation"].fix.config
    # the installed Celery's own defaults ({'pool_pre_ping': True, 'pool_recycle': 3600} from 5.6.3)
    for key, value in dict(unset_target.conf.database_engine_options or {}).items():
        assert f"{key!r}: {value!r}" in unset, unset


def test_autocommit_fix_removes_it_and_never_suggests_autocommit_isolation() -> None:
    fix = findings(make_target(backend=PG, database_engine_options={"autocommit": True}))["config.db-autocommit"].fix
    assert "autocommit" not in fix.config.lower()


def test_hazard_impact_is_the_stall_the_setting_allows() -> None:
    found = findings(make_target(redis_socket_timeout=120.0))
    f = found["config.redis-socket-timeout"]
    # a worst case, not a P99 contribution: it must not outrank measured delays
    assert f.impact_ms == 0 and f.evidence["worst_case_ms"] == 120_000.0
    assert f.severity == WARNING, "hazards are capped at warning: frequency is unknown statically"


def test_rpc_confirm_never_advises_dropping_confirms() -> None:
    f = findings(make_target(backend="rpc://", broker_transport_options={"confirm_publish": True}))
    config = f["config.rpc-confirm-publish"].fix.config
    assert "confirm_publish" not in config and "result_backend" in config


def test_secrets_never_reach_findings() -> None:
    secret = "s3cr3t-pw"
    target = make_target(
        broker=f"redis://:{secret}@127.0.0.1:6379/1", backend=f"db+mysql+pymysql://root:{secret}@127.0.0.1/test",
        broker_transport_options={"confirm_publish": True, "sentinel_kwargs": {"password": secret},
                                  "confirm_delivery": True},
        database_engine_options={"connect_args": {"password": secret}, "autocommit": True})
    found = findings(target)
    assert {"config.confirm-publish-ignored", "config.db-autocommit", "config.db-isolation"} <= set(found)
    for f in found.values():
        assert secret not in repr(f.to_dict()), f.id


def test_redis_settings_are_read_without_opening_a_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kw: Any) -> None:
        raise AssertionError("the static probe opened a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    f = findings(make_target(backend="redis://127.0.0.1:1/0?socket_timeout=2&socket_connect_timeout=2"))
    assert f["config.redis-socket-timeout"].evidence["socket_timeout_s"] == 2.0


def test_version_table_matches_the_installed_celery() -> None:
    """celery-facts.md's version boundaries, checked against the code they describe."""
    import celery
    from celery.backends.base import BaseBackend
    from celery.backends.database import DatabaseBackend, models, session
    from celery.backends.redis import RedisBackend

    installed = version_tuple(celery.__version__)
    overrides = {"redis": RedisBackend, "db": DatabaseBackend}
    for scheme, cls in overrides.items():
        has_it = cls.exception_safe_to_retry is not BaseBackend.exception_safe_to_retry
        assert has_it == (installed >= RETRY_EFFECTIVE_FROM[scheme]), scheme
    assert bool(models.Task.__table__.c.date_done.index) == (installed >= DATE_DONE_INDEX_FROM)
    assert ("max_overflow" in inspect.getsource(session.SessionManager.get_engine)) == (
        installed >= NULLPOOL_FILTER_FROM)
    assert ("self.always_retry = True" in inspect.getsource(DatabaseBackend.__init__)) == (
        installed >= DB_RETRY_DEFAULT_ON_FROM)


def test_probe_runs_under_the_guard_with_installed_versions() -> None:
    target = make_target(backend=MYSQL)
    result = run_probe(ConfigProbe(), ProbeContext(target=target))
    assert str(result.status) == "ran", result.reason
    ids = {f.id: f.severity for f in result.findings}
    assert ids["config.db-isolation"] == WARNING
    assert ConfigProbe.static


def test_embedded_default_has_nothing_scary() -> None:
    target = resolve_target(environ={})
    try:
        found = findings(target)
    finally:
        shutil.rmtree(target.scratch_dir or "", ignore_errors=True)
    loud = {f.id: str(f.severity) for f in found.values() if f.severity >= WARNING}
    assert not loud, loud
    assert found, "the embedded default still shows what was verified (ok findings)"
