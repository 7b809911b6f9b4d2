"""The passive signals: read, never written. Backlog, blocked state, RTT, the backend's counters.

Each reader holds one connection of its own across rounds (so ``TCP_INFO`` has a smoothed RTT to
report, and a round costs a few requests, not a handshake), drops it on any failure and opens it
again next round: that is how watch recovers when a fault clears. Every call is bounded by
``--timeout`` (driver timeouts, and the loop's SIGALRM cut as the backstop).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

from celerydiag.errors import quietly
from celerydiag.probe import log
from celerydiag.target import AMQP_SCHEMES, REDIS_SCHEMES, Target
from celerydiag.watch.sample import Sample

TCP_INFO_RTT_OFFSET = 68  # struct tcp_info: 8 bytes of u8 fields, then u32s; tcpi_rtt is the 16th
MAX_QUEUES = 50  # backlog label values: the app's queues, capped so the series stay bounded
REDIS_WRITE_COMMANDS = ("set", "setex", "psetex")  # how Celery's Redis backend stores a state


def tcp_rtt_ms(sock: Any) -> float | None:
    """The kernel's smoothed RTT (``tcpi_rtt``, µs) of a connected TCP socket, in ms; None where
    there is none to read (a Unix socket, not Linux, not connected)."""
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, AttributeError, ValueError):
        return None
    if len(raw) < TCP_INFO_RTT_OFFSET + 4:
        return None
    return float(struct.unpack_from("I", raw, TCP_INFO_RTT_OFFSET)[0]) / 1000.0


def fd_rtt_ms(fd: int | None) -> float | None:
    """:func:`tcp_rtt_ms` of a driver connection known only by its file descriptor."""
    if fd is None or fd < 0:
        return None
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        return tcp_rtt_ms(sock)
    finally:
        sock.close()


def _timed(call: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = call()
    return out, (time.perf_counter() - t0) * 1000.0


def _note_rtt(sample: Sample, peer: str, ping_ms: float | None, kernel_ms: float | None) -> None:
    values = {k: round(v, 3) for k, v in (("ping", ping_ms), ("tcp_info", kernel_ms)) if v is not None}
    if values:
        sample.rtt_ms[peer] = values


def _redis_socket(client: Any) -> Any:
    """The socket of the connection the last command used (redis-py keeps it in the pool)."""
    pool = getattr(client, "connection_pool", None)
    for conn in list(getattr(pool, "_available_connections", ()) or ()):
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            return sock
    return None


def read_side(sample: Sample, side: str, read: Any, close: Any) -> bool:
    """One side's reads: a failure marks the side down, says why, and drops the connection (the
    next interval opens a new one: that is the recovery). Returns whether the side answered."""
    try:
        read(sample)
    except Exception as exc:
        close()
        sample.up[side] = False
        sample.fail(side, exc)
        return False
    sample.up[side] = True
    return True


class BrokerReader:
    """Backlog of the app's queues, blocked state, RTT; RabbitMQ's management API when given."""

    def __init__(self, target: Target, timeout_s: float, queues: list[str], canary_queue: str,
                 rabbitmq_api: str | None = None) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.queues = queues[:MAX_QUEUES]
        self.canary_queue = canary_queue
        self.api = rabbitmq_api
        self._conn: Any = None
        self._channel: Any = None
        self._redis: Any = None

    @property
    def applies(self) -> bool:
        scheme = self.target.broker_scheme
        return scheme in AMQP_SCHEMES or scheme in REDIS_SCHEMES

    def read(self, sample: Sample) -> None:
        scheme = self.target.broker_scheme
        read = self._read_amqp if scheme in AMQP_SCHEMES else self._read_redis if scheme in REDIS_SCHEMES else None
        if read is not None and read_side(sample, "broker", read, self.close) and self.api:
            self._read_api(sample)

    def _read_amqp(self, sample: Sample) -> None:
        from celerydiag.broker import amqp

        # One unrouted confirmed publish on a connection of its own: the definitive "blocked?"
        reason = amqp.blocks_publishers(self.target, self.timeout_s, f"{self.canary_queue}.blocked")
        sample.broker_blocked = reason is not None
        sample.blocked_reason = reason or ""
        if self._conn is None:
            self._conn = amqp.connection(self.target, self.timeout_s, confirm=False)
            amqp.connect(self._conn)
            self._channel = self._conn.channel()
        # basic.qos is a request with a reply and no effect on a channel that consumes nothing
        _, ping = _timed(lambda: self._channel.basic_qos(0, 0, False))
        raw = self._conn.connection
        _note_rtt(sample, "broker", ping, tcp_rtt_ms(getattr(raw, "sock", None)))
        try:
            states = amqp.passive_states(self._conn, self.queues)
        except Exception as exc:
            sample.fail("backlog", exc)
            raise
        sample.backlog = {s.name: s.messages for s in states if s.declared}

    def _read_redis(self, sample: Sample) -> None:
        from celerydiag.broker import redis as redis_m

        if self._redis is None:
            self._redis = redis_m.client(self.target, self.timeout_s, name="celerydiag-watch")
        _, ping = _timed(self._redis.ping)
        _note_rtt(sample, "broker", ping, tcp_rtt_ms(_redis_socket(self._redis)))
        options = dict(self.target.conf.broker_transport_options or {})
        sample.backlog = redis_m.backlog(self._redis, self.queues, options)
        sample.broker_blocked = False

    def _read_api(self, sample: Sample) -> None:
        from celerydiag.broker import api
        from celerydiag.broker.probe import _vhost

        try:
            facts = api.read(self.api or "", _vhost(self.target.broker_url), (), self.timeout_s)
        except api.ApiError as exc:
            sample.fail("rabbitmq_api", str(exc), "unreachable")
            return
        except Exception as exc:  # an answer of a shape we did not expect: say so, keep watching
            log.debug("reading the management API failed", exc_info=True)
            sample.fail("rabbitmq_api", exc, "failed")
            return
        if facts.alarms or facts.blocked_connections:
            sample.broker_blocked = True
            words = "; ".join(facts.alarms) or f"{facts.blocked_connections} blocked connections"
            sample.blocked_reason = sample.blocked_reason or words

    def close(self) -> None:
        from celerydiag.broker import amqp

        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            amqp.drop(conn, hard=True)
        client, self._redis = self._redis, None
        if client is not None:
            quietly(client.close)


class BackendReader:
    """RTT and write rate of the result backend, from the server's own counters, read-only."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._redis: Any = None
        self._engine: Any = None
        self._conn: Any = None
        self._last: tuple[float, float] | None = None  # (monotonic, counter)

    @property
    def applies(self) -> bool:
        scheme = self.target.backend_scheme
        return scheme in REDIS_SCHEMES or scheme == "db"

    def read(self, sample: Sample) -> None:
        scheme = self.target.backend_scheme
        read = self._read_redis if scheme in REDIS_SCHEMES else self._read_db if scheme == "db" else None
        if read is not None:
            read_side(sample, "backend", read, self.close)

    def _rate(self, sample: Sample, count: float | None, source: str) -> None:
        if count is None:
            return
        now = time.monotonic()
        last, self._last = self._last, (now, count)
        sample.backend_counter = source
        if last is not None and count >= last[1] and now > last[0]:
            sample.backend_writes_per_s = round((count - last[1]) / (now - last[0]), 3)

    def _read_redis(self, sample: Sample) -> None:
        from celerydiag.access.backend import redis_backend_client

        if self._redis is None:
            self._redis = redis_backend_client(self.target, self.timeout_s)
        _, ping = _timed(self._redis.ping)
        _note_rtt(sample, "backend", ping, tcp_rtt_ms(_redis_socket(self._redis)))
        try:
            stats = self._redis.info("commandstats")
        except Exception as exc:  # INFO renamed or denied by ACL: the rest still counts
            sample.fail("backend_counters", exc)
            return
        calls = sum(float((stats.get(f"cmdstat_{c}") or {}).get("calls", 0)) for c in REDIS_WRITE_COMMANDS)
        self._rate(sample, calls, "redis commandstats " + "+".join(REDIS_WRITE_COMMANDS))

    def _read_db(self, sample: Sample) -> None:
        from sqlalchemy import text

        from celerydiag.access.backend import TableRef, readonly_engine

        if self._conn is None:
            self._engine = readonly_engine(self.target, self.timeout_s)
            self._conn = self._engine.connect()
        conn = self._conn
        _, ping = _timed(lambda: conn.execute(text("SELECT 1")).scalar())
        _note_rtt(sample, "backend", ping, fd_rtt_ms(_dbapi_fd(conn)))
        table = TableRef.from_conf(self.target.conf)
        name = conn.dialect.name
        try:
            if name == "postgresql":
                # the task table's inserts + updates: Celery's state writes (n_tup_* are cumulative)
                query = ("SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables "
                         "WHERE relname = :name" + (" AND schemaname = :schema" if table.schema else ""))
                count = conn.execute(text(query), {"name": table.name, "schema": table.schema}).scalar()
                self._rate(sample, float(count or 0), "pg_stat_user_tables n_tup_ins+n_tup_upd")
            elif name in ("mysql", "mariadb"):
                self._read_mysql(sample, conn, table)
        except Exception as exc:
            sample.fail("backend_counters", exc)
        finally:
            quietly(conn.rollback)  # a new transaction next round: PostgreSQL caches stats per transaction

    def _read_mysql(self, sample: Sample, conn: Any, table: Any) -> None:
        from sqlalchemy import text

        row = None
        try:
            row = conn.execute(text(
                "SELECT COUNT_INSERT + COUNT_UPDATE FROM performance_schema.table_io_waits_summary_by_table "
                "WHERE OBJECT_SCHEMA = coalesce(:schema, DATABASE()) AND OBJECT_NAME = :name"),
                {"name": table.name, "schema": table.schema}).first()
        except Exception:
            quietly(conn.rollback)
        if row is not None and row[0] is not None:
            self._rate(sample, float(row[0]), "performance_schema table_io_waits COUNT_INSERT+COUNT_UPDATE")
            return
        rows = conn.execute(text("SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_insert', 'Com_update')")).all()
        self._rate(sample, float(sum(int(r[1]) for r in rows)), "global status Com_insert+Com_update")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            quietly(conn.close)
        engine, self._engine = self._engine, None
        if engine is not None:
            quietly(engine.dispose)
        client, self._redis = self._redis, None
        if client is not None:
            quietly(client.close)
        self._last = None


def _dbapi_fd(conn: Any) -> int | None:
    """The file descriptor of a SQLAlchemy connection's driver connection (psycopg, PyMySQL)."""
    try:
        raw = conn.connection.dbapi_connection
    except Exception:
        return None
    for get in (lambda: raw.fileno(), lambda: raw._sock.fileno()):
        try:
            fd = get()
            if isinstance(fd, int):
                return fd
        except Exception:
            continue
    return None
