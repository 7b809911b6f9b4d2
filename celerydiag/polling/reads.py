"""How often the user's clients really read task states: the result backend's own counters, read
twice around a sampling window, read-only.

Why: without ``--poll-interval`` the polling probe could only assume Celery's ``get(interval=0.5)``
and warn about 495 ms on every database backend, healthy or not. The backend already counts
every read of the task table (or of every GET), so the real poll rate is one subtraction away:

- PostgreSQL: ``pg_stat_user_tables`` of the task table. Every client read (``get_task_meta``)
  is one index (or sequential) scan; every state write adds its own (:func:`lookups_per_write`:
  one per INSERT, three per UPDATE on 5.7), so ``reads = Δ(idx_scan + seq_scan) - Δn_tup_ins
  - 3 Δn_tup_upd``.
  A backend flushes its counters at most once a second, so a window's edges are off by up to
  a second of reads (the rate is steady-state: fine for a poll interval, not for a spike).
- MariaDB/MySQL: ``performance_schema.table_io_waits_summary_by_table`` of the task table when
  ``performance_schema`` is on (``COUNT_FETCH`` less the writers' fetches, counted the same way);
  otherwise the server-wide ``Com_select - Com_insert - 2 Com_update`` (every database on the
  server: an upper bound on the clients' reads, so a lower bound on their interval, and said so).
- Redis: ``INFO commandstats``. Every read is a GET (MGET for groups); every state write is a
  GET followed by a SET/SETEX (``KeyValueStoreBackend._store_result``), so
  ``reads = Δ(GET + MGET) - Δ(SET + SETEX)``. Server-wide, like the MySQL fallback.

Our own reads: between the two snapshots we send nothing but the snapshot queries themselves
(system views, ``SHOW STATUS``, ``INFO``: none is a read of the task table or a GET), and the
tasks-in-flight count runs after the second snapshot, so the window holds none of ours; the
subtraction is kept explicit (``own_reads_count``) so that stays visible.

Tasks in flight: the task rows (or keys, bounded SCAN) whose state is not final; the effective
interval of one client's polling is ``window * in_flight / reads``. With no task in flight, reads
were of tasks not stored yet (PENDING has no row) or already final: the interval is then given
for one task and said to be a lower bound.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celerydiag.target import REDIS_SCHEMES, Target

READY = ("SUCCESS", "FAILURE", "REVOKED")  # celery.states.READY_STATES
MIN_READS = 3  # fewer is within the counters' edge error (a Redis write's GET and SET can straddle one)
SCAN_KEYS_MAX = 2000  # Redis keys examined for the in-flight count, at most
SCAN_COUNT = 500


@dataclass
class ClientReads:
    """What the window saw. ``reads`` are the clients' reads of task states (writers' lookups
    and our own subtracted); ``in_flight`` None when it could not be counted."""

    source: str  # pg_stat_user_tables | performance_schema | global_status | commandstats
    scope: str  # "table" (the task table only) or "server" (everything on the server)
    window_s: float
    reads: int
    writes: int
    raw_reads: int
    own_reads: int = 0
    in_flight: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def reads_per_s(self) -> float:
        return self.reads / self.window_s if self.window_s > 0 else 0.0

    @property
    def tasks(self) -> int:
        """Tasks the reads are spread over: those in flight, at least one."""
        return max(1, self.in_flight or 0)

    @property
    def interval_s(self) -> float | None:
        """The effective poll interval of one task's client; None when fewer than MIN_READS were
        counted (nobody polled, or slower than the window can tell), or when no
        task was in flight (then the reads were not polls of a running task: another
        application's, or of tasks already final)."""
        if self.reads < MIN_READS or self.in_flight == 0:
            return None
        return self.window_s * self.tasks / self.reads

    @property
    def attributable(self) -> bool:
        """Whether the reads can be taken for the clients' polls: the task table's own counters,
        or Redis GETs (a result Redis holds task states). Server-wide SELECTs are mostly other
        queries: their interval is only a lower bound, a model's number."""
        return self.scope == "table" or self.source == "commandstats"

    def evidence(self) -> dict[str, Any]:
        interval = self.interval_s
        return {"source": self.source, "scope": self.scope, "window_s": round(self.window_s, 3),
                "client_reads_count": self.reads, "state_writes_count": self.writes,
                "counted_reads_count": self.raw_reads, "own_reads_count": self.own_reads,
                "client_reads_per_s": round(self.reads_per_s, 3),
                "tasks_in_flight_count": self.in_flight,
                "poll_interval_ms": None if interval is None else round(interval * 1000, 3),
                # the other end of the range: every read was of one task (rows a dead worker left in
                # a non-final state count as in flight and stretch poll_interval_ms)
                "poll_interval_one_task_ms": (round(self.window_s / self.reads * 1000, 3)
                                              if self.reads > 0 else None),
                "notes": list(self.notes)}


def measurable(target: Target) -> bool:
    """Whether this module can count the backend's reads (database on PostgreSQL/MySQL, Redis)."""
    scheme = target.backend_scheme
    if scheme in REDIS_SCHEMES and scheme != "sentinel":
        return True
    if scheme != "db":
        return False
    from celerydiag.access.backend import database_url, dialect

    return dialect(database_url(target)) in ("postgresql", "mysql", "mariadb")


def measure(target: Target, window_s: float, timeout_s: float,
            sleep: Callable[[float], None] = time.sleep) -> ClientReads:
    """Count the clients' reads of task states for ``window_s`` seconds (see the module doc).
    Raises the driver's exception when the backend cannot be read; the probe turns it into a note."""
    if target.backend_scheme in REDIS_SCHEMES:
        return _redis(target, window_s, timeout_s, sleep)
    return _database(target, window_s, timeout_s, sleep)


# ---- database ---------------------------------------------------------------------------------

PG_STATS = ("SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0), n_tup_ins, n_tup_upd "
            "FROM pg_stat_user_tables WHERE relname = :name AND schemaname = coalesce(:schema, current_schema())")
PS_ON = "SELECT @@performance_schema"
PS_STATS = ("SELECT COUNT_FETCH, COUNT_INSERT, COUNT_UPDATE FROM performance_schema.table_io_waits_summary_by_table "
            "WHERE OBJECT_SCHEMA = coalesce(:schema, database()) AND OBJECT_NAME = :name")
GLOBAL_STATS = "SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_select', 'Com_insert', 'Com_update')"


def _database(target: Target, window_s: float, timeout_s: float, sleep: Callable[[float], None]) -> ClientReads:
    from sqlalchemy import func, select, text

    from celerydiag.access.backend import TableRef, database_url, dialect, readonly_engine

    ref = TableRef.from_conf(target.conf)
    name = dialect(database_url(target))
    engine = readonly_engine(target, timeout_s)
    try:
        def query(sql: str, **params: Any) -> list[Any]:
            with engine.connect() as conn:  # a new session each time: a fresh statistics snapshot
                rows = list(conn.execute(text(sql), params))
                conn.rollback()
                return rows

        if name == "postgresql":
            source, scope = "pg_stat_user_tables", "table"

            def snapshot() -> tuple[int, int, int]:
                rows = query(PG_STATS, name=ref.name, schema=ref.schema)
                return (int(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else (0, 0, 0)
        elif query(PS_ON)[0][0]:
            source, scope = "performance_schema", "table"

            def snapshot() -> tuple[int, int, int]:
                rows = query(PS_STATS, name=ref.name, schema=ref.schema)
                return (int(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else (0, 0, 0)
        else:
            source, scope = "global_status", "server"

            def snapshot() -> tuple[int, int, int]:
                status = {str(k).lower(): int(v) for k, v in query(GLOBAL_STATS)}
                return status.get("com_select", 0), status.get("com_insert", 0), status.get("com_update", 0)

        first, started = snapshot(), time.monotonic()
        sleep(window_s)
        last, window = snapshot(), time.monotonic() - started
        result = _counted(source, scope, window, first, last)
        if scope == "server":
            result.notes.append("performance_schema is off: reads are every SELECT on the server (an upper "
                                "bound), so the interval is a lower bound")
        table = ref.core_table()
        try:
            with engine.connect() as conn:  # after the window: our own scan is not in it
                result.in_flight = int(conn.execute(
                    select(func.count()).select_from(table).where(table.c.status.notin_(READY))).scalar() or 0)
                conn.rollback()
        except Exception as exc:
            from celerydiag.errors import describe

            missing = "exist" in str(exc).lower()  # no such table / relation does not exist / doesn't exist
            result.in_flight = 0 if missing else None
            result.notes.append(f"no task table {ref.qualified} yet: no task in flight" if missing else
                                f"tasks in flight not counted ({describe(exc)}): the reads are spread over one")
        return result
    finally:
        engine.dispose()


def lookups_per_write(source: str) -> tuple[int, int]:
    """(lookups per INSERT, per UPDATE) that Celery's own state writes add to ``source``'s count.

    ``DatabaseBackend._store_result`` SELECTs the row by task_id; a new task is then INSERTed (one
    lookup); an existing one is, since 5.7 (``_query_task(for_update=True)``), SELECTed again FOR
    UPDATE and UPDATEd by id, itself one more scan (PostgreSQL) or row fetch (performance_schema):
    three, or two before 5.7. Server-wide ``Com_select`` counts statements: the UPDATE is not one.
    Redis: one GET before each SET/SETEX. tests/integration/test_polling_measured.py pins these with
    a real writer and no reader."""
    if source == "commandstats":
        return 1, 1
    from celery.backends.database import DatabaseBackend

    query_task = getattr(DatabaseBackend, "_query_task", None)
    selects = 2 if query_task is not None and "for_update" in inspect.signature(query_task).parameters else 1
    return 1, selects if source == "global_status" else selects + 1


def _counted(source: str, scope: str, window_s: float, first: tuple[int, int, int],
             last: tuple[int, int, int], own: int = 0) -> ClientReads:
    """Reads and writes between two (lookups, inserts, updates) snapshots, the writers' own
    lookups (:func:`lookups_per_write`) and ours subtracted."""
    raw = max(0, last[0] - first[0])
    inserts, updates = max(0, last[1] - first[1]), max(0, last[2] - first[2])
    per_insert, per_update = lookups_per_write(source)
    writers = inserts * per_insert + updates * per_update
    return ClientReads(source, scope, window_s, max(0, raw - writers - own), inserts + updates, raw, own)


# ---- Redis ------------------------------------------------------------------------------------

def _calls(stats: Mapping[str, Any], command: str) -> int:
    entry = stats.get(command) or stats.get(f"cmdstat_{command}") or {}
    return int(entry.get("calls", 0)) if isinstance(entry, Mapping) else 0


def _redis(target: Target, window_s: float, timeout_s: float, sleep: Callable[[float], None]) -> ClientReads:
    from celerydiag.access.app import redis_backend_app

    app = redis_backend_app(target, timeout_s)
    try:
        backend = app.backend
        params = dict(backend.connparams)
        params.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        client = backend.redis.StrictRedis(connection_pool=backend.redis.ConnectionPool(**params))
        try:
            def snapshot() -> tuple[int, int, int]:
                stats = client.info("commandstats")  # each write: one GET, then SET/SETEX
                return (_calls(stats, "get") + _calls(stats, "mget"),
                        _calls(stats, "set") + _calls(stats, "setex"), 0)

            first, started = snapshot(), time.monotonic()
            sleep(window_s)
            last, window = snapshot(), time.monotonic() - started
            result = _counted("commandstats", "server", window, first, last)
            result.notes.append("INFO commandstats counts every GET on the server (an upper bound on the "
                                "clients' reads of task states)")
            prefix = backend.get_key_for_task("x")[:-1]  # global_keyprefix + celery-task-meta-
            result.in_flight = _redis_in_flight(client, backend, prefix, result)
            return result
        finally:
            client.close()
    finally:
        app.close()


def _redis_in_flight(client: Any, backend: Any, prefix: bytes | str, result: ClientReads) -> int | None:
    """Task keys whose stored state is not final, from a bounded SCAN (after the window)."""
    match = (prefix.decode() if isinstance(prefix, bytes) else prefix) + "*"
    cursor, keys = 0, []
    while True:
        cursor, batch = client.scan(cursor, match=match, count=SCAN_COUNT)
        keys += batch
        if not cursor or len(keys) >= SCAN_KEYS_MAX:
            break
    if cursor:
        result.notes.append(f"more than {SCAN_KEYS_MAX} task keys: tasks in flight counted among the first "
                            f"{len(keys)}")
    idle = _idle_s(client, keys)  # before our MGET, which would touch every key
    touched_within = int(math.ceil(result.window_s)) + 1  # the LRU clock ticks once a second
    in_flight = stale = 0
    for start in range(0, len(keys), SCAN_COUNT):
        batch = keys[start:start + SCAN_COUNT]
        for key, raw in zip(batch, client.mget(batch)):
            if raw is None:
                continue
            try:
                status = backend.decode_result(raw).get("status")
            except Exception:  # a value we cannot decode: not counted
                continue
            if status in READY:
                continue
            if idle is not None and idle.get(key, 0) > touched_within:
                stale += 1  # nobody read or wrote it while we watched: not a task anyone waits on
            else:
                in_flight += 1
    if stale:
        result.notes.append(f"{stale} task key(s) in a non-final state untouched for the whole window (a task "
                            "whose worker died, or one nobody polls): not counted in flight")
    return in_flight


def _idle_s(client: Any, keys: list[Any]) -> dict[Any, int] | None:
    """OBJECT IDLETIME of each key (seconds since its last read or write; OBJECT itself touches
    nothing), or None when the server cannot say (an LFU maxmemory-policy refuses it)."""
    try:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.object("idletime", key)
        return {key: int(v or 0) for key, v in zip(keys, pipe.execute())}
    except Exception:
        return None
