"""Watch one task's state on the result backend, read-only, and time each state it goes through.

Why: the polling model needs to know how long a task's PROGRESS states really last; a guess
(``exp:2s``) can be off by orders of magnitude. The user's own task, read the way their clients
read it, answers that. Shared by ``poll-model --from-backend`` and (later) the polling probe.

Read-only by construction: key-value backends are read through Celery's own
``backend.get_task_meta`` (Redis: one GET, with ``global_keyprefix`` honoured by Celery); the
database backend through a read-only SELECT on a read-only session, because Celery's
``DatabaseBackend`` creates tables on its first session (reference A.2) and we never write to a
user's database. Nothing is created, so there is nothing to clean up but our own connections.

Timing: a read is sent every ``interval_s`` on a fixed schedule (slots that a slow read overran
are skipped, so a slow backend never gets a burst). Each answer is stamped with the moment its
read was *sent*; a state's duration is the time between the first read that saw it and the
first read that saw the next one. Both ends carry the same uncertainty of one interval plus
one read, so a duration is exact to about ``interval_s``; states shorter than one interval can
be missed entirely (that is the polling model's own point).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from celerydiag.errors import InputError, TargetUnreachable, quietly
from celerydiag.measure import Summary, ms, summarize
from celerydiag.target import REDIS_SCHEMES

READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})  # celery.states.READY_STATES
PENDING = "PENDING"
DEFAULT_INTERVAL_S = 0.02
MIN_INTERVAL_S = 0.005  # at most 200 reads/s on the user's backend
MAX_INTERVAL_S = 5.0
DEFAULT_WATCH_S = 60.0
MIN_WATCH_S = 0.1
MAX_WATCH_S = 3600.0
READ_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Observation:
    """One read: when it was sent (seconds since the watch began), the status, and an identity
    of (status, stored meta) so two PROGRESS states with different meta are told apart."""

    t_s: float
    status: str
    key: str


@dataclass(frozen=True)
class Span:
    """One distinct state as seen: first seen at ``start_s`` (None: it was already the state when
    the watch began, so its start is unknown), replaced at ``end_s`` (None: still current when
    the watch ended, or final)."""

    status: str
    start_s: float | None
    end_s: float | None
    reads: int

    @property
    def duration_s(self) -> float | None:
        if self.start_s is None or self.end_s is None:
            return None
        return self.end_s - self.start_s

    @property
    def transient(self) -> bool:
        """A state between PENDING and the final state: what a polling client can miss."""
        return self.status != PENDING and self.status not in READY

    def to_dict(self) -> dict[str, Any]:
        duration = self.duration_s
        return {"status": self.status,
                "start_s": None if self.start_s is None else round(self.start_s, 6),
                "end_s": None if self.end_s is None else round(self.end_s, 6),
                "duration_s": None if duration is None else round(duration, 6),
                "reads_count": self.reads}


class SpanBuilder:
    """Collapse timed observations, fed in time order, into the distinct states they show.

    A state that was already replaced and shows up again is a late answer (a read overtaken by a
    newer write), not a new state: Celery only moves forward (on Redis even a late PROGRESS
    cannot overwrite SUCCESS, reference A.1), so it counts as one more read of the current state.
    The first state's start is unknown: it was already there when the watch began. Incremental,
    so a long watch costs O(1) per read.
    """

    def __init__(self) -> None:
        self._open: list[Any] = []  # the current state: [status, key, start_s, reads]
        self._closed: list[Span] = []
        self._seen: set[str] = set()

    def add(self, obs: Observation) -> None:
        current = self._open
        if current and (obs.key == current[1] or obs.key in self._seen):
            current[3] += 1
            return
        if current:
            self._closed.append(Span(current[0], current[2], obs.t_s, current[3]))
        self._seen.add(obs.key)
        self._open = [obs.status, obs.key, obs.t_s if current else None, 1]

    @property
    def transitions(self) -> int:
        return len(self._closed)

    def spans(self) -> list[Span]:
        current = self._open
        return self._closed + ([Span(current[0], current[2], None, current[3])] if current else [])


def spans(observations: Iterable[Observation]) -> list[Span]:
    """The distinct states in ``observations`` (any order), see :class:`SpanBuilder`."""
    builder = SpanBuilder()
    for obs in sorted(observations, key=lambda o: o.t_s):
        builder.add(obs)
    return builder.spans()


@dataclass
class WatchResult:
    """What one watch saw. ``durations_s`` are the states that began and ended while watched."""

    task_id: str
    backend: str  # redacted URL
    interval_s: float
    limit_s: float
    elapsed_s: float = 0.0
    states: list[Span] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return bool(self.states) and self.states[-1].status in READY

    @property
    def transitions(self) -> int:
        return max(0, len(self.states) - 1)

    @property
    def durations_s(self) -> list[float]:
        return [s.duration_s for s in self.states if s.transient and s.duration_s is not None]

    @property
    def progress_states(self) -> int:
        """Transient states seen (a lower bound: the watch may have begun mid-task)."""
        return sum(1 for s in self.states if s.transient)

    @property
    def read(self) -> Summary:
        return summarize(self.read_ms)

    def note(self) -> str | None:
        """Why there is nothing to feed the model, or None when there is."""
        if self.durations_s:
            return None
        waited = f"in {self.elapsed_s:.3g}s of watching"
        if not self.states:
            return "no read completed"
        if self.transitions == 0 and self.states[0].status == PENDING:
            return (f"the task stayed PENDING {waited}: an unknown or mistyped id, a result that expired "
                    "(result_expires) or was forgotten, a task still queued, or a worker writing to another "
                    "backend")
        if self.transitions == 0 and self.finished:
            return (f"the task was already {self.states[0].status} when the watch began: nothing left to time; "
                    "start the watch before or while the task runs")
        path = " -> ".join(s.status for s in self.states)
        return (f"{self.transitions} state change(s) seen {waited} ({path}): no state both began and ended "
                "while watched (states shorter than one read interval are missed)")

    def to_dict(self) -> dict[str, Any]:
        read = self.read
        return {
            "task_id": self.task_id,
            "backend": self.backend,
            "interval_ms": round(ms(self.interval_s), 3),
            "watch_limit_s": self.limit_s,
            "elapsed_s": round(self.elapsed_s, 3),
            "reads_count": read.samples,
            "read_ms": read.to_dict() if read.samples else None,
            "finished": self.finished,
            "final_status": self.states[-1].status if self.states else None,
            "transitions_count": self.transitions,
            "progress_states_count": self.progress_states,
            "states": [s.to_dict() for s in self.states],
            "durations_s": [round(d, 6) for d in self.durations_s],
            "note": self.note(),
        }


class Reader(Protocol):
    def read(self) -> tuple[str, str]:
        """(status, identity of status + stored meta) of the task, one backend read."""
        ...


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class _MetaReader:
    """Key-value backends (Redis, memcached, …): Celery's own get_task_meta, what a client's
    ``AsyncResult.state`` does (reference B)."""

    def __init__(self, backend: Any, task_id: str) -> None:
        self.backend = backend
        self.task_id = task_id

    def read(self) -> tuple[str, str]:
        meta = self.backend.get_task_meta(self.task_id)
        status = str(meta.get("status"))
        return status, f"{status}:{_digest(repr(meta.get('result')).encode())}"


class _DatabaseReader:
    """The database backend: one SELECT per read on a read-only session, each read its own
    transaction so REPEATABLE READ (MySQL's default) cannot freeze the view (reference B)."""

    def __init__(self, conn: Any, table: Any, task_id: str) -> None:
        from sqlalchemy import select

        self.conn = conn
        self.query = select(table.c.status, table.c.result).where(table.c.task_id == task_id)

    def read(self) -> tuple[str, str]:
        row = self.conn.execute(self.query).first()
        self.conn.rollback()
        if row is None:  # Celery: a missing row reads as PENDING
            return PENDING, "PENDING:missing"
        status = str(row[0])
        return status, f"{status}:{_digest(bytes(row[1] or b''))}"


def open_reader(target: Any, task_id: str, cleanup: ExitStack, timeout_s: float = READ_TIMEOUT_S) -> Reader:
    """A read-only reader of ``task_id`` on the target's result backend; connections it opens are
    closed by ``cleanup``. Bad input (no backend, rpc://) raises InputError before any I/O."""
    scheme = target.backend_scheme
    if scheme in ("disabled", "", "memory"):
        raise InputError(f"--from-backend needs the result backend the task writes to; {scheme or 'none'}:// "
                         "stores nothing to read",
                         "pass --backend redis://host:6379/0 (or db+postgresql://…), or --app proj.celery:app")
    if scheme == "rpc":
        raise InputError("--from-backend cannot watch an rpc:// result: only the process that sent the task "
                         "can read it (others see PENDING)",
                         "watch it from a Redis or database result backend, or pass --durations")
    if scheme == "db":
        return _open_database(target, task_id, cleanup, timeout_s)
    if scheme in REDIS_SCHEMES:
        from celerydiag.access.app import redis_backend_app

        app = redis_backend_app(target, timeout_s)  # the target's result settings, our timeouts, one retry
        cleanup.callback(quietly, app.close)
        backend = app.backend
    else:
        backend = target.app.backend
    return _MetaReader(backend, task_id)


def _open_database(target: Any, task_id: str, cleanup: ExitStack, timeout_s: float) -> Reader:
    from celerydiag.access.backend import readonly_engine, task_table
    from celerydiag.errors import describe

    table = task_table(target.conf)
    engine = readonly_engine(target, timeout_s)
    cleanup.callback(engine.dispose)
    try:
        conn = engine.connect()
    except Exception as exc:
        raise TargetUnreachable(target.redact(f"cannot connect to the result backend: {describe(exc)}")) from None
    cleanup.callback(quietly, conn.close)
    reader = _DatabaseReader(conn, table, task_id)
    try:
        reader.read()
    except Exception as exc:
        if "exist" in str(exc).lower():  # no such table / relation does not exist / doesn't exist
            raise InputError(f"no task table {table.fullname} in the result backend's database",
                             "nothing stored there yet, or your app sets database_table_names: "
                             "pass --app so they are read") from None
        raise TargetUnreachable(target.redact(f"cannot read {table.fullname}: {describe(exc)}")) from None
    return reader


def watch(reader: Reader, task_id: str, backend: str, *, interval_s: float = DEFAULT_INTERVAL_S,
          limit_s: float = DEFAULT_WATCH_S, on_read: Callable[[float, str, int], None] | None = None,
          describe_error: Callable[[BaseException], str] = str,
          clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep,
          ) -> WatchResult:
    """Read the task every ``interval_s`` until it is READY or ``limit_s`` has passed.

    Bounded: at most ``limit_s / interval_s + 1`` reads, one at a time. A failed read raises
    TargetUnreachable with ``describe_error``'s one line (the caller redacts it). ``on_read``
    gets (seconds watched, status of this read, state changes so far) after every read.
    """
    from celerydiag import interrupt

    result = WatchResult(task_id, backend, interval_s, limit_s)
    builder = SpanBuilder()
    start = clock()
    slot = 0
    while True:
        interrupt.check()
        sent = clock()
        try:
            status, key = reader.read()
        except Exception as exc:
            raise TargetUnreachable(f"cannot read task {task_id} from the result backend: "
                                    f"{describe_error(exc)}") from None
        answered = clock()
        result.read_ms.append(ms(answered - sent))
        builder.add(Observation(sent - start, status, key))
        result.elapsed_s = answered - start
        if on_read is not None:
            on_read(result.elapsed_s, status, builder.transitions)
        if status in READY or answered - start >= limit_s:
            result.states = builder.spans()
            return result
        slot = max(slot + 1, int((answered - start) / interval_s) + 1)  # skip slots a slow read overran
        wait = min(start + slot * interval_s, start + limit_s) - clock()
        if wait > 0:
            sleep(wait)
