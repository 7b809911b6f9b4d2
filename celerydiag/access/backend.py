"""Read-only access to the user's result backend: the SQLAlchemy URL, the one engine we build,
the task table, and the Redis client.

Why one module: the backend and serialization probes, ``poll-model --from-backend`` and
``bench-serialize --from-backend`` all read the same backend, and each used to parse the
``db+...`` URL, build an engine with its own timeouts and describe the task table its own way;
the copies drifted (one fell back to ``database_url``, one missed MariaDB's timeouts). Every
engine here is NullPool (one connection per use, closed at once) with driver-level timeouts,
because SQLAlchemy has none of its own and a silent server must not hang us. SQLAlchemy and
redis-py are imported inside the functions so ``--help`` stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from celerydiag.measure import MIN_CALL_TIMEOUT_S
from celerydiag.target import Target

# Celery's own defaults (celery/backends/database/models.py: __tablename__).
DEFAULT_TABLES = {"task": "celery_taskmeta", "group": "celery_tasksetmeta"}


def database_url(target: Target) -> str:
    """The SQLAlchemy URL of a database result backend, as Celery resolves it: the part after
    ``db+`` (``celery.app.backends.by_url``), else the ``database_url`` setting (what
    ``DatabaseBackend`` falls back to); '' when neither is set. Parsed with SQLAlchemy's own
    ``make_url``, so a malformed URL fails here with SQLAlchemy's message."""
    from sqlalchemy.engine import make_url

    head, plus, rest = target.backend_url.partition("+")
    raw = rest if plus and head.lower() == "db" else (target.conf.get("database_url") or "")
    return make_url(raw).render_as_string(hide_password=False) if raw else ""


def dialect(url: str) -> str:
    """``postgresql``, ``mysql``, ``mariadb``, ``sqlite``…: the URL's backend without its driver
    ('' for a URL SQLAlchemy cannot parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return str(make_url(url).get_backend_name()) if url else ""
    except (ArgumentError, ValueError):
        return ""


def connect_timeout_args(url: str, timeout_s: float) -> dict[str, Any]:
    """Driver-level timeouts so a silent server cannot hang us (SQLAlchemy has none of its own).
    PyMySQL takes fractions of a second for all three (each socket read/write is bounded);
    libpq's connect_timeout is whole seconds, at least 2 (it reads 1 as 2 and 0 as "none"), and
    it has no read timeout: bound its statements with :func:`statement_timeout_args`."""
    name = dialect(url)
    if name in ("mysql", "mariadb"):
        seconds = max(MIN_CALL_TIMEOUT_S, round(timeout_s, 3))
        return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
    if name == "postgresql":
        return {"connect_timeout": max(1, int(math.ceil(timeout_s)))}
    if name == "sqlite":
        return {"timeout": timeout_s}
    return {}


def statement_timeout_args(url: str, timeout_s: float, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """``args`` (connect_args) plus a bound on every statement of every connection made with them:
    PostgreSQL ``-c statement_timeout`` in the startup packet (server side: cuts a lock wait and
    a slow scan; no round trip) and ``tcp_user_timeout`` (a peer that stops acknowledging what
    we send); MySQL/MariaDB PyMySQL's read and write timeouts (client side, per socket call)."""
    out = dict(args or {})
    name = dialect(url)
    if name == "postgresql":
        bound_ms = max(1, int(timeout_s * 1000))
        options = str(out.get("options") or "")
        out["options"] = f"{options} -c statement_timeout={bound_ms}".strip()
        out.setdefault("tcp_user_timeout", bound_ms)
    elif name in ("mysql", "mariadb"):
        seconds = max(MIN_CALL_TIMEOUT_S, round(timeout_s, 3))
        out.update(read_timeout=seconds, write_timeout=seconds)
    return out


def engine(url: str, timeout_s: float, connect_args: dict[str, Any] | None = None, **kw: Any) -> Any:
    """The one ``create_engine`` of celerydiag: NullPool, our timeouts, then ``connect_args``
    (session options a caller needs) and ``kw`` (e.g. ``isolation_level``). The caller disposes it."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    args = {**connect_timeout_args(url, timeout_s), **(connect_args or {})}
    return create_engine(url, poolclass=NullPool, connect_args=args, **kw)


def readonly_engine(target: Target, timeout_s: float) -> Any:
    """An engine whose sessions cannot write (PostgreSQL default_transaction_read_only, MySQL
    SESSION TRANSACTION READ ONLY) and time out: belt and braces for "never writes"."""
    url = database_url(target)
    args: dict[str, Any] = {}
    name = dialect(url)
    if name == "postgresql":
        args["options"] = "-c default_transaction_read_only=on"
    elif name in ("mysql", "mariadb"):
        args["init_command"] = "SET SESSION TRANSACTION READ ONLY"
    return engine(url, timeout_s, statement_timeout_args(url, timeout_s, args))


@dataclass(frozen=True)
class TableRef:
    """A table Celery writes, named as configured (``database_table_names``/``_schemas``)."""

    name: str = DEFAULT_TABLES["task"]
    schema: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @classmethod
    def from_conf(cls, conf: Any, kind: str = "task") -> TableRef:
        """``kind`` is ``task`` or ``group``, the keys Celery's own settings use."""
        names = conf.get("database_table_names") or {}
        schemas = conf.get("database_table_schemas") or {}
        return cls(names.get(kind) or DEFAULT_TABLES[kind], schemas.get(kind))

    def core_table(self) -> Any:
        """The task table as a Core Table of the columns we read; not Celery's ORM model, whose
        configure() would rename it process-wide."""
        from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table

        return Table(self.name, MetaData(),
                     Column("id", Integer, primary_key=True), Column("task_id", String(155)),
                     Column("status", String(50)), Column("result", LargeBinary),
                     schema=self.schema)


def task_table(conf: Any) -> Any:
    """The configured task table as a Core Table (see :meth:`TableRef.core_table`)."""
    return TableRef.from_conf(conf).core_table()


def redis_backend_client(target: Target, timeout_s: float) -> Any:
    """A raw client (PING, SCAN, STRLEN) on the connection parameters of the backend of
    :func:`~celerydiag.access.app.redis_backend_app` (URL, TLS, the target's redis_* settings),
    with our timeouts forced even over URL query arguments: one way to build a bounded client."""
    from celerydiag.access.app import redis_backend_app

    backend = redis_backend_app(target, timeout_s).backend
    params = dict(backend.connparams)
    params.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return backend.redis.StrictRedis(connection_pool=backend.redis.ConnectionPool(**params))
