"""The contention experiment: K writers doing exactly what Celery's database backend does.

Why Celery's own ``DatabaseBackend.store_result`` and not hand-written SQL: the statements change
between versions (5.7 reads the row, re-reads it ``FOR UPDATE``, then updates; 5.4 did a plain
SELECT + UPDATE), and we measure what the installed Celery does, not a guess of it.

Why a scratch copy of Celery's table and not ``database_table_names``: see ``scratch_db``.

What it creates: one table ``celerydiag_<id>_bk_taskmeta``; its DROP is registered on the probe's
cleanup stack before the CREATE, and the writers are stopped before the DROP runs, Ctrl-C included.

Bounded in time (``--max-seconds``, issue 12): every phase ends by its own end time and never past
the run's deadline. A writer starts a write only when its expected duration (its own mean so far,
a first guess from the round trip before that) still fits; every statement has a server-side
(PostgreSQL ``statement_timeout``) or socket (PyMySQL ``read_timeout``) bound; writers connect in
parallel, not one after the other (through a 40 ms path each connect costs about a second); and a
writer still inside a statement when its phase is over has its session ended from our control
connection (``pg_terminate_backend`` / ``KILL CONNECTION``, our own sessions only), so the DROP
never waits for its locks. The
DROP runs on that already-open connection with a lock timeout inside the cleanup grace.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celerydiag.backend import scratch as scratch_db
from celerydiag.compat import on_new_engine
from celerydiag.errors import quietly
from celerydiag.measure import Budget, Summary, ms, summarize

MAX_WRITERS = 16
CANCEL_WAIT_S = 0.45  # after the cancels, how long the writers get in all to notice them and return
CANCEL_ROUNDS = 2
APPLICATION_NAME = "celerydiag-backend-probe"  # how a DBA recognises our sessions (PostgreSQL)
PROGRESS_META = {"current": 0, "total": 100, "stage": "celerydiag contention experiment"}


def scratch_table_name(scratch: str) -> str:
    return f"{scratch.replace('-', '_')}_bk_taskmeta"


def scratch_backend(app: Any, url: str, model: Any, engine_options: dict[str, Any], forked: bool) -> Any:
    """Celery's backend on our table, counting every lock timeout / deadlock instead of retrying
    it away."""
    backend = scratch_db.scratch_backend(app, url, model, engine_options, forked)
    backend.always_retry = False
    return backend


def classify(exc: BaseException) -> str:
    """lock_timeout | deadlock | timeout (ours) | error, from the driver's code."""
    from celerydiag.backend.db import driver_error

    code, number, text = driver_error(exc)
    if code == "55P03" or number == 1205 or "lock wait timeout" in text or "lock timeout" in text:
        return "lock_timeout"
    if code in ("40P01", "40001") or number == 1213 or "deadlock" in text:
        return "deadlock"
    if code == "57014" or number in (2013, 2006) or "timed out" in text:
        return "timeout"
    return "error"


