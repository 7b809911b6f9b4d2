"""The helpers every cause shares: the scheme table, read-only backend access, one-line errors,
quiet cleanup, secrets found the way Celery hides them, version tuples.

The scheme table is checked through its users, not only on its own: the copies it replaced had
drifted (``sentinel`` missing from the broker probe, ``librabbitmq`` only in the capture code),
so each scheme must be classified the same way by every module that branches on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celerydiag.access.backend import (
    TableRef,
    connect_timeout_args,
    database_url,
    dialect,
    engine,
    task_table,
)
from celerydiag.compat import version_tuple
from celerydiag.config.fixes import recommended_transport_options
from celerydiag.config.probe import Facts, check_broker_heartbeat
from celerydiag.e2e.probe import PUSH_BACKENDS
from celerydiag.errors import describe, one_line, quietly
from celerydiag.network.capture import ports_for_target
from celerydiag.serialization.harness import backend_model
from celerydiag.target import (
    AMQP_SCHEMES,
    REDIS_SCHEMES,
    Family,
    Target,
    TargetSource,
    family_of,
    hidden_values,
)

# (URL, family): every scheme the issue names, as a user would write it.
SCHEMES = [
    ("amqp://guest@h:5673//", Family.AMQP),
    ("amqps://guest@h:5673//", Family.AMQP),
    ("pyamqp://guest@h:5673//", Family.AMQP),
    ("librabbitmq://guest@h:5673//", Family.AMQP),
    ("redis://h:6390/0", Family.REDIS),
    ("rediss://h:6390/0", Family.REDIS),
    ("sentinel://h:6390/0", Family.REDIS),
    ("sqs://", Family.SQS),
    ("memory://", Family.MEMORY),
    ("db+postgresql+psycopg://u@h:5433/db", Family.DATABASE),
    ("rpc://", Family.RPC),
]


def target(broker: str = "memory://", backend: str = "disabled://", **conf: Any) -> Target:
    app = Celery("helpers-test", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(conf)
    return Target(broker_url=broker, backend_url=backend, source=TargetSource.FLAGS, app=app)


@pytest.mark.parametrize(("url", "family"), SCHEMES)
def test_each_scheme_has_one_family(url: str, family: Family) -> None:
    scheme = url.split("://")[0].split("+")[0]
    assert family_of(url) is family and family_of(scheme) is family
    assert (scheme in AMQP_SCHEMES) == (family is Family.AMQP)
    assert (scheme in REDIS_SCHEMES) == (family is Family.REDIS)


@pytest.mark.parametrize(("url", "family"), SCHEMES)
def test_every_user_of_the_table_classifies_the_scheme_alike(url: str, family: Family) -> None:
    scheme = url.split("://")[0].split("+")[0]
    ports = ports_for_target([url])  # the capture filter
    assert (5673 in ports.amqp) == (family is Family.AMQP)
    assert (6390 in ports.redis) == (family is Family.REDIS)
    assert (backend_model(scheme).name == "redis") == (family is Family.REDIS)  # serialization
    assert (scheme in PUSH_BACKENDS) == (family in (Family.REDIS, Family.RPC))  # e2e
    broker = target(broker=url, broker_heartbeat=0,
                    broker_transport_options={"confirm_publish": True})
    heartbeat = list(check_broker_heartbeat(broker.conf, broker, Facts((5, 7, 0), (2, 0))))
    assert bool(heartbeat) == (family is Family.AMQP)  # config: AMQP heartbeats
    kept = "confirm_publish" in recommended_transport_options(broker.conf, broker)
    assert kept == (family is Family.AMQP)  # config and broker fixes


def test_unknown_schemes_are_other_never_guessed() -> None:
    assert family_of("kafka://h") is Family.OTHER and family_of("") is Family.OTHER
    assert family_of("disabled://") is Family.DISABLED


def test_database_url_is_the_part_after_db_plus_with_its_password() -> None:
    t = target(backend="db+postgresql+psycopg://user:p%40ss@127.0.0.1:5432/test")
    assert database_url(t) == "postgresql+psycopg://user:p%40ss@127.0.0.1:5432/test"
    assert dialect(database_url(t)) == "postgresql"


def test_database_url_falls_back_to_the_database_url_setting_as_celery_does() -> None:
    t = target(backend="db://", database_url="mysql+pymysql://root@127.0.0.1:3306/test")
    assert database_url(t) == "mysql+pymysql://root@127.0.0.1:3306/test"
    assert database_url(target(backend="redis://h/0")) == ""


def test_mariadb_urls_get_the_mysql_driver_timeouts() -> None:
    mariadb = connect_timeout_args("mariadb+pymysql://root@h/test", 2.0)
    assert mariadb == connect_timeout_args("mysql+pymysql://root@h/test", 2.0)
    assert mariadb["read_timeout"] == 2
    assert connect_timeout_args("postgresql+psycopg://h/db", 0.2) == {"connect_timeout": 1}
    assert dialect("not a url") == ""


def test_engine_is_nullpool_and_connects(tmp_path: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.pool import NullPool

    db = engine(f"sqlite:///{tmp_path}/x.sqlite", 1.0)
    try:
        assert isinstance(db.pool, NullPool)
        with db.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        db.dispose()


def test_table_refs_follow_the_configured_names_and_schemas() -> None:
    conf = target(database_table_names={"task": "jobs", "group": "jobgroups"},
                  database_table_schemas={"task": "celery"}).conf
    assert TableRef.from_conf(conf).qualified == "celery.jobs"
    assert TableRef.from_conf(conf, "group").qualified == "jobgroups"
    assert TableRef.from_conf(target().conf, "group").name == "celery_tasksetmeta"
    assert task_table(conf).fullname == "celery.jobs"
    assert {"task_id", "status", "result"} <= set(task_table(conf).c.keys())


def test_one_line_is_type_and_first_line_cut_to_a_limit() -> None:
    assert one_line(ValueError("bad value\nsecond line")) == "ValueError: bad value"
    assert one_line(KeyError()) == "KeyError"
    cut = one_line(ValueError("x" * 300), 20)
    assert cut == "ValueError: " + "x" * 19 + "\u2026"


def test_describe_names_the_innermost_driver_error() -> None:
    class Wrapped(Exception):
        def __init__(self, orig: BaseException) -> None:
            super().__init__(f"(wrapped) {orig}\n(Background on this error at: https://sqlalche.me/e/20/e3q8)")
            self.orig = orig

    assert describe(Wrapped(ConnectionRefusedError("refused"))) == "ConnectionRefusedError: refused"
    try:
        try:
            raise OSError("no route to host (Background on this error at: x)")
        except OSError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as exc:
        assert describe(exc) == "OSError: no route to host"
    assert describe(TimeoutError()) == "TimeoutError: timed out"


def test_quietly_swallows_a_failed_close_but_not_ctrl_c() -> None:
    calls: list[Any] = []

    def close(*args: Any, **kw: Any) -> None:
        calls.append((args, kw))
        raise OSError("already closed")

    quietly(close, 1, key="k")
    assert calls == [((1,), {"key": "k"})]

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quietly(interrupted)


def test_secrets_are_what_celery_hides_at_any_depth() -> None:
    t = target(
        broker="redis://127.0.0.1:6379/0",
        database_engine_options={"connect_args": {"password": "nested-engine-pw"}},
        broker_transport_options={"sentinel_kwargs": {"password": "sentinel-pw"},
                                  "global_keyprefix": "myapp:"},
        broker_read_url="redis://:read-url-pw@replica:6379/0",
        security_key_password="key-file-pw",
        s3_secret_access_key="s3-secret-value",
        task_default_routing_key="tasks",
    )
    secrets = t.secrets()
    for secret in ("nested-engine-pw", "sentinel-pw", "read-url-pw", "key-file-pw", "s3-secret-value"):
        assert secret in secrets
    assert "tasks" not in secrets and "myapp:" not in secrets  # Celery hides them ("KEY"), but no secret
    assert not [s for s in secrets if "://" in s]  # a URL gives its password, not itself
    assert hidden_values({"database_url": "postgresql://u:dbpw@h/db"}) == ["dbpw"]


def test_version_tuple_keeps_the_leading_numbers() -> None:
    assert version_tuple("5.7.0") == (5, 7, 0)
    assert version_tuple("2.1.9+local") == (2, 1, 9)
    assert version_tuple("5.7.0rc1") == (5, 7)


def test_apps_of_our_own_copy_only_the_named_settings() -> None:
    from celerydiag.access.app import copied_settings, fresh_app, redis_backend_app

    t = target(broker="redis://127.0.0.1:6379/0", backend="redis://127.0.0.1:6379/1",
               result_serializer="msgpack", task_routes={"a": {"queue": "b"}},
               database_table_names={"task": "jobs"},
               result_backend_transport_options={"global_keyprefix": "myapp:"})
    copied = copied_settings(t, ("result_", "database_"), skip=("database_table_names",))
    assert copied["result_serializer"] == "msgpack"
    assert "result_backend" not in copied and "task_routes" not in copied
    assert "database_table_names" not in copied
    app = fresh_app(t, "ours", ("result_",), broker=True)
    assert app is not t.app and app.conf.broker_url == t.broker_url

    bounded = redis_backend_app(t, 0.5)
    assert bounded.conf.redis_socket_timeout == 0.5 and bounded.conf.redis_socket_connect_timeout == 0.5
    options = bounded.conf.result_backend_transport_options
    assert options["global_keyprefix"] == "myapp:" and options["retry_policy"]["max_retries"] == 1
    assert "retry_policy" not in t.conf.result_backend_transport_options  # the user's stays as it was
    assert t.conf.redis_socket_timeout == 120.0


def test_fixes_hide_what_celery_hides_and_keep_key_prefixes() -> None:
    from celerydiag.config.fixes import assignments

    text = assignments(broker_transport_options={"global_keyprefix": "myapp:", "sentinel_kwargs":
                                                 {"password": "pw-1234"}, "aws_secret_access_key": "s"})
    assert "'global_keyprefix': 'myapp:'," in text
    assert "pw-1234" not in text and "# 'password': keep your existing value" in text
    assert "# 'aws_secret_access_key': keep your existing value" in text
    compile(text, "<fix>", "exec")
