"""Issue 17: the printed fixes do what their text says, on the installed Celery/kombu/py-amqp and
the real local services (a silent TCP server stands in for a stalled Redis, a real PostgreSQL row
lock for a blocker). Each test fails on the old advice."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import BackendStoreError

from celerydiag.config.probe import Facts, check_config
from celerydiag.target import Target, TargetSource

PG = "db+postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIADB = "db+mysql+pymysql://root@127.0.0.1:3306/test"
AMQP = "amqp://guest:guest@127.0.0.1:5672//"


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers: a half-open Redis as a client sees it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for s in held:
            s.close()
        server.close()


def target(backend: str, broker: str = AMQP, **conf: Any) -> Target:
    app = Celery("advice", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(conf)
    return Target(broker_url=broker, backend_url=backend, source=TargetSource.APP, app=app)


def printed(t: Target, fid: str) -> dict[str, Any]:
    finding = next(f for f in check_config(t, Facts((5, 7, 0), (2, 0, 0))) if f.id == fid)
    assert finding.fix is not None
    namespace: dict[str, Any] = {}
    exec(compile(finding.fix.config, "celeryconfig.py", "exec"), {}, namespace)  # noqa: S102
    return namespace


# Short socket waits so the test does not wait the printed 5 s per try: the retry settings are
# what the fix is about and stay as printed.
FAST = {"redis_socket_timeout": 0.3, "redis_socket_connect_timeout": 0.3}


def test_redis_timeout_fix_ends_in_backend_store_error_not_a_raw_timeout() -> None:
    with silent_server() as port:
        url = f"redis://127.0.0.1:{port}/0"
        fix = printed(target(url), "config.redis-socket-timeout")
        assert fix["result_backend_always_retry"] is True
        assert 0 < fix["result_backend_max_retries"] < float("inf")
        assert "redis_retry_on_timeout" not in fix  # it doubles every wait; always_retry retries
        app = Celery("pasted", broker="memory://", backend=url, set_as_current=False)
        app.conf.update({**fix, **FAST})
        with pytest.raises(BackendStoreError):  # what the fix's text says the task sees
            app.backend.store_result(str(uuid.uuid4()), {"done": 1}, "PROGRESS")

        # the old fix (timeouts alone): the GET before the write is not retried, the raw redis
        # TimeoutError reaches the task
        import redis.exceptions

        old = Celery("old", broker="memory://", backend=url, set_as_current=False)
        old.conf.update(FAST, redis_retry_on_timeout=True, redis_backend_health_check_interval=25)
        with pytest.raises(redis.exceptions.TimeoutError):
            old.backend.store_result(str(uuid.uuid4()), {"done": 1}, "PROGRESS")


def _scratch_schema() -> str:
    """A schema of our own: Celery keeps its fixed index names (ix_celery_taskmeta_date_done)
    whatever database_table_names says, so renamed tables would collide in one schema."""
    return f"celerydiag_adv_{uuid.uuid4().hex[:8]}"


def test_pg_lock_timeout_fix_trades_the_wait_for_backend_store_error() -> None:
    """A row lock held longer than lock_timeout x (retries + 1): the task fails, as printed."""
    import psycopg

    from celerydiag.backend.probe import engine_fix

    schema = _scratch_schema()
    tables = {"task": schema, "group": schema}
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
    t = target(PG, database_table_schemas=tables)
    fix = engine_fix("postgresql", t)
    assert fix is not None and "BackendStoreError" in fix.summary
    namespace: dict[str, Any] = {}
    exec(compile(fix.config, "celeryconfig.py", "exec"), {}, namespace)  # noqa: S102
    assert namespace["result_backend_max_retries"] == 3
    namespace["result_backend_max_retries"] = 1  # keep the test at two lock waits
    app = Celery("pasted", broker="memory://", backend=PG, set_as_current=False)
    app.conf.update(namespace, database_table_schemas=tables)
    task_id = str(uuid.uuid4())
    blocker = psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=False)
    try:
        app.backend.store_result(task_id, {"p": 0}, "PROGRESS")  # creates the tables and the row
        blocker.execute(f"SELECT * FROM {schema}.celery_taskmeta WHERE task_id = %s FOR UPDATE", (task_id,))
        with pytest.raises(BackendStoreError):
            app.backend.store_result(task_id, {"p": 1}, "PROGRESS")
    finally:
        blocker.rollback()
        blocker.close()
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c:
            c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.mark.parametrize("backend", [PG, MARIADB])
def test_printed_connect_args_are_accepted_by_the_installed_driver(backend: str) -> None:
    from sqlalchemy import create_engine, text

    options = printed(target(backend), "config.db-connection-per-read")["database_engine_options"]
    assert options["pool_pre_ping"] is True and options["pool_recycle"] == 3600  # Celery's defaults kept
    engine = create_engine(backend.removeprefix("db+"), **options)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_unknown_failover_strategy_really_breaks_every_connection() -> None:
    from kombu import Connection

    with pytest.raises(TypeError):
        Connection("amqp://a//;amqp://b//", failover_strategy="round-robbin")
    t = target(PG, broker="amqp://guest@a//;amqp://guest@b//", broker_failover_strategy="round-robbin")
    fix = printed(t, "config.broker-failover")
    Connection("amqp://a//;amqp://b//", failover_strategy=fix["broker_failover_strategy"])  # builds


def test_string_socket_settings_break_py_amqp_and_the_fix_connects() -> None:
    from kombu import Connection

    bad = {"socket_settings": {"TCP_KEEPIDLE": 30}, "confirm_publish": True}
    with pytest.raises(TypeError), Connection(AMQP, transport_options=bad, connect_timeout=3) as conn:
        conn.connect()
    fix = printed(target(PG, broker_transport_options=bad), "config.amqp-keepalive")
    with Connection(AMQP, transport_options=fix["broker_transport_options"], connect_timeout=3) as conn:
        conn.connect()
        assert conn.connected
    assert fix["broker_transport_options"] == {"confirm_publish": True}


def test_py_amqp_keepalive_defaults_are_what_the_texts_say() -> None:
    from amqp.transport import DEFAULT_SOCKET_SETTINGS

    from celerydiag.config.probe import AMQP_KEEPALIVE, KEEPALIVE_DETECT_S

    assert {k: DEFAULT_SOCKET_SETTINGS[k] for k in AMQP_KEEPALIVE} == AMQP_KEEPALIVE
    assert KEEPALIVE_DETECT_S == 150


def test_disabled_backend_state_raises_attribute_error_on_the_installed_celery() -> None:
    app = Celery("nobackend", broker="memory://", set_as_current=False)
    result = app.AsyncResult(str(uuid.uuid4()))
    with pytest.raises(AttributeError, match="_get_task_meta_for"):
        result.state  # noqa: B018
    with pytest.raises(NotImplementedError):
        result.get(timeout=0.1)
    text = next(f for f in check_config(target("disabled://"), Facts((5, 7, 0), (2, 0, 0)))
                if f.id == "config.result-backend-disabled").detail
    assert "AttributeError" in text


def test_database_backend_unpickles_whatever_accept_content_says() -> None:
    """The pickle 'ok' text was wrong on database backends: 5.7 falls back to pickle.loads."""
    import pickle

    app = Celery("pk", broker="memory://", backend="db+sqlite:///:memory:", set_as_current=False)
    app.conf.update(accept_content=["json"], result_accept_content=["json"])
    assert app.backend._decode_stored_result(pickle.dumps({"x": 1})) == {"x": 1}
    finding = next(f for f in check_config(target(PG, accept_content=["json"]), Facts((5, 7, 0), (2, 0, 0)))
                   if f.id == "config.pickle-accepted")
    assert finding.severity.name == "INFO" and "pickle.loads" in finding.detail
