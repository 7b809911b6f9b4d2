"""The contention experiment: K writers doing exactly what Celery's database backend does.

Why Celery's own ``DatabaseBackend.store_result`` and not hand-written SQL: the statements change
between versions (5.7 reads the row, re-reads it ``FOR UPDATE``, then updates; 5.4 did a plain
SELECT + UPDATE), and we measure what the installed Celery does, not a guess of it.

Why a scratch copy of Celery's table and not ``database_table_names``: see ``scratch_db``.

What it creates: one table ``celerydiag_<id>_bk_taskmeta``; its DROP is registered on the probe's
cleanup stack before the CREATE, and the writers are stopped before the DROP runs, Ctrl-C included.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celerydiag.backend import scratch as scratch_db
from celerydiag.errors import quietly
from celerydiag.measure import Summary, ms, summarize

MAX_WRITERS = 16
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
                "timeouts_count": self.errors["timeout"], "other_errors_count": self.errors["error"]}


class Experiment:
    """Owns the scratch table and the writer threads; every method respects ``stop``."""

    def __init__(self, app: Any, sqlalchemy_url: str, model: Any, deadline: float,
                 stop: threading.Event, on_write: Any = None) -> None:
        self.app = app
        self.url = sqlalchemy_url
        self.model = model
        self.deadline = deadline  # time.monotonic() after which no phase starts new writes
        self.stop = stop
        self.on_write = on_write or (lambda: None)
        self.threads: list[threading.Thread] = []
        self.created = False

    # -- the table ---------------------------------------------------------------------------------
    def create(self, engine: Any) -> None:
        self.created = True  # before the CREATE: a CREATE cut short by Ctrl-C may still have happened
        try:
            self.model.__table__.create(engine)
        except Exception:
            self.created = False  # refused (read-only user): nothing to drop
            raise

    def drop(self, engine: Any) -> None:
        """DROP TABLE IF EXISTS, bounded: a lock we cannot get in a few seconds is reported, not waited."""

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
        from sqlalchemy import text

        table = self.model.__table__
        quoted = engine.dialect.identifier_preparer.format_table(table)
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SET lock_timeout = '5s'"))
            elif engine.dialect.name == "mysql":
                conn.execute(text("SET SESSION lock_wait_timeout = 5"))
            conn.execute(text(f"DROP TABLE IF EXISTS {quoted}"))
            conn.commit()

    def stop_writers(self, join_s: float = 10.0) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(join_s)

    # -- the writers -------------------------------------------------------------------------------
    def run_phase(self, name: str, task_ids: list[str], engine_options: dict[str, Any], writes: int,
                  seconds: float) -> Phase:
        """``len(task_ids)`` writers, writer i writing ``task_ids[i]`` in a closed loop (as a busy
        prefork child does), until ``writes`` in total or ``seconds``, whichever first."""
        phase = Phase(name, len(task_ids))
        backends = [scratch_backend(self.app, self.url, self.model, engine_options, forked=True)
                    for _ in task_ids]
        lock = threading.Lock()
        try:
            for backend, task_id in zip(backends, task_ids):  # connect, and make the rows exist
                self._write(backend, task_id, phase, lock, timed=False)
            end = min(self.deadline, time.monotonic() + seconds)
            per_writer = max(1, writes // len(task_ids))
            started = time.perf_counter()
            gate = threading.Barrier(len(task_ids))
            self.threads = [threading.Thread(target=self._loop, daemon=True, name=f"celerydiag-writer-{i}",
                                             args=(b, t, per_writer, end, phase, lock, gate))
                            for i, (b, t) in enumerate(zip(backends, task_ids))]
            for thread in self.threads:
                thread.start()
            for thread in self.threads:
                while thread.is_alive():  # short joins: Ctrl-C reaches the main thread at once
                    thread.join(0.2)
            phase.elapsed_s = time.perf_counter() - started
        except BaseException:  # Ctrl-C or a failure: no writer may outlive this phase
            self.stop.set()
            raise
        finally:
            for thread in self.threads:
                thread.join(10.0)
            for backend in backends:
                for engine in backend.session_manager._engines.values():
                    quietly(engine.dispose)
        return phase

    def _loop(self, backend: Any, task_id: str, count: int, end: float, phase: Phase, lock: threading.Lock,
              gate: threading.Barrier) -> None:
        try:
            gate.wait(5.0)
        except threading.BrokenBarrierError:
            pass
        for _ in range(count):
            if self.stop.is_set() or time.monotonic() >= end:
                return
            self._write(backend, task_id, phase, lock, timed=True)

    def _write(self, backend: Any, task_id: str, phase: Phase, lock: threading.Lock, timed: bool) -> None:
        t0 = time.perf_counter()
        try:
            backend.store_result(task_id, PROGRESS_META, "PROGRESS")
        except Exception as exc:
            kind = classify(exc)
            with lock:
                phase.errors[kind] += 1
                if not phase.first_error:
                    from celerydiag.errors import describe

                    phase.first_error = describe(exc)
            return
        if timed:
            elapsed = ms(time.perf_counter() - t0)
            with lock:
                phase.latencies_ms.append(elapsed)
            self.on_write()

    # -- connection cost -----------------------------------------------------------------------------
    def read_cost(self, task_id: str, engine_options: dict[str, Any], reads: int,
                  seconds: float) -> tuple[Summary, Summary]:
        """Celery's ``get_task_meta`` as a non-forked process does it (NullPool: a new engine and
        connection per read) and as a forked one does (pooled), on our own task row."""
        pooled = scratch_backend(self.app, self.url, self.model, engine_options, forked=True)
        fresh = scratch_backend(self.app, self.url, self.model, engine_options, forked=False)
        pooled.get_task_meta(task_id)  # the pool's first connect is not a per-read cost
        end = min(self.deadline, time.monotonic() + seconds)
        out: dict[str, list[float]] = {"pooled": [], "fresh": []}
        try:
            for _ in range(reads):
                if self.stop.is_set() or time.monotonic() >= end:
                    break
                for key, backend in (("pooled", pooled), ("fresh", fresh)):
                    t0 = time.perf_counter()
                    backend.get_task_meta(task_id)
                    out[key].append(ms(time.perf_counter() - t0))
                self.on_write()
        finally:
            for engine in pooled.session_manager._engines.values():
                quietly(engine.dispose)
        return summarize(out["fresh"]), summarize(out["pooled"])

