"""One connect to the broker and the result backend, before any probe runs.

Without this, an unreachable target would show up as every active probe failing the same way.
Here it becomes one line and exit 3, within the timeout, whatever the failure: a closed port, a
port that accepts and never answers, wrong credentials, a wrong vhost or database.
"""

from __future__ import annotations

from typing import Any

from celerydiag.errors import (
    E_BACKEND_UNREACHABLE,
    E_BROKER_UNREACHABLE,
    H_UNREACHABLE,
    TargetUnreachable,
)
from celerydiag.target import Target, redact_url


def check_broker(target: Target, timeout_s: float) -> None:
    """Connect the way Celery's producer does (kombu), bounded by ``timeout_s``."""
    from kombu import Connection

    if target.broker_scheme in ("memory", ""):
        return
    options = dict(target.conf.broker_transport_options or {})
    options.update(read_timeout=timeout_s, write_timeout=timeout_s,
                   socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    conn = Connection(target.broker_url, connect_timeout=timeout_s, transport_options=options,
                      ssl=target.conf.broker_use_ssl)
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                               timeout=timeout_s)
    except Exception as exc:
        raise TargetUnreachable(
            target.redact(E_BROKER_UNREACHABLE.format(url=redact_url(target.broker_url),
                                                      error=describe(exc))),
            H_UNREACHABLE) from None
    finally:
        _quietly(conn.release)


def check_backend(target: Target, timeout_s: float) -> None:
    scheme = target.backend_scheme
    try:
        if scheme in ("redis", "rediss", "sentinel"):
            _ping_redis(target, timeout_s)
        elif scheme == "db":
            ping_database(target.backend_url.split("+", 1)[1], timeout_s)
    except TargetUnreachable:
        raise
    except Exception as exc:
        raise TargetUnreachable(
            target.redact(E_BACKEND_UNREACHABLE.format(url=redact_url(target.backend_url),
                                                       error=describe(exc))),
            H_UNREACHABLE) from None


def _ping_redis(target: Target, timeout_s: float) -> None:
    client = redis_backend_client(target, timeout_s)
    try:
        client.ping()
    finally:
        client.close()


def redis_backend_client(target: Target, timeout_s: float) -> Any:
    """A client on the Redis result backend's own connection parameters (URL, TLS, prefixing),
    with our timeouts instead of Celery's 120 s socket timeout."""
    backend = target.app.backend
    params = dict(backend.connparams)
    params.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return backend.redis.StrictRedis(connection_pool=backend.redis.ConnectionPool(**params))


def ping_database(sqlalchemy_url: str, timeout_s: float) -> None:
    """One SELECT 1 on a fresh connection with driver-level timeouts; raises what the driver raises."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(sqlalchemy_url, poolclass=NullPool,
                           connect_args=connect_timeout_args(sqlalchemy_url, timeout_s))
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def connect_timeout_args(sqlalchemy_url: str, timeout_s: float) -> dict[str, object]:
    """Driver-level timeouts so a silent server cannot hang us (SQLAlchemy has none of its own)."""
    seconds = max(1, int(round(timeout_s)))
    if sqlalchemy_url.startswith("mysql"):
        return {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
    if sqlalchemy_url.startswith("postgresql"):
        return {"connect_timeout": seconds}
    if sqlalchemy_url.startswith("sqlite"):
        return {"timeout": timeout_s}
    return {}


def describe(exc: BaseException) -> str:
    """The innermost useful line of a driver error, without the SQLAlchemy boilerplate."""
    root: BaseException = exc
    seen = set()
    while getattr(root, "__cause__", None) is not None and id(root) not in seen:
        seen.add(id(root))
        root = root.__cause__  # type: ignore[assignment]
    text = str(getattr(exc, "orig", None) or root).strip()
    line = text.splitlines()[0] if text else ""
    if "(Background on this error" in line:
        line = line.split("(Background on this error")[0].strip()
    name = type(getattr(exc, "orig", None) or root).__name__
    if isinstance(exc, TimeoutError) or "timed out" in line.lower() or not line:
        line = line or "timed out"
    return f"{name}: {line}"


def _quietly(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except Exception:
        pass
