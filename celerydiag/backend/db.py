"""Read-only inspection of a database result backend: server, settings, the task table, lock waits.

Why its own module: each database names the same facts differently (MariaDB's
``information_schema.INNODB_LOCK_WAITS``, MySQL 8's ``performance_schema.data_lock_waits``,
PostgreSQL's ``pg_blocking_pids()``), and the probe should read one shape. Everything here only
reads catalog views: it never touches a row of the user's tables. Missing privileges degrade to a
note (what we could not see and the GRANT that would show it), never to a failure.

Lock waits are *sampled* several times over ``--duration`` and merged into episodes (one waiter
blocked by one blocker), because one snapshot misses short waits and cannot say how long a wait
lasted (pg_activity/pt-stalk users keep asking for exactly that; reference peers.md §5).
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celerydiag.access.backend import TableRef
from celerydiag.compat import version_tuple

# Settings that decide how long a blocked Celery write can wait, per dialect (reference E).
PG_SETTINGS = ("default_transaction_isolation", "lock_timeout", "deadlock_timeout", "log_lock_waits",
               "idle_in_transaction_session_timeout", "statement_timeout")
MYSQL_SETTINGS = ("tx_isolation", "transaction_isolation", "innodb_lock_wait_timeout",
                  "innodb_deadlock_detect", "innodb_rollback_on_timeout", "lock_wait_timeout")
QUERY_CHARS = 200  # enough of a query to recognise it, short enough for a report


@dataclass
class ServerInfo:
    dialect: str  # postgresql | mysql | mariadb | sqlite
    version: str
    settings: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what we could not see, and why

    @property
    def is_mysql_family(self) -> bool:
        return self.dialect in ("mysql", "mariadb")

    def isolation(self) -> str:
        value = (self.settings.get("transaction_isolation") or self.settings.get("tx_isolation")
                 or self.settings.get("default_transaction_isolation") or "")
        return value.upper().replace("-", " ")


@dataclass
class TableInfo:
    table: TableRef
    exists: bool = False
    rows: int | None = None
    size_bytes: int | None = None
    indexes: list[str] = field(default_factory=list)
    date_done_indexed: bool = False
    oldest_trx: dict[str, Any] | None = None  # the oldest open transaction touching the table


@dataclass
class Episode:
    """One waiter blocked by one blocker, merged over the samples in which it was seen."""

    waiter_id: str
    blocker_id: str
    waiter: dict[str, Any]
    blocker: dict[str, Any]
    first_seen_s: float
    last_seen_s: float
    wait_s: float  # the longest wait seen: the server's own count or our span, whichever is larger
    on_task_table: bool
    samples: int = 1

    def to_evidence(self) -> dict[str, Any]:
        return {"waiter_id": self.waiter_id, "blocker_id": self.blocker_id,
                "wait_ms": round(self.wait_s * 1000, 1),
                "seen_count": self.samples, "on_task_table": self.on_task_table,
                # when, in seconds into the sampling window: the HTML report's lock-wait chart
                "first_seen_s": round(self.first_seen_s, 3), "last_seen_s": round(self.last_seen_s, 3),
                "waiter": self.waiter, "blocker": self.blocker}


def dialect_of(engine: Any, version: str) -> str:
    name = engine.dialect.name
    if name == "mysql" and "mariadb" in version.lower():
        return "mariadb"
    return name


def server_info(conn: Any) -> ServerInfo:
    """Version and the lock settings, through the connection we were given."""
    from sqlalchemy import text

    engine_name = conn.engine.dialect.name
    if engine_name == "postgresql":
        version = str(conn.execute(text("SHOW server_version")).scalar())
        # reset_val: the session default, not what our own SET statement_timeout made it
        rows = conn.execute(text("SELECT name, reset_val, unit FROM pg_settings WHERE name = ANY(:n)"),
                            {"n": list(PG_SETTINGS)}).all()
        settings = {r[0]: f"{r[1]}{r[2] or ''}" if r[2] not in (None, "", "B") else str(r[1]) for r in rows}
        return ServerInfo("postgresql", version, settings)
    if engine_name == "mysql":
        version = str(conn.execute(text("SELECT VERSION()")).scalar())
        names = ", ".join(f"'{n}'" for n in MYSQL_SETTINGS)
        rows = conn.execute(text(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({names})")).all()
        return ServerInfo(dialect_of(conn.engine, version), version, {r[0]: str(r[1]) for r in rows})
    if engine_name == "sqlite":
        version = str(conn.execute(text("SELECT sqlite_version()")).scalar())
        info = ServerInfo("sqlite", version, {"journal_mode": str(conn.execute(text("PRAGMA journal_mode")).scalar())})
        info.notes.append("SQLite has no row locks and no lock tables: a writer locks the whole database,"
                          " so there are no lock waits to sample")
        return info
    return ServerInfo(engine_name, "", {}, [f"no lock inspection for {engine_name} databases"])


def table_info(conn: Any, table: TableRef, dialect: str) -> TableInfo:
    """Rows (the server's estimate: an exact count would scan a big table), size, indexes."""
    from sqlalchemy import inspect, text

    info = TableInfo(table)
    inspector = inspect(conn)
    if not inspector.has_table(table.name, schema=table.schema):
        return info
    info.exists = True
    for index in inspector.get_indexes(table.name, schema=table.schema):
        columns = [c for c in index.get("column_names") or [] if c]
        info.indexes.append(f"{index.get('name')}({', '.join(columns)})")
        if columns and columns[0] == "date_done":
            info.date_done_indexed = True
    if dialect == "postgresql":
        row = conn.execute(text("SELECT c.reltuples::bigint, pg_total_relation_size(c.oid) FROM pg_class c"
                                " WHERE c.oid = to_regclass(:t)"), {"t": _pg_regclass(table)}).first()
        if row:
            info.rows = int(row[0]) if row[0] is not None and row[0] >= 0 else None
            info.size_bytes = int(row[1])
    elif dialect in ("mysql", "mariadb"):
        row = conn.execute(text("SELECT TABLE_ROWS, DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES"
                                " WHERE TABLE_SCHEMA = COALESCE(:s, DATABASE()) AND TABLE_NAME = :t"),
                           {"s": table.schema, "t": table.name}).first()
        if row:
            info.rows = None if row[0] is None else int(row[0])
            info.size_bytes = None if row[1] is None else int(row[1])
    elif dialect == "sqlite":
        quoted = conn.engine.dialect.identifier_preparer.quote(table.name)
        info.rows = int(conn.execute(text(f"SELECT count(*) FROM {quoted}")).scalar() or 0)
    info.oldest_trx = oldest_transaction(conn, table, dialect)
    return info


def _pg_regclass(table: TableRef) -> str:
    quote = '"{}"'.format
    return f"{quote(table.schema)}.{quote(table.name)}" if table.schema else quote(table.name)


def oldest_transaction(conn: Any, table: TableRef, dialect: str) -> dict[str, Any] | None:
    """The oldest open transaction holding a lock on the task table (PostgreSQL, MySQL 8), or, where
    the server cannot say which tables a transaction touched (MariaDB), the oldest one at all."""
    from sqlalchemy import text

    if dialect == "postgresql":
        row = conn.execute(text(
            "SELECT a.pid, a.usename, host(a.client_addr), a.state,"
            " EXTRACT(EPOCH FROM clock_timestamp() - a.xact_start), left(a.query, :n),"
            " string_agg(DISTINCT l.mode, ',')"
            " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.relation = to_regclass(:t) AND a.xact_start IS NOT NULL AND a.pid <> pg_backend_pid()"
            " GROUP BY a.pid, a.usename, a.client_addr, a.state, a.xact_start, a.query"
            " ORDER BY a.xact_start LIMIT 1"), {"t": _pg_regclass(table), "n": QUERY_CHARS}).first()
        if row:
            return {"id": str(row[0]), "user": row[1], "host": row[2] or "local", "state": row[3],
                    "age_s": round(float(row[4] or 0), 3), "query": row[5], "lock_modes": row[6],
                    "touches_task_table": True}
        return None
    if dialect in ("mysql", "mariadb"):
        row = conn.execute(text(
            "SELECT t.trx_mysql_thread_id, p.USER, p.HOST, t.trx_state,"
            " TIMESTAMPDIFF(MICROSECOND, t.trx_started, NOW(6)) / 1e6, LEFT(t.trx_query, :n), t.trx_rows_locked"
            " FROM information_schema.INNODB_TRX t"
            " LEFT JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id"
            " WHERE t.trx_mysql_thread_id <> CONNECTION_ID() ORDER BY t.trx_started LIMIT 1"),
            {"n": QUERY_CHARS}).first()
        if row:
            return {"id": str(row[0]), "user": row[1], "host": row[2], "state": row[3],
                    "age_s": round(float(row[4] or 0), 3), "query": row[5],
                    "rows_locked_count": int(row[6] or 0), "touches_task_table": None}
    return None


# ---- live lock waits --------------------------------------------------------------------------------

PG_WAITS = """
SELECT w.pid, w.usename, host(w.client_addr), left(w.query, :n),
       EXTRACT(EPOCH FROM clock_timestamp() - {wait_start}),
       b.pid, b.usename, host(b.client_addr), left(b.query, :n), b.state,
       EXTRACT(EPOCH FROM clock_timestamp() - b.xact_start),
       EXISTS (SELECT 1 FROM pg_locks x WHERE x.pid = w.pid AND x.relation = to_regclass(:t))
FROM pg_stat_activity w
CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS bp(pid)
JOIN pg_stat_activity b ON b.pid = bp.pid
WHERE w.wait_event_type = 'Lock' AND w.pid <> pg_backend_pid()
"""
# pg_locks.waitstart exists from PostgreSQL 14; before it the statement start is the best we have.
PG_WAIT_START_14 = ("COALESCE((SELECT min(l.waitstart) FROM pg_locks l WHERE l.pid = w.pid AND NOT l.granted),"
                    " w.query_start)")
PG_WAIT_START_OLD = "w.query_start"

# MySQL 5.7 and MariaDB name lock waits in information_schema, MySQL 8 in performance_schema;
# the transactions and connections around them are read the same way on all three.
_MYSQL_WAITS = """
SELECT r.trx_mysql_thread_id, rp.USER, rp.HOST, LEFT(r.trx_query, :n),
       TIMESTAMPDIFF(MICROSECOND, r.trx_wait_started, NOW(6)) / 1e6,
       b.trx_mysql_thread_id, bp.USER, bp.HOST, LEFT(b.trx_query, :n), bp.COMMAND,
       TIMESTAMPDIFF(MICROSECOND, b.trx_started, NOW(6)) / 1e6, {lock_table}
FROM {waits} w
JOIN information_schema.INNODB_TRX r ON r.trx_id = w.{requesting}
JOIN information_schema.INNODB_TRX b ON b.trx_id = w.{blocking}
LEFT JOIN {locks} l ON l.{lock_id} = w.{requested_lock}
LEFT JOIN information_schema.PROCESSLIST rp ON rp.ID = r.trx_mysql_thread_id
LEFT JOIN information_schema.PROCESSLIST bp ON bp.ID = b.trx_mysql_thread_id
"""
MARIADB_WAITS = _MYSQL_WAITS.format(
    lock_table="l.lock_table", waits="information_schema.INNODB_LOCK_WAITS", requesting="requesting_trx_id",
    blocking="blocking_trx_id", locks="information_schema.INNODB_LOCKS", lock_id="lock_id",
    requested_lock="requested_lock_id")
MYSQL8_WAITS = _MYSQL_WAITS.format(
    lock_table="CONCAT('`', l.OBJECT_SCHEMA, '`.`', l.OBJECT_NAME, '`')", waits="performance_schema.data_lock_waits",
    requesting="REQUESTING_ENGINE_TRANSACTION_ID", blocking="BLOCKING_ENGINE_TRANSACTION_ID",
    locks="performance_schema.data_locks", lock_id="ENGINE_LOCK_ID", requested_lock="REQUESTING_ENGINE_LOCK_ID")


def driver_error(exc: BaseException) -> tuple[str | None, int | None, str]:
    """(SQLSTATE as psycopg gives it, error number as PyMySQL gives it, lower-case text) of a driver
    error, whether SQLAlchemy wrapped it or not."""
    orig = getattr(exc, "orig", None) or exc
    args = getattr(orig, "args", ())
    number = args[0] if args and isinstance(args[0], int) else None
    return getattr(orig, "sqlstate", None), number, str(orig).lower()


def is_permission(exc: BaseException) -> bool:
    """A missing privilege (PostgreSQL 42501; MySQL/MariaDB access-denied numbers) or a read-only server."""
    code, number, text = driver_error(exc)
    return (code == "42501" or number in (1044, 1142, 1227, 1143, 1045, 1370)
            or "permission denied" in text or "access denied" in text or "read-only" in text
            or "readonly" in text)


def mysql8(info: ServerInfo) -> bool:
    return info.dialect == "mysql" and version_tuple(info.version) >= (8,)


def wait_query(info: ServerInfo) -> str | None:
    if info.dialect == "postgresql":
        newer = version_tuple(info.version) >= (14,)
        return PG_WAITS.format(wait_start=PG_WAIT_START_14 if newer else PG_WAIT_START_OLD)
    if info.dialect == "mariadb" or (info.dialect == "mysql" and not mysql8(info)):
        return MARIADB_WAITS
    if info.dialect == "mysql":
        return MYSQL8_WAITS
    return None


def sample_waits(conn: Any, info: ServerInfo, table: TableRef) -> list[tuple[dict[str, Any], dict[str, Any],
                                                                             float, bool]]:
    """One snapshot: (waiter, blocker, wait_s, on_task_table) per blocked pair."""
    from sqlalchemy import text

    query = wait_query(info)
    if query is None:
        return []
    params: dict[str, Any] = {"n": QUERY_CHARS}
    if info.dialect == "postgresql":
        params["t"] = _pg_regclass(table)
    rows = conn.execute(text(query), params).all()
    out = []
    for r in rows:
        waiter = {"id": str(r[0]), "user": r[1], "host": r[2] or "local", "query": r[3]}
        blocker = {"id": str(r[5]), "user": r[6], "host": r[7] or "local", "query": r[8], "state": r[9],
                   "transaction_age_s": round(float(r[10] or 0), 3)}
        if info.dialect == "postgresql":
            on_table = bool(r[11]) or table.name in (r[3] or "")
        else:
            on_table = _mentions(r[11], table) or table.name in (r[3] or "")
        out.append((waiter, blocker, max(0.0, float(r[4] or 0)), on_table))
    return out


def _mentions(lock_table: str | None, table: TableRef) -> bool:
    return bool(lock_table) and f"`{table.name}`" in str(lock_table)


def watch_waits(conn: Any, info: ServerInfo, table: TableRef, duration_s: float, interval_s: float,
                stop: threading.Event | None = None, on_sample: Any = None) -> list[Episode]:
    """Sample every ``interval_s`` for ``duration_s`` and merge the snapshots into episodes."""
    episodes: dict[tuple[str, str], Episode] = {}  # the current episode of each (waiter, blocker)
    ended: list[Episode] = []
    started = time.monotonic()
    deadline = started + duration_s
    while True:
        now = time.monotonic() - started
        for waiter, blocker, wait_s, on_table in sample_waits(conn, info, table):
            key = (waiter["id"], blocker["id"])
            ep = episodes.get(key)
            if ep is None or now - ep.last_seen_s > 2 * interval_s + wait_s:
                # a new episode, or the same pair blocked again after a gap: the old one ended
                if ep is not None:
                    ended.append(ep)
                episodes[key] = Episode(waiter["id"], blocker["id"], waiter, blocker, now, now, wait_s, on_table)
            else:
                ep.last_seen_s = now
                ep.samples += 1
                ep.wait_s = max(ep.wait_s, wait_s, now - ep.first_seen_s)
                ep.blocker = blocker
                ep.on_task_table = ep.on_task_table or on_table
        if on_sample is not None:
            on_sample()
        if time.monotonic() + interval_s > deadline or (stop is not None and stop.is_set()):
            break
        time.sleep(interval_s)
    return sorted([*ended, *episodes.values()], key=lambda e: -e.wait_s)


def visibility_notes(conn: Any, info: ServerInfo) -> list[str]:
    """What a non-privileged account cannot see, with the GRANT that shows it."""
    from sqlalchemy import text

    notes = []
    if info.dialect == "postgresql":
        row = conn.execute(text(
            "SELECT r.rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'), current_user"
            " FROM pg_roles r WHERE r.rolname = current_user")).first()
        if row and not row[0]:
            notes.append(f"user {row[1]} cannot see other sessions' queries and hosts in pg_stat_activity"
                         f" (blockers show as <insufficient privilege>): GRANT pg_monitor TO {row[1]};")
    return notes


def degrade_note(info: ServerInfo, exc: BaseException) -> str:
    """A one-line note for a lock view we may not read."""
    from celerydiag.errors import describe

    what = describe(exc)
    if info.is_mysql_family:
        view = "performance_schema.data_lock_waits" if mysql8(info) else "information_schema.INNODB_LOCK_WAITS"
        return (f"cannot read {view} ({what}): lock waits and open transactions not sampled;"
                " GRANT PROCESS ON *.* TO the user to see them")
    return f"cannot read pg_stat_activity/pg_locks ({what}): lock waits not sampled; GRANT pg_monitor TO the user"


def scan_cost(conn: Any, table: TableRef, dialect: str, timeout_s: float) -> tuple[float, bool]:
    """How long the scan behind ``celery.backend_cleanup``'s ``DELETE … WHERE date_done < :t`` takes
    without an index: the same predicate, read-only (a COUNT), bounded by ``timeout_s``.
    Returns (milliseconds, whether our timeout cut it short)."""
    from sqlalchemy import text

    quoted = conn.engine.dialect.identifier_preparer
    name = f"{quoted.quote(table.schema)}.{quoted.quote(table.name)}" if table.schema else quoted.quote(table.name)
    limit_ms = max(100, int(timeout_s * 1000))
    sql = f"SELECT count(*) FROM {name} WHERE date_done < :t"
    # backend_cleanup's cutoff: now - result_expires (one day by default), naive UTC like Celery's column
    params = {"t": _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None) - _dt.timedelta(days=1)}
    previous = None
    if dialect == "postgresql":
        previous = conn.execute(text("SHOW statement_timeout")).scalar()
        conn.execute(text(f"SET statement_timeout = {limit_ms}"))
    elif dialect == "mariadb":
        sql = f"SET STATEMENT max_statement_time={limit_ms / 1000:.3f} FOR {sql}"
    elif dialect == "mysql":
        sql = sql.replace("SELECT", f"SELECT /*+ MAX_EXECUTION_TIME({limit_ms}) */", 1)
    started = time.perf_counter()
    try:
        conn.execute(text(sql), params).scalar()
        return (time.perf_counter() - started) * 1000, False
    except Exception:
        elapsed = (time.perf_counter() - started) * 1000
        if elapsed >= limit_ms * 0.9:
            return elapsed, True
        raise
    finally:
        if previous is not None:  # back to the session's bound (the probe sets one)
            conn.execute(text("SELECT set_config('statement_timeout', :v, false)"), {"v": previous})

