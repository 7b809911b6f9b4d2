"""The backend probe's pure parts: its fix texts (valid, pasteable, correct per database), the
error classification it counts lock timeouts and deadlocks with, and what it applies to.

Driver exceptions are built the way the drivers themselves raise them (PyMySQL's
``OperationalError(code, message)``, psycopg's errors by SQLSTATE), not mocked.
"""

from __future__ import annotations

import ast

import pytest
from celery import Celery

from celerydiag.access.backend import TableRef
from celerydiag.backend.contention import classify, scratch_table_name
from celerydiag.backend.db import ServerInfo, is_permission, wait_query
from celerydiag.backend.probe import (
    BackendProbe,
    _pg_seconds,
    engine_fix,
    fixed_engine_options,
)
from celerydiag.backend.scratch import scratch_model
from celerydiag.probe import ProbeContext
from celerydiag.target import Target, TargetSource

# The installed Celery's own database_engine_options defaults ({'pool_pre_ping': True,
# 'pool_recycle': 3600} from 5.6.3, none before): a fix must carry whichever this Celery has.
CELERY_DEFAULT = dict(Celery("defaults", set_as_current=False).conf.database_engine_options or {})


def target(backend: str, **conf: object) -> Target:
    from celery import Celery

    app = Celery("t", broker="memory://", backend=backend, set_as_current=False)
    app.conf.update(conf)
    return Target("memory://", backend, TargetSource.FLAGS, app)


def assigned(config: str) -> dict[str, object]:
    """Run a Fix.config as a user's celeryconfig would be run; return what it assigns."""
    namespace: dict[str, object] = {}
    exec(compile(config, "celeryconfig.py", "exec"), {}, namespace)
    return namespace


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "mariadb"])
def test_engine_fix_is_pasteable_and_names_real_settings(dialect: str) -> None:
    from celery.app.defaults import SETTING_KEYS

    fix = engine_fix(dialect, target("db+sqlite:///x.db"))
    assert fix is not None
    names = assigned(fix.config)
    # issue 17 point 3: a lock bound turns waits into errors, so the retries come with it
    assert set(names) == {"database_engine_options", "result_backend_always_retry",
                          "result_backend_max_retries"} and set(names) <= SETTING_KEYS
    assert names["result_backend_always_retry"] is True and names["result_backend_max_retries"] == 3
    assert "BackendStoreError" in fix.summary and "fails" in fix.summary
    options = names["database_engine_options"]
    assert isinstance(options, dict)
    assert {k: options[k] for k in CELERY_DEFAULT} == CELERY_DEFAULT  # Celery's defaults survive the paste
    assert "autocommit" not in str(options).lower()


def test_postgres_fix_is_a_lock_timeout_never_an_isolation_change() -> None:
    options = fixed_engine_options("postgresql", dict(CELERY_DEFAULT))
    assert "isolation_level" not in options
    assert options["connect_args"] == {"options": "-c lock_timeout=2000"}
    assert "READ COMMITTED" not in engine_fix("postgresql", target("db+sqlite:///x.db")).config


def test_mysql_fix_is_read_committed_and_a_short_innodb_wait() -> None:
    options = fixed_engine_options("mysql", {})
    assert options == {"isolation_level": "READ COMMITTED",
                       "connect_args": {"init_command": "SET SESSION innodb_lock_wait_timeout=5"}}


def test_fix_merges_into_the_users_own_engine_options() -> None:
    mine = {"pool_size": 20, "connect_args": {"sslmode": "require", "options": "-c search_path=app"}}
    options = fixed_engine_options("postgresql", mine)
    assert options["pool_size"] == 20
    assert options["connect_args"] == {"sslmode": "require", "options": "-c search_path=app -c lock_timeout=2000"}
    strict = {"connect_args": {"init_command": "SET SESSION sql_mode='STRICT_ALL_TABLES'"}}
    mysql = fixed_engine_options("mysql", strict)
    assert mysql["connect_args"]["init_command"] == (
        "SET SESSION sql_mode='STRICT_ALL_TABLES', SESSION innodb_lock_wait_timeout=5")
    assert mine == {"pool_size": 20, "connect_args": {"sslmode": "require", "options": "-c search_path=app"}}


def test_no_fix_when_already_applied_and_none_for_sqlite() -> None:
    done = fixed_engine_options("postgresql", dict(CELERY_DEFAULT))
    assert engine_fix("postgresql", target("db+sqlite:///x.db", database_engine_options=done)) is None
    assert engine_fix("sqlite", target("db+sqlite:///x.db")) is None