@dataclass
class Phase:
    """One run of K writers: what each write cost and how many failed, by kind."""

    name: str
    writers: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=lambda: {"lock_timeout": 0, "deadlock": 0,
                                                             "timeout": 0, "error": 0})
    elapsed_s: float = 0.0
    first_error: str = ""
    planned_s: float = 0.0  # the time the phase was given (cut to the deadline)
    cut_by_time: int = 0  # writers that stopped early because the next write no longer fit
    cancelled: int = 0  # writes we cancelled at the phase's end (not counted as failures)

    @property
    def summary(self) -> Summary:
        return summarize(self.latencies_ms)

    @property
    def writes_per_s(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_evidence(self) -> dict[str, Any]:
        s = self.summary
        return {"writers_count": self.writers, "writes_count": len(self.latencies_ms),
                "write_ms": s.short() if s.samples else {}, "writes_per_s": round(self.writes_per_s, 1),
                "lock_timeouts_count": self.errors["lock_timeout"], "deadlocks_count": self.errors["deadlock"],
                "timeouts_count": self.errors["timeout"], "other_errors_count": self.errors["error"],
                "planned_s": round(self.planned_s, 3), "elapsed_s": round(self.elapsed_s, 3),
                "cancelled_writes_count": self.cancelled}


class Experiment:
    """Owns the scratch table and the writer threads; every method respects ``stop`` and the budget."""

    def __init__(self, app: Any, sqlalchemy_url: str, model: Any, budget: Budget,
                 stop: threading.Event, control: Any = None, write_guess_s: float = 0.0,
                 on_write: Any = None) -> None:
        self.app = app
        self.url = sqlalchemy_url
        self.model = model
        self.budget = budget  # no phase writes past budget.deadline
        self.stop = stop
        self.control = control  # our open AUTOCOMMIT connection: the CREATE, the DROP, the cancels
        self.write_guess_s = write_guess_s  # what one write should cost before any was timed
        self.on_write = on_write or (lambda: None)
        self.threads: list[threading.Thread] = []
        self.created = False
        self.server_ids: set[int] = set()  # this phase's writer connections' backend pids / thread ids
        self.phase_over = threading.Event()  # set when the current phase is over: its writers stop

    # -- the table ---------------------------------------------------------------------------------
    def create(self, engine: Any) -> None:
        self.created = True  # before the CREATE: a CREATE cut short by Ctrl-C may still have happened
        try:
            self.model.__table__.create(self.control if self.control is not None else engine)
        except Exception:
            self.created = False  # refused (read-only user): nothing to drop
            raise

    def drop(self, engine: Any) -> None:
        """DROP TABLE IF EXISTS, bounded: a lock we cannot get within the grace is reported, not waited."""

        from celerydiag.errors import DiagError, describe

        if not self.created:
            return
        try:
            self._drop(engine)
        except Exception as exc:
            name = self.model.__table__.fullname
            raise DiagError(f"could not drop the scratch table {name}: {describe(exc)}",
                            f"drop it by hand: DROP TABLE {name};") from None

    def _drop(self, engine: Any) -> None:

        table = self.model.__table__
        quoted = engine.dialect.identifier_preparer.format_table(table)
        lock_s = max(0.2, self.budget.grace_s / 3)  # the DROP's lock wait; the writers' sessions are gone
        if self.control is not None:
            try:  # the connection we already have: no connect inside the grace
                self._drop_on(self.control, quoted, lock_s)
                return
            except Exception:  # it broke meanwhile: one new, bounded connection
                quietly(self.control.close)
        from celerydiag.access.backend import engine as make_engine
        from celerydiag.access.backend import statement_timeout_args

        fresh = make_engine(self.url, lock_s, statement_timeout_args(self.url, 2 * lock_s),
                            isolation_level="AUTOCOMMIT")
        try:
            with fresh.connect() as conn:
                self._drop_on(conn, quoted, lock_s)
        finally:
            fresh.dispose()

    @staticmethod
    def _drop_on(conn: Any, quoted: str, lock_s: float) -> None:
        from sqlalchemy import text

        name = conn.engine.dialect.name
        if name == "postgresql":
            conn.execute(text(f"SET lock_timeout = {int(lock_s * 1000)}"))
            conn.execute(text(f"SET statement_timeout = {int(2 * lock_s * 1000)}"))
        elif name == "mysql":
            conn.execute(text(f"SET SESSION lock_wait_timeout = {max(1, round(lock_s))}"))
        conn.execute(text(f"DROP TABLE IF EXISTS {quoted}"))
        conn.commit()

    def stop_writers(self) -> None:
        """Stop the writers, ending the session of one still inside a statement, within a share of
        the grace (the DROP that follows gets the rest)."""
        self.stop.set()
        now = time.monotonic()
        share = self.budget.grace_s / 4
        from celerydiag import interrupt

        stop_by = getattr(interrupt, "stop_by", None)  # after Ctrl-C/SIGTERM the bound is shorter
        if callable(stop_by):
            share = min(share, max(0.0, (float(stop_by()) - now) / 4))
        self._finish(now + share)

    def stopping(self) -> bool:
        return self.stop.is_set() or self.phase_over.is_set()

    def _finish(self, until: float) -> None:
        """Join the writers until ``until``; cancel what they still run, then wait a little more."""
        for thread in self.threads:
            thread.join(max(0.0, until - time.monotonic()))
        self.phase_over.set()  # before the cancel: what a cancel makes fail is not a failed write
        # Two rounds, for a writer that connected again meanwhile. (Cancelling the statement alone
        # is not enough: Celery's _query_task re-runs a failed SELECT once when the error text
        # names the children/stamps columns, which its own SQL always does, so a cancelled
        # SELECT ... FOR UPDATE waits for the same lock again on MySQL/MariaDB.)
        for _ in range(CANCEL_ROUNDS):
            if not any(t.is_alive() for t in self.threads):
                return
            self.cancel_writers()
            waited = time.monotonic() + CANCEL_WAIT_S / CANCEL_ROUNDS
            for thread in self.threads:
                thread.join(max(0.0, waited - time.monotonic()))

    def cancel_writers(self) -> None:
        """End the writer connections of this phase on the server (ours only: ids recorded at connect,
        and on PostgreSQL only sessions that carry our application_name, so a reused pid is never
        a stranger's). Ending the session, not just its statement, frees its row locks at once,
        however long the client thread takes to be scheduled on a loaded machine, so the DROP
        never waits for a writer; the phase's connections are thrown away anyway."""
        from sqlalchemy import text

        if self.control is None or not self.server_ids:
            return
        name = self.control.engine.dialect.name
        ids = sorted(self.server_ids)
        if name == "postgresql":  # one round trip for all of them
            quietly(self.control.execute, text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid = ANY(CAST(:ids AS int[])) AND application_name = :ours"),
                {"ids": ids, "ours": APPLICATION_NAME})
        elif name == "mysql":  # thread ids are not reused
            for server_id in ids:
                quietly(self.control.execute, text(f"KILL CONNECTION {int(server_id)}"))

    def _record_ids(self, engine: Any) -> None:
        """Remember each writer connection's server id (known from the handshake: no round trip)."""
        from sqlalchemy import event

        def on_connect(dbapi_conn: Any, _record: Any) -> None:
            info = getattr(dbapi_conn, "info", None)
            server_id = getattr(info, "backend_pid", None)  # psycopg 3
            if server_id is None and hasattr(dbapi_conn, "thread_id"):  # PyMySQL
                server_id = dbapi_conn.thread_id()
            if isinstance(server_id, int):
                self.server_ids.add(server_id)

        event.listen(engine, "connect", on_connect)

    def backend(self, engine_options: dict[str, Any], forked: bool) -> Any:
        """Celery's backend on our table; its engines report their connections' ids to us."""
        user_callback = self.app.conf.get("database_engine_callback")  # a setting only from Celery 5.7
        if isinstance(user_callback, str):
            from kombu.utils.imports import symbol_by_name

            user_callback = symbol_by_name(user_callback)

        def callback(engine: Any) -> None:
            self._record_ids(engine)
            if callable(user_callback):
                user_callback(engine)

        backend = scratch_backend(self.app, self.url, self.model, engine_options, forked)
        on_new_engine(backend.session_manager, callback)  # compat: 5.7's engine_callback, or the same by hand
        return backend

    # -- the writers -------------------------------------------------------------------------------
    def run_phase(self, name: str, task_ids: list[str], engine_options: dict[str, Any], writes: int,
                  seconds: float) -> Phase:
        """``len(task_ids)`` writers, writer i writing ``task_ids[i]`` in a closed loop (as a busy
        prefork child does), until ``writes`` in total or ``seconds`` (never past the deadline),
        whichever first. Each writer connects and makes its row exist (untimed) in its own thread,
        so the writers connect in parallel; the timed loop starts together after that."""
        phase = Phase(name, len(task_ids))
        self.phase_over = threading.Event()
        self.server_ids = set()
        # the phase's tail (a write that started in time, the cancel of one that did not end) stays
        # inside the budget too
        end = min(self.budget.deadline - self.tail_s(len(task_ids)), time.monotonic() + seconds)
        phase.planned_s = max(0.0, end - time.monotonic())
        backends = [self.backend(engine_options, forked=True) for _ in task_ids]
        lock = threading.Lock()
        per_writer = max(1, writes // len(task_ids))
        gate = threading.Barrier(len(task_ids))
        started = time.perf_counter()
        # Each writer's untimed first call connects (all at once) and makes its row exist. Writers on
        # one row: only the first writes it, the others read it (all inserting it at once would fail
        # on its unique key); the barrier then holds them until that row exists.
        seen: set[str] = set()
        self.threads = []
        for i, (backend, task_id) in enumerate(zip(backends, task_ids)):
            makes_row = task_id not in seen
            seen.add(task_id)
            self.threads.append(threading.Thread(
                target=self._loop, daemon=True, name=f"celerydiag-writer-{i}",
                args=(backend, task_id, per_writer, end, phase, lock, gate, makes_row)))
        try:
            for thread in self.threads:
                thread.start()
            # short joins: Ctrl-C reaches the main thread at once; the phase's end bounds them all
            while any(t.is_alive() for t in self.threads) and time.monotonic() < end:
                time.sleep(0.02)
            self._finish(end + self._overrun_allowance())
            phase.elapsed_s = time.perf_counter() - started
        except BaseException:  # Ctrl-C or a failure: no writer may outlive this phase
            self.stop.set()
            self.phase_over.set()
            raise
        finally:
            for backend in backends:
                for engine in list(backend.session_manager._engines.values()):
                    quietly(engine.dispose)
        return phase

    def tail_s(self, writers: int) -> float:
        """The most a phase may run after its end: the allowance, the cancels, the wait after them."""
        cancels = CANCEL_ROUNDS * writers * max(self.write_guess_s / 6, 0.001)  # a round trip each
        return self._overrun_allowance() + cancels + CANCEL_WAIT_S

    def _overrun_allowance(self) -> float:
        """How long a write that started in time may still run after its phase's end."""
        return min(self.budget.grace_s / 4, max(0.05, 2 * self.write_guess_s))

    def _loop(self, backend: Any, task_id: str, count: int, end: float, phase: Phase, lock: threading.Lock,
              gate: threading.Barrier, makes_row: bool) -> None:
        if makes_row:
            self._write(backend, task_id, phase, lock, timed=False)
        else:
            self._warm(backend, task_id, phase, lock)
        try:
            gate.wait(max(0.0, end - time.monotonic()))
        except threading.BrokenBarrierError:
            pass
        spent = 0.0
        done = 0
        for _ in range(count):
            expected = spent / done if done else self.write_guess_s
            if self.stopping() or time.monotonic() + expected > end:
                with lock:
                    phase.cut_by_time += 0 if self.stopping() else 1
                return
            took = self._write(backend, task_id, phase, lock, timed=True)
            spent += took
            done += 1

    def _warm(self, backend: Any, task_id: str, phase: Phase, lock: threading.Lock) -> None:
        """Connect the writer's pool with a read of its row (Celery's get_task_meta: no insert)."""
        try:
            backend.get_task_meta(task_id)
        except Exception as exc:
            self._failed(exc, phase, lock)

    def _failed(self, exc: Exception, phase: Phase, lock: threading.Lock) -> None:
        if self.stopping():  # cancelled by us at the phase's end (or Ctrl-C): not the database's failure
            with lock:
                phase.cancelled += 1
            return
        kind = classify(exc)
        with lock:
            phase.errors[kind] += 1
            if not phase.first_error:
                from celerydiag.errors import describe

                phase.first_error = describe(exc)

    def _write(self, backend: Any, task_id: str, phase: Phase, lock: threading.Lock, timed: bool) -> float:
        t0 = time.perf_counter()
        try:
            backend.store_result(task_id, PROGRESS_META, "PROGRESS")
        except Exception as exc:
            self._failed(exc, phase, lock)
            return time.perf_counter() - t0
        took = time.perf_counter() - t0
        if timed:
            with lock:
                phase.latencies_ms.append(ms(took))
            self.on_write()
        return took

    # -- connection cost -----------------------------------------------------------------------------
    def read_cost(self, task_id: str, engine_options: dict[str, Any], reads: int,
                  seconds: float, connect_guess_s: float = 0.0) -> tuple[Summary, Summary]:
        """Celery's ``get_task_meta`` as a non-forked process does it (NullPool: a new engine and
        connection per read) and as a forked one does (pooled), on our own task row. A pair of
        reads starts only while the pair (as long as the last one took) still fits."""
        end = min(self.budget.deadline, time.monotonic() + seconds)
        out: dict[str, list[float]] = {"pooled": [], "fresh": []}
        if time.monotonic() + connect_guess_s + self.write_guess_s > end:
            return summarize(out["fresh"]), summarize(out["pooled"])
        pooled = self.backend(engine_options, forked=True)
        fresh = self.backend(engine_options, forked=False)
        try:
            pooled.get_task_meta(task_id)  # the pool's first connect is not a per-read cost
            pair = connect_guess_s + 2 * self.write_guess_s
            for _ in range(reads):
                if self.stop.is_set() or time.monotonic() + pair > end:
                    break
                t_pair = time.perf_counter()
                for key, backend in (("pooled", pooled), ("fresh", fresh)):
                    t0 = time.perf_counter()
                    backend.get_task_meta(task_id)
                    out[key].append(ms(time.perf_counter() - t0))
                pair = time.perf_counter() - t_pair
                self.on_write()
        finally:
            for engine in list(pooled.session_manager._engines.values()):
                quietly(engine.dispose)
        return summarize(out["fresh"]), summarize(out["pooled"])
