"""Reading the target's stored task metas, read-only and bounded, for the serialization probe and
``bench-serialize --from-backend``.

Its own module so the CLI does not import a probe for it. Redis: a bounded SCAN of
``celery-task-meta-*`` keys read with STRLEN and GET; database backend: a bounded SELECT of recent
``result`` values from the task table in a read-only session. Decoding goes through the target's
own ``result_accept_content``, so we decode nothing the user's clients would refuse.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from celerydiag.access.app import redis_backend_app
from celerydiag.access.backend import readonly_engine, redis_backend_client, task_table
from celerydiag.errors import DiagError, InputError, TargetUnreachable, describe, one_line, quietly
from celerydiag.measure import Budget
from celerydiag.serialization.harness import MB, ONE_LINE_CHARS, BackendModel, Payload, backend_model
from celerydiag.target import Target

MAX_KEYS = 500  # stored metas whose size we look at
SCAN_CALLS = 20  # SCAN round trips at most
MAX_READ_BYTES = 16 * MB  # the largest single value we GET/SELECT and decode
PICKED = 1  # stored metas decoded and measured: the largest that decodes (the P99 stand-in)
MAX_DECODE_ATTEMPTS = 8


@dataclass
class StoredMetas:
    """What we could see of the target's stored states: sizes of up to MAX_KEYS values and the
    largest one that decodes."""

    source: str
    sizes: list[int] = field(default_factory=list)
    samples: list[tuple[str, int, Any]] = field(default_factory=list)  # (task id, size, decoded)
    skipped: list[str] = field(default_factory=list)  # one line per value we could not use


def read_stored_metas(target: Target, timeout: float, cleanup: ExitStack,
                      model: BackendModel, budget: Budget | None = None) -> StoredMetas | None:
    """The target's recent stored metas, read-only and bounded; None for backends we cannot read.
    Connections it opens are closed by ``cleanup``. Bounded in time by ``budget`` (a probe's
    deadline; ``timeout`` from now when none is given): every call's timeout is what is left of
    it, and no further SCAN or value read starts once it has run out (what was read is kept)."""
    budget = budget or Budget.within(timeout, timeout)
    if model.name == "redis":
        client = redis_backend_client(target, budget.call_timeout(timeout))
        cleanup.callback(client.close)
        return _read_redis(target, client, budget)
    if model.name == "db":
        engine = readonly_engine(target, budget.call_timeout(timeout))
        cleanup.callback(engine.dispose)
        return _read_database(target, engine, model, budget=budget)
    return None


def _read_redis(target: Target, client: Any, budget: Budget | None = None) -> StoredMetas:
    backend = target.app.backend
    prefix = backend.task_keyprefix  # already carries global_keyprefix
    prefix = prefix if isinstance(prefix, bytes) else prefix.encode()
    pattern = re.sub(rb"([*?\[\]\\])", rb"\\\1", prefix) + b"*"
    stored = StoredMetas(source="Redis result backend")
    keys: list[bytes] = []
    try:
        cursor = 0
        for _ in range(SCAN_CALLS):
            if budget is not None and budget.expired() and keys:
                stored.skipped.append("fewer stored metas scanned: the time bound ran out")
                break
            cursor, batch = client.scan(cursor, match=pattern, count=200)
            keys.extend(batch)
            if not cursor or len(keys) >= MAX_KEYS:
                break
        keys = keys[:MAX_KEYS]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.strlen(key)
        lengths = pipe.execute(raise_on_error=False)
    except Exception as exc:
        raise TargetUnreachable(target.redact(f"cannot read stored metas from Redis: {describe(exc)}")) from None
    sized = [(k, n) for k, n in zip(keys, lengths) if isinstance(n, int) and n > 0]
    stored.sizes = [n for _, n in sized]
    for key, size in _pick(sized):
        if len(stored.samples) >= PICKED or (budget is not None and budget.expired()):
            break
        task_id = key[len(prefix):].decode(errors="replace")
        try:
            raw = client.get(key)
            if raw is None:
                continue  # expired between SCAN and GET
            stored.samples.append((task_id, size, backend.decode(raw)))
        except Exception as exc:  # ContentDisallowed: the user's clients would refuse it too
            stored.skipped.append(f"task {task_id}: {one_line(exc, ONE_LINE_CHARS)}")
    return stored


def _pick(sized: list[tuple[Any, int]]) -> list[tuple[Any, int]]:
    """Values to try, best first: the largest we may read, the median (what a typical update
    carries), then the rest from large to small, at most MAX_DECODE_ATTEMPTS. Readers stop at
    PICKED decoded samples; the later candidates stand in for metas that do not decode (written
    before a result_serializer change, or in a format the user's clients refuse)."""
    readable = sorted((p for p in sized if p[1] <= MAX_READ_BYTES), key=lambda p: p[1])
    if not readable:
        return []
    order = [readable[-1], readable[len(readable) // 2], *reversed(readable[:-1])]
    return list(dict.fromkeys(order))[:MAX_DECODE_ATTEMPTS]


def _read_database(target: Target, engine: Any, model: BackendModel, limit: int = MAX_KEYS,
                   budget: Budget | None = None) -> StoredMetas:
    from sqlalchemy import func, select

    table = task_table(target.conf)
    stored = StoredMetas(source=f"database table {table.fullname}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(table.c.id, table.c.task_id, func.length(table.c.result))
                                .order_by(table.c.id.desc()).limit(limit)).all()
            sized = [((row[0], row[1]), int(row[2])) for row in rows if row[2]]
            stored.sizes = [n for _, n in sized]
            for (row_id, task_id), size in _pick(sized):
                if len(stored.samples) >= PICKED or (budget is not None and budget.expired()):
                    break
                raw = conn.execute(select(table.c.result).where(table.c.id == row_id)).scalar()
                try:
                    stored.samples.append((task_id, size, decode_result_column(target, bytes(raw), model)))
                except Exception as exc:
                    stored.skipped.append(f"task {task_id}: {one_line(exc, ONE_LINE_CHARS)}")
            conn.rollback()
    except Exception as exc:
        if _missing_table(exc, table):
            stored.skipped.append(f"no task table {table.fullname} yet")
            return stored
        raise TargetUnreachable(target.redact(f"cannot read {table.fullname}: {describe(exc)}")) from None
    return stored


def _missing_table(exc: Exception, table: Any) -> bool:
    """The task table is missing: the error names it. PostgreSQL's 'role "x" does not exist' and
    'database "x" does not exist' are login failures (the target is unreachable), not this."""
    text = describe(exc).lower()
    return table.name.lower() in text and any(
        s in text for s in ("does not exist", "doesn't exist", "no such table"))


def decode_result_column(target: Target, raw: bytes, model: BackendModel) -> Any:
    """Decode a ``result`` value the way the installed Celery's database backend reads it, but
    never unpickle what the user's own clients would not: a pre-5.7 PickleType column (their
    clients unpickle it anyway) or pickle in their accept list."""
    import pickle

    from kombu.serialization import loads, prepare_accept_content

    conf = target.conf
    accept = prepare_accept_content(conf.result_accept_content or conf.accept_content)
    if model.pickles_result:
        return pickle.loads(raw)
    serializer = conf.result_serializer or "json"
    from kombu.serialization import registry

    ctype, cenc, _ = registry._encoders[serializer]
    try:
        return loads(raw, ctype, cenc, accept=accept)
    except Exception:
        if raw[:1] == b"\x80" and "application/x-python-serialize" in (accept or ()):
            return pickle.loads(raw)  # a row written before Celery 5.7 (PickleType)
        raise


def read_task_meta(target: Target, task_id: str, timeout_s: float, max_bytes: int) -> Payload:
    """One stored meta for ``bench-serialize --from-backend``: Celery's own ``get_task_meta`` on
    key-value backends; for the database backend a read-only SELECT (Celery's backend would
    create or alter tables on first use, which we never do on a user's database)."""
    model = backend_model(target.backend_scheme)
    if model.name == "rpc" or target.backend_scheme in ("disabled", ""):
        raise InputError(f"--from-backend needs a backend that stores results; {target.backend_scheme}:// "
                         "does not", "pass --backend redis://... or --app with your result backend")
    if model.name == "db":
        return _read_database_task(target, task_id, timeout_s, max_bytes, model)
    if model.name != "redis":
        return _read_meta(target, target.app.backend, task_id, max_bytes, sized=False)
    app = redis_backend_app(target, timeout_s)  # our timeouts; the user's app stays untouched
    try:
        return _read_meta(target, app.backend, task_id, max_bytes, sized=True)
    finally:
        quietly(app.close)


def _read_meta(target: Target, backend: Any, task_id: str, max_bytes: int, sized: bool) -> Payload:
    """Celery's own get_task_meta; on Redis (``sized``) after a STRLEN, so a value above
    ``max_bytes`` is never read."""
    if sized:
        try:
            size = backend.client.strlen(backend.get_key_for_task(task_id))
        except Exception as exc:
            raise TargetUnreachable(target.redact(f"cannot read from Redis: {describe(exc)}")) from None
        if size > max_bytes:
            raise InputError(f"stored meta of task {task_id} is {size:,} bytes, above --max-size {max_bytes:,}")
    try:
        meta = backend.get_task_meta(task_id)
    except Exception as exc:
        raise TargetUnreachable(target.redact(f"cannot read task {task_id}: {describe(exc)}")) from None
    if meta.get("status") == "PENDING" and meta.get("result") is None:
        raise InputError(f"no stored state for task {task_id} in the result backend",
                         "check the id; results expire after result_expires (default 1 day) or when forgotten")
    meta = dict(meta)
    if isinstance(meta.get("result"), BaseException):  # get_task_meta rebuilt the exception
        meta["result"] = backend.prepare_exception(meta["result"])
    meta.setdefault("task_id", task_id)
    return Payload(f"backend:{task_id}", f"stored meta of task {task_id} ({meta.get('status')})", meta)


def _read_database_task(target: Target, task_id: str, timeout_s: float, max_bytes: int,
                        model: BackendModel) -> Payload:
    from sqlalchemy import func, select

    table = task_table(target.conf)
    engine = readonly_engine(target, timeout_s)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(table.c.id, table.c.status, func.length(table.c.result))
                               .where(table.c.task_id == task_id)).first()
            if row is None or not row[2]:
                raise InputError(f"no stored result for task {task_id} in {table.fullname}")
            if row[2] > max_bytes:
                raise InputError(f"stored result of task {task_id} is {row[2]:,} bytes, above --max-size {max_bytes:,}")
            raw = conn.execute(select(table.c.result).where(table.c.id == row[0])).scalar()
            conn.rollback()
    except DiagError:
        raise
    except Exception as exc:
        if _missing_table(exc, table):
            raise InputError(f"no task table {table.fullname} in the result backend's database",
                             "nothing stored there yet, or your app sets database_table_names/"
                             "database_table_schemas: pass --app so they are read") from None
        raise TargetUnreachable(target.redact(f"cannot read {table.fullname}: {describe(exc)}")) from None
    finally:
        engine.dispose()
    try:
        value = decode_result_column(target, bytes(raw), model)
    except Exception as exc:
        raise InputError(f"cannot decode the stored result of task {task_id}: "
                         f"{one_line(exc, ONE_LINE_CHARS)}") from None
    return Payload(f"backend:{task_id}", f"stored result of task {task_id} ({row[1]})", value)
