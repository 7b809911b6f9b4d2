"""One connect to the broker and the result backend, before any probe runs.

Without this, an unreachable target would show up as every active probe failing the same way.
Here it becomes one line per side and exit 3, within the timeout, whatever the failure: a closed
port, a port that accepts and never answers, wrong credentials, a wrong vhost or database. Only
the sides the selected probes need are checked (:func:`unreachable_sides`), so `probe backend`
works with the broker down and doctor still runs every probe that does not need the dead side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from celerydiag import interrupt
from celerydiag.access.backend import database_url, engine, redis_backend_client
from celerydiag.errors import (
    E_BACKEND_UNREACHABLE,
    E_BROKER_UNREACHABLE,
    H_UNREACHABLE,
    TargetUnreachable,
    describe,
    quietly,
)
from celerydiag.target import REDIS_SCHEMES, Side, Target, redact_url

REACH_TIMEOUTS = 2  # a reach check is a connect and one request, each within --timeout


def unreachable_sides(target: Target, sides: Iterable[Side], timeout_s: float) -> dict[Side, TargetUnreachable]:
    """Each of ``sides`` that cannot be reached, with the one-line error saying why (checked in
    Side order, each within ``timeout_s``)."""
    checks: dict[Side, Callable[[Target, float], None]] = {Side.BROKER: check_broker,
                                                            Side.BACKEND: check_backend}
    wanted = set(sides)
    down: dict[Side, TargetUnreachable] = {}
    for side in Side:
        if side in wanted:
            try:
                _cut_at(checks[side], target, timeout_s, side)
            except TargetUnreachable as exc:
                down[side] = exc
    return down


def _cut_at(check: Callable[[Target, float], None], target: Target, timeout_s: float, side: Side) -> None:
    """One check, cut if the driver's own timeouts let it run past REACH_TIMEOUTS x --timeout."""
    limit = REACH_TIMEOUTS * timeout_s
    try:
        with interrupt.deadline(time.monotonic() + limit):
            check(target, timeout_s)
    except interrupt.Overrun:
        what, url = ((E_BROKER_UNREACHABLE, target.broker_url) if side is Side.BROKER
                     else (E_BACKEND_UNREACHABLE, target.backend_url))
        raise TargetUnreachable(what.format(url=redact_url(url), error=f"no answer within {limit:g} s"),
                                H_UNREACHABLE) from None


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
        quietly(conn.release)


def check_backend(target: Target, timeout_s: float) -> None:
    scheme = target.backend_scheme
    try:
        if scheme in REDIS_SCHEMES:
            _ping_redis(target, timeout_s)
        elif scheme == "db":
            ping_database(database_url(target), timeout_s)
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


def ping_database(sqlalchemy_url: str, timeout_s: float) -> None:
    """One SELECT 1 on a fresh connection with driver-level timeouts; raises what the driver raises."""
    from sqlalchemy import text

    db = engine(sqlalchemy_url, timeout_s)
    try:
        with db.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        db.dispose()
