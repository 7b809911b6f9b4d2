"""Fix builders that more than one probe prints: pasteable Python, and the one recommendation
for each setting that several findings change.

Why here and not in a probe: the config, backend and broker probes all print
``database_engine_options`` or ``broker_transport_options``; if each built its own, pasting two
fixes would leave two different dicts, the second silently overwriting the first. Every probe
imports these; none imports another probe for them.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from celerydiag.access.backend import TableRef, database_url, dialect
from celerydiag.target import AMQP_SCHEMES, Family, Target, family_of, hidden_setting

NULLPOOL_FILTER_FROM = (5, 6, 3)  # A.2 / G.5: max_overflow/echo_pool crashed the NullPool path before
CONNECT_TIMEOUT_S = 5
PG_LOCK_TIMEOUT_MS = 2000
MYSQL_LOCK_WAIT_S = 5
# The retries every fix that can make a backend call fail pairs itself with: the database
# backend's own 5.7 default (celery/backends/database/__init__.py:74-77), made explicit so the
# Redis backend (whose default max is infinity, app/defaults.py) gets a finite one too.
MAX_RETRIES = 3
# Placed in pasteable config when we cannot know the user's value (another host, a secret).
PLACEHOLDER_REDIS = "redis://REDIS-HOST:6379/0"

# Drivers by SQLAlchemy name (URL ``dialect+driver``; ``get_driver_name()`` fills the default).
# The connect-timeout keyword differs: libpq and the MySQL drivers take ``connect_timeout``
# (mysql-connector as an alias), pg8000 has none and takes ``timeout=`` (a socket timeout that
# also bounds reads); given ``connect_timeout`` pg8000 raises TypeError on every connect.
LIBPQ_DRIVERS = ("psycopg", "psycopg2", "psycopg2cffi")
CONNECT_TIMEOUT_KEY = {**dict.fromkeys(LIBPQ_DRIVERS, "connect_timeout"), "pg8000": "timeout",
                       "pymysql": "connect_timeout", "mysqldb": "connect_timeout",
                       "mysqlconnector": "connect_timeout"}
INIT_COMMAND_DRIVERS = ("pymysql", "mysqldb")  # mysqlclient and PyMySQL run init_command per connect


# ---- pasteable Python -------------------------------------------------------------------------

def _literal(value: Any) -> str | None:
    """Python source for a value that round-trips through ast.literal_eval, else None."""
    text = repr(value)
    try:
        return text if ast.literal_eval(text) == value else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _source(value: Any, indent: int = 0) -> str:
    """Source for a (possibly nested) dict; values we must not (a :func:`hidden_setting`, as Celery
    would hide it) or cannot print become comments telling the user to keep their own, so the
    text stays valid Python and leaks no secret."""
    if not isinstance(value, Mapping):
        return _literal(value) or "None"
    if not value:
        return "{}"
    pad = " " * (indent + 4)
    lines = ["{"]
    for key, item in value.items():
        text = None if hidden_setting(key) else (
            _source(item, indent + 4) if isinstance(item, Mapping) else _literal(item))
        if text is None or _literal(key) is None:
            lines.append(f"{pad}# {str(key)!r}: keep your existing value")
        else:
            lines.append(f"{pad}{_literal(key)}: {text},")
    lines.append(" " * indent + "}")
    return "\n".join(lines)


def assignments(**settings: Any) -> str:
    """``name = value`` lines, one per setting, in the order given."""
    return "".join(f"{name} = {_source(value)}\n" for name, value in settings.items())


# ---- the database backend -----------------------------------------------------------------------

def db_dialect(target: Target) -> str:
    """``postgresql``, ``mysql``, ``mariadb``, ``sqlite`` for a database backend, else ''. Never
    raises: the static probe must describe a URL it cannot parse, not crash on it."""
    if family_of(target.backend_scheme) is not Family.DATABASE:
        return ""
    try:
        return dialect(database_url(target))
    except Exception:  # sqlalchemy.exc.ArgumentError: a URL SQLAlchemy cannot parse
        return ""


def db_driver(target: Target) -> str:
    """The DBAPI driver SQLAlchemy will load for the backend URL (``psycopg2`` for a bare
    ``postgresql://``, ``mysqldb`` for ``mysql://``); '' when not a database URL."""
    if not db_dialect(target):
        return ""
    try:
        from sqlalchemy.engine import make_url

        return str(make_url(database_url(target)).get_driver_name())
    except Exception:  # a URL SQLAlchemy cannot parse: db_dialect already said ''
        return ""


def celery_engine_defaults() -> dict[str, Any]:
    """Celery's own database_engine_options (pool_pre_ping, pool_recycle in 5.7): a user's dict
    replaces them instead of merging (DatabaseBackend reads conf.database_engine_options whole)."""
    from celery.app.defaults import DEFAULTS

    return dict(DEFAULTS.get("database_engine_options") or {})


def engine_options(conf: Any) -> dict[str, Any]:
    return dict(conf.get("database_engine_options") or {})


def connect_timeout_args(driver: str) -> dict[str, Any] | None:
    """The connect_args that bound a new connection with ``driver``, or None when we do not know
    a keyword it accepts (printing a wrong one breaks every connect)."""
    key = CONNECT_TIMEOUT_KEY.get(driver)
    return {key: CONNECT_TIMEOUT_S} if key else None


def has_connect_timeout(options: Mapping[str, Any], driver: str = "") -> bool:
    args = dict(options.get("connect_args") or {})
    key = CONNECT_TIMEOUT_KEY.get(driver)
    return (key in args) if key else any(k in args for k in ("connect_timeout", "timeout"))


def lock_timeout_args(driver: str, args: Mapping[str, Any]) -> dict[str, Any] | None:
    """``args`` plus a session lock bound for ``driver``: libpq ``options='-c lock_timeout=..'``,
    pg8000 ``startup_params`` (it has no ``options``), PyMySQL/mysqlclient ``init_command``.
    None for a driver with no such keyword we know (mysql-connector, mariadb): set the server's
    ``innodb_lock_wait_timeout`` for Celery's user instead."""
    out = dict(args)
    if driver in LIBPQ_DRIVERS:
        existing = str(out.get("options") or "")
        if "lock_timeout" not in existing:
            out["options"] = f"{existing} -c lock_timeout={PG_LOCK_TIMEOUT_MS}".strip()
        return out
    if driver == "pg8000":
        out["startup_params"] = {**dict(out.get("startup_params") or {}), "lock_timeout": str(PG_LOCK_TIMEOUT_MS)}
        return out
    if driver in INIT_COMMAND_DRIVERS:
        existing = str(out.get("init_command") or "")
        setting = f"innodb_lock_wait_timeout={MYSQL_LOCK_WAIT_S}"
        if not existing:
            out["init_command"] = f"SET SESSION {setting}"
        elif "innodb_lock_wait_timeout" not in existing and existing.upper().startswith("SET "):
            out["init_command"] = f"{existing}, SESSION {setting}"
        return out
    return None


def recommended_engine_options(conf: Any, target: Target, celery: tuple[int, ...]) -> dict[str, Any]:
    """The one database_engine_options every database fix shows: Celery's defaults
    (pool_pre_ping, pool_recycle) under the user's options, minus what crashes on ``celery``,
    plus READ COMMITTED on MySQL and a connect timeout spelled for the URL's driver."""
    options = {**celery_engine_defaults(), **engine_options(conf)}
    options.pop("autocommit", None)
    if celery < NULLPOOL_FILTER_FROM:
        options.pop("max_overflow", None)
        options.pop("echo_pool", None)
    name = db_dialect(target)
    if name in ("mysql", "mariadb"):
        options["isolation_level"] = "READ COMMITTED"
    driver = db_driver(target)
    timeout = connect_timeout_args(driver)
    if timeout and name != "sqlite" and not has_connect_timeout(options, driver):
        options["connect_args"] = {**dict(options.get("connect_args") or {}), **timeout}
    return options


def retry_settings(conf: Any) -> dict[str, Any]:
    """result_backend_always_retry on with a finite result_backend_max_retries (the user's own
    when finite, else :data:`MAX_RETRIES`): what every fix that can make a backend call raise
    pairs itself with, so a transient error is retried and a lasting one ends in
    BackendStoreError instead of blocking the task forever."""
    current = conf.get("result_backend_max_retries")
    finite = isinstance(current, (int, float)) and 0 <= current < float("inf")
    return {"result_backend_always_retry": True,
            "result_backend_max_retries": int(current) if finite else MAX_RETRIES}


def index_ddl(conf: Any, dialect_name: str = "") -> str:
    """The DDL for the date_done indexes Celery's models declare (index=True), named after the
    configured table (Celery itself keeps ix_celery_taskmeta_date_done for a renamed table, which
    collides per schema on PostgreSQL; any name serves the DELETE);
    on PostgreSQL ``CONCURRENTLY`` (it does not block writes while it builds; it must run outside
    a transaction block)."""
    how = "CREATE INDEX CONCURRENTLY" if dialect_name == "postgresql" else "CREATE INDEX"
    lines = []
    for kind in ("task", "group"):
        table = TableRef.from_conf(conf, kind)
        lines.append(f"{how} ix_{table.name}_date_done ON {table.qualified} (date_done);")
    return "\n".join(lines)


# ---- the broker ---------------------------------------------------------------------------------

AMQP_IGNORED_KEYS = ("socket_keepalive", "socket_keepalive_options")


def transport_options(conf: Any) -> dict[str, Any]:
    return dict(conf.get("broker_transport_options") or {})


def recommended_transport_options(conf: Any, target: Target) -> dict[str, Any]:
    """The one broker_transport_options the confirm fixes show: no ignored or unknown keys."""
    options = transport_options(conf)
    amqp = target.broker_scheme in AMQP_SCHEMES
    if "confirm_delivery" in options:
        wanted = options.pop("confirm_delivery")
        if amqp and wanted and "confirm_publish" not in options:
            options["confirm_publish"] = True  # False is the default: nothing to spell
    if not amqp:
        options.pop("confirm_publish", None)
    else:
        # Redis-only keys py-amqp ignores (it keeps TCP keepalive on), and socket_settings keys that
        # are not socket.TCP_* ints (setsockopt raises TypeError on them): every fix drops them, so
        # no fix keeps what another removes
        for key in AMQP_IGNORED_KEYS:
            options.pop(key, None)
        if "socket_settings" in options:
            settings = {k: v for k, v in dict(options["socket_settings"] or {}).items() if isinstance(k, int)}
            if settings:
                options["socket_settings"] = settings
            else:
                options.pop("socket_settings")
    return options