def test_render_options_round_trips() -> None:
    from celerydiag.config.fixes import assignments

    options = {"isolation_level": "READ COMMITTED", "connect_args": {"init_command": "SET SESSION x=1"}}
    text = assignments(database_engine_options=options)
    ast.parse(text)
    assert assigned(text)["database_engine_options"] == options


def test_engine_fix_never_prints_a_password_from_the_users_options() -> None:
    secret = "hunter2-secret"
    t = target("db+postgresql+psycopg://app@db/celery",
               database_engine_options={"connect_args": {"password": secret, "sslmode": "require"}})
    fix = engine_fix("postgresql", t)
    assert fix is not None and secret not in fix.config
    ast.parse(fix.config)
    assert "lock_timeout=2000" in fix.config and "sslmode" in fix.config


def test_classify_driver_errors_as_the_drivers_raise_them() -> None:
    import psycopg.errors
    import pymysql.err

    assert classify(pymysql.err.OperationalError(1205, "Lock wait timeout exceeded; try restarting transaction")) \
        == "lock_timeout"
    assert classify(pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")) == "deadlock"
    assert classify(psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")) == "lock_timeout"
    assert classify(psycopg.errors.DeadlockDetected("deadlock detected")) == "deadlock"
    assert classify(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")) == "timeout"
    assert classify(pymysql.err.IntegrityError(1062, "Duplicate entry")) == "error"


def test_permission_errors_are_recognised() -> None:
    import psycopg.errors
    import pymysql.err

    assert is_permission(psycopg.errors.InsufficientPrivilege("permission denied for schema public"))
    assert is_permission(pymysql.err.OperationalError(1227, "Access denied; you need the PROCESS privilege"))
    assert is_permission(pymysql.err.ProgrammingError(1142, "CREATE command denied to user"))
    assert not is_permission(pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"))


@pytest.mark.parametrize("value,seconds", [("0", 0.0), ("2000", 2.0), ("2s", 2.0), ("1500ms", 1.5),
                                           ("1min", 60.0), ("bogus", 0.0)])
def test_pg_seconds(value: str, seconds: float) -> None:
    assert _pg_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("backend,skipped", [("rpc://", True), ("disabled://", True),
                                             ("redis://127.0.0.1:6379/0", False),
                                             ("db+sqlite:///results.db", False)])
def test_applies(backend: str, skipped: bool) -> None:
    reason = BackendProbe().applies(ProbeContext(target(backend)))
    assert bool(reason) is skipped
    if skipped:
        assert backend in reason


def test_lock_view_per_server() -> None:
    assert "pg_blocking_pids" in wait_query(ServerInfo("postgresql", "15.2"))
    assert "waitstart" in wait_query(ServerInfo("postgresql", "15.2"))
    assert "waitstart" not in wait_query(ServerInfo("postgresql", "13.9"))
    assert "INNODB_LOCK_WAITS" in wait_query(ServerInfo("mariadb", "10.11.6-MariaDB"))
    assert "data_lock_waits" in wait_query(ServerInfo("mysql", "8.0.36"))
    assert "INNODB_LOCK_WAITS" in wait_query(ServerInfo("mysql", "5.7.44"))
    assert wait_query(ServerInfo("sqlite", "3.40")) is None


def test_scratch_model_copies_celery_table_without_its_sequence_or_global_names() -> None:
    from celery.backends.database.models import Task

    before = (Task.__table__.name, Task.__table__.schema)
    name = scratch_table_name("celerydiag-1a2b3c4d")
    assert name == "celerydiag_1a2b3c4d_bk_taskmeta"
    model = scratch_model(name, None, extended=False)
    table = model.__table__
    assert table.name == name and table.c.id.default is None
    assert [c.name for c in table.columns] == [c.name for c in Task.__table__.columns]
    # the date_done index exactly when this Celery's own table has one (5.6.3+)
    assert any(i.columns.keys() == ["date_done"] for i in table.indexes) == any(
        i.columns.keys() == ["date_done"] for i in Task.__table__.indexes)
    assert table.c.task_id.unique
    model.configure(schema="x", name="y")  # what DatabaseBackend.__init__ calls: must change nothing
    assert table.name == name and (Task.__table__.name, Task.__table__.schema) == before


def test_table_ref_reads_celery_settings() -> None:
    t = target("db+sqlite:///x.db", database_table_names={"task": "my_results"},
               database_table_schemas={"task": "celery"})
    ref = TableRef.from_conf(t.conf)
    assert (ref.name, ref.schema, ref.qualified) == ("my_results", "celery", "celery.my_results")
    assert TableRef.from_conf(target("db+sqlite:///x.db").conf).qualified == "celery_taskmeta"


def test_a_scratch_backend_with_result_extended_leaves_the_users_model_names_alone(tmp_path) -> None:
    """Celery's DatabaseBackend.__init__ swaps in TaskExtended and calls its configure(): that
    must not rename the shared class the user's own backend (here: my_taskmeta) maps."""
    from celery import Celery
    from celery.backends.database.models import Task, TaskExtended

    from celerydiag.backend.scratch import scratch_backend

    url = f"sqlite:///{tmp_path}/r.db"
    user = Celery("user", broker="memory://", backend="db+" + url, set_as_current=False)
    user.conf.update(database_table_names={"task": "my_taskmeta"}, result_extended=True)
    try:
        assert user.backend.task_cls.__table__.name == "my_taskmeta"
        probe = Celery("probe", broker="memory://", backend="db+" + url, set_as_current=False)
        probe.conf.result_extended = True
        model = scratch_model("scratch_taskmeta", None, extended=True)
        backend = scratch_backend(probe, url, model, {}, forked=True)
        assert backend.task_cls is model
        assert TaskExtended.__table__.name == "my_taskmeta"
    finally:
        for cls in (Task, TaskExtended):
            cls.configure(schema=None, name=None)


def test_lock_wait_episodes_split_once_at_a_gap(monkeypatch) -> None:
    """Blocked, a gap, blocked again four times: two episodes of the same pair, not five."""
    from celerydiag.backend import db as backend_db

    waiter, blocker = {"id": "7"}, {"id": "9", "query": "", "state": "idle in transaction"}
    script = [[0.05], [0.10], [], [], [], [], [0.0], [0.05], [0.10], [0.15]]
    calls = iter(script + [[]] * 100)
    monkeypatch.setattr(backend_db, "sample_waits",
                        lambda conn, info, table: [(waiter, blocker, w, True) for w in next(calls)])
    episodes = backend_db.watch_waits(None, None, None, duration_s=0.05 * (len(script) + 1), interval_s=0.05)
    assert [(e.waiter_id, e.blocker_id) for e in episodes] == [("7", "9"), ("7", "9")]
    assert sorted(e.samples for e in episodes) == [2, 4]


def test_lock_sampling_stops_early_only_while_nothing_waits(monkeypatch) -> None:
    """idle_stop_s: an idle server is sampled for that long, not the whole duration; one waiter in
    the first snapshots and the whole duration is sampled."""
    from celerydiag.backend import db as backend_db

    snapshots: list[int] = []
    monkeypatch.setattr(backend_db, "sample_waits", lambda conn, info, table: snapshots.append(1) or [])
    assert backend_db.watch_waits(None, None, None, duration_s=2.0, interval_s=0.02, idle_stop_s=0.1) == []
    assert 3 <= len(snapshots) <= 7  # about 0.1 s of 20 ms snapshots, not 100 of them

    waiter, blocker = {"id": "7"}, {"id": "9", "query": "", "state": "idle in transaction"}
    calls = iter([[0.05]] + [[]] * 1000)
    snapshots.clear()

    def once(conn, info, table):
        snapshots.append(1)
        return [(waiter, blocker, w, False) for w in next(calls)]

    monkeypatch.setattr(backend_db, "sample_waits", once)
    episodes = backend_db.watch_waits(None, None, None, duration_s=0.4, interval_s=0.02, idle_stop_s=0.1)
    assert [e.blocker_id for e in episodes] == ["9"]
    assert len(snapshots) >= 12  # it went on for the whole 0.4 s


def test_idle_stop_only_with_the_default_duration_and_no_open_transaction_on_the_table() -> None:
    from types import SimpleNamespace

    from celerydiag.backend.probe import IDLE_LOCK_LOOK_S, DatabaseRun
    from celerydiag.probe import ProbeOptions

    run = object.__new__(DatabaseRun)
    quiet = SimpleNamespace(oldest_trx=None)
    run.ctx = SimpleNamespace(options=ProbeOptions())
    assert run.idle_stop_s(quiet) == IDLE_LOCK_LOOK_S
    assert run.idle_stop_s(SimpleNamespace(oldest_trx={"touches_task_table": True, "age_s": 40})) is None
    assert run.idle_stop_s(SimpleNamespace(oldest_trx={"touches_task_table": False, "age_s": 40})) == IDLE_LOCK_LOOK_S
    # MariaDB: which table is unknown, so a transaction holding any row lock keeps the whole look
    assert run.idle_stop_s(SimpleNamespace(oldest_trx={"touches_task_table": None, "rows_locked_count": 2})) is None
    assert run.idle_stop_s(SimpleNamespace(oldest_trx={"touches_task_table": None, "rows_locked_count": 0})) \
        == IDLE_LOCK_LOOK_S
    run.ctx = SimpleNamespace(options=ProbeOptions(duration=10.0))  # asked for: the whole of it
    assert run.idle_stop_s(quiet) is None
