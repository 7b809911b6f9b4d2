"""The backend probe: what the result backend adds to every update_state and every client read.

Database backends (SQLAlchemy: PostgreSQL, MySQL/MariaDB, SQLite): server settings that decide how
long a blocked write waits, the task table (rows, size, the ``date_done`` index, the oldest open
transaction on it), live lock waits sampled over ``--duration`` with the blocker's identity, a
contention experiment on a scratch table of our own (Celery's own ``store_result`` from K
threads, one row and distinct rows, then again with the suggested fix), and what a client pays
per read when Celery reconnects every time (NullPool outside forked workers; reference A.2).

Redis: Celery's own write (GET + MULTI/SETEX/PUBLISH/EXEC) and read on a key of our own,
subscribers on result channels, eviction, result key TTLs.

Fix texts live here; there is one engine-options fix per database, reused by every finding that
needs it, so a user never pastes two ``database_engine_options`` that overwrite each other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from celerydiag.backend.db import is_permission
from celerydiag.config.fixes import MYSQL_LOCK_WAIT_S, PG_LOCK_TIMEOUT_MS  # one value for every fix
from celerydiag.errors import DiagError, quietly
from celerydiag.findings import Cause, Finding, Fix, Severity, delay
from celerydiag.probe import Probe, ProbeContext
from celerydiag.target import REDIS_SCHEMES, Side, Target

DB_DOCS = "https://docs.celeryq.dev/en/stable/userguide/configuration.html#database-backend-settings"
FAQ_DEADLOCK = "https://docs.celeryq.dev/en/stable/faq.html#mysql-is-throwing-deadlock-errors-what-can-i-do"
REDIS_DOCS = "https://docs.celeryq.dev/en/stable/userguide/configuration.html#redis-backend-settings"
LONG_LOCK_WAIT_S = 10  # a server that lets a write wait longer than this gets the lock-timeout fix
WRITERS = 4
LOCK_SHARE = 0.25  # of the time left after the settings, the most the lock sampling may take
FINDINGS_MARGIN_S = 0.3  # kept back from the deadline to build the findings (no I/O)
SETTINGS_ROUND_TRIPS = 8  # server settings, visibility, the task table: about this many round trips
# With the default --duration, lock sampling stops after this long when no session waits for any
# lock and no open transaction touches the task table (DatabaseRun.idle_stop_s).
IDLE_LOCK_LOOK_S = 0.5


class BackendProbe(Probe):
    """Result backend: write/read latency, live lock waits (who blocks whom), contention, settings.

    Database: reads server settings and catalog views (read-only); samples lock waits for
    `--duration` seconds; creates ONE scratch table celerydiag_<id>_bk_taskmeta and runs Celery's
    own store_result from 4 threads (at most `--samples` writes per phase, `--max-seconds` in
    all), then drops it, also on Ctrl-C. Redis: at most 500 writes and reads on one key of its
    own (deleted after), plus read-only INFO/PUBSUB/SCAN (at most 20 SCAN calls).
    """

    name = "backend"
    cause = Cause.BACKEND
    needs = frozenset({Side.BACKEND})

    def applies(self, ctx: ProbeContext) -> str | None:
        scheme = ctx.target.backend_scheme
        if scheme in ("disabled", ""):
            return "no result backend configured (disabled://): there are no task states to store"
        if scheme == "rpc":
            return ("result backend is rpc://: states travel as broker messages to the caller's reply queue;"
                    " the broker probe measures that path")
        if scheme != "db" and scheme not in REDIS_SCHEMES:
            return f"no backend probe for {scheme}:// result backends (database and Redis only)"
        if scheme == "db":
            from celerydiag.config.fixes import engine_options_crash

            return engine_options_crash(ctx.target.conf)  # the user's setting, not our bug
        return None

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        if ctx.target.backend_scheme == "db":
            yield from DatabaseRun(ctx).run()
        else:
            yield from redis_findings(ctx)


# ---- fixes ---------------------------------------------------------------------------------------------

def current_engine_options(target: Target) -> dict[str, Any]:
    return dict(target.conf.get("database_engine_options") or {})


def fixed_engine_options(dialect: str, current: dict[str, Any], driver: str = "") -> dict[str, Any]:
    """The user's own engine options plus the two changes that bound lock waits (reference E):
    MySQL/MariaDB READ COMMITTED (Celery FAQ) and a 5 s innodb_lock_wait_timeout; PostgreSQL a
    2 s lock_timeout (its isolation is already READ COMMITTED: nothing to change there). The
    lock bound is spelled for ``driver`` (config.fixes.lock_timeout_args; '' means the drivers
    SQLAlchemy picks for us: libpq, PyMySQL) and left out for a driver with no keyword for it."""
    from celerydiag.config.fixes import lock_timeout_args

    options = dict(current)
    if dialect in ("mysql", "mariadb"):
        options["isolation_level"] = "READ COMMITTED"
        driver = driver or "pymysql"
    elif dialect == "postgresql":
        driver = driver or "psycopg"
    else:
        return options
    args = lock_timeout_args(driver, dict(options.get("connect_args") or {}))
    if args is not None:
        options["connect_args"] = args
    return options


def engine_fix(dialect: str, target: Target) -> Fix | None:
    """One database_engine_options for every probe: the config probe's recommendation (the user's
    options, Celery's defaults kept, what crashes removed, secrets never printed) with the lock-wait
    bounds added, and the retry settings that decide what a lock timeout then does to the task,
    so pasting both probes' fixes cannot leave two different dicts.

    Why the retries are printed: a lock timeout turns a wait into an error. The database backend
    retries it (Celery 5.7 defaults: always_retry on, 3 retries, celery/backends/database/
    __init__.py:74-77), and when every retry hits the lock too, update_state() raises
    BackendStoreError inside the task (celery/backends/base.py:855-858): the task fails instead of
    waiting. With a 2 s/5 s bound and 3 retries that happens for a lock held ~8 s/~20 s or longer."""
    from celerydiag.compat import celery_version
    from celerydiag.config.fixes import (
        assignments,
        db_dialect,
        db_driver,
        lock_timeout_args,
        recommended_engine_options,
        retry_settings,
    )

    family = {"mariadb": "mysql"}
    same = family.get(db_dialect(target), db_dialect(target)) == family.get(dialect, dialect)
    driver = db_driver(target) if same else ""  # '' = the driver SQLAlchemy picks for `dialect`
    current = current_engine_options(target)
    if fixed_engine_options(dialect, current, driver) == current:
        return None
    options = fixed_engine_options(dialect, recommended_engine_options(target.conf, target, celery_version()),
                                   driver)
    retries = retry_settings(target.conf)
    tries = retries["result_backend_max_retries"] + 1
    bounded = lock_timeout_args(driver or ("psycopg" if dialect == "postgresql" else "pymysql"), {}) is not None
    trade = (f"; the trade: a write blocked longer than the bound is retried {tries - 1} times and then"
             " update_state() raises BackendStoreError and the task fails instead of waiting (wrap"
             " update_state() in try/except BackendStoreError where progress may be lost but the task"
             " must go on)")
    if dialect == "postgresql":
        if not bounded:
            return None
        summary = (f"give Celery's connections a {PG_LOCK_TIMEOUT_MS} ms lock_timeout so a blocked update_state"
                   f" fails fast and is retried instead of waiting without limit{trade}; PostgreSQL is already"
                   " READ COMMITTED, leave isolation alone")
    elif bounded:
        summary = (f"READ COMMITTED (Celery FAQ) and a {MYSQL_LOCK_WAIT_S} s innodb_lock_wait_timeout on Celery's"
                   f" connections instead of waiting 50 s{trade}")
    else:
        summary = (f"READ COMMITTED (Celery FAQ); the {driver} driver has no init_command we can print, so bound"
                   f" lock waits on the server for Celery's user: SET GLOBAL innodb_lock_wait_timeout ="
                   f" {MYSQL_LOCK_WAIT_S}{trade}")
    return Fix(summary, assignments(database_engine_options=options, **retries), (DB_DOCS, FAQ_DEADLOCK))


def redis_progress_fix() -> Fix:
    """Why the wording: result_backend is app-wide, so this moves every result (and every
    client's reads) to Redis, not only progress; the config merge offers it as an alternative."""
    from celerydiag.config.fixes import PLACEHOLDER_REDIS, assignments

    return Fix("move the result backend to Redis (push-based, sub-millisecond writes): result_backend is"
               " app-wide, so every result and every state read moves with it, not only progress;"
               " results already in the database stay there",
               "# point this at your Redis\n" + assignments(result_backend=PLACEHOLDER_REDIS), (REDIS_DOCS,))


# ---- database ------------------------------------------------------------------------------------------

class DatabaseRun:
    """One run against a database backend; every object it creates is on ``ctx.cleanup``.

    Bounded by ``--max-seconds`` (issue 12), setup included: the budget starts when the probe does
    (the guard's deadline when it sets one: ProbeContext.budget()), every connection's timeouts come from
    what is left of it, and each later stage gets a share of what is left when it starts: the lock
    sampling at most LOCK_SHARE of it (never more than ``--duration``), then the experiment's
    phases and the connection-cost reads equal shares, each at least one connect and a few writes
    (a stage that cannot have that is skipped and its finding says so). The control connection
    opened first stays open for the lock sampling, the scratch table's CREATE and its DROP, so the
    cleanup never pays a connect (about a second through a 40 ms path).
    """

    STAGES = 4

    def __init__(self, ctx: ProbeContext) -> None:
        from celerydiag.access.backend import TableRef, database_url, dialect
        from celerydiag.measure import Budget

        self.ctx = ctx
        self.target = ctx.target
        self.url = database_url(ctx.target)
        self.dialect = dialect(self.url)
        self.table = TableRef.from_conf(ctx.target.conf)
        self.stop = threading.Event()
        self.notes: list[str] = []
        budget = Budget.of(ctx)
        # findings are built after the last measurement: a little time of our own for that
        budget.deadline -= min(FINDINGS_MARGIN_S, 0.1 * ctx.limits.max_seconds)
        self.budget = budget
        self.connect_s = 0.0  # one new connection, SQLAlchemy's first-connect queries included
        self.rtt_s = 0.0  # one round trip on the control connection
        self.skipped: dict[str, str] = {}  # stage -> why the budget left it out

    def doing(self, what: str) -> None:
        """Name the stage for a cut (the guard's ``ctx.doing``)."""
        self.ctx.doing(what)

    def engine(self) -> Any:
        from celerydiag.access.backend import engine

        # No statement_timeout in the startup packet: bound() SETs it, so pg_settings.reset_val
        # still reports the server's own.
        db = engine(self.url, self.budget.call_timeout(), self.bounded_args({}, statements=False),
                    isolation_level="AUTOCOMMIT")
        self.ctx.cleanup.callback(db.dispose)
        return db

    def bounded_args(self, args: dict[str, Any], statements: bool = True) -> dict[str, Any]:
        """Driver timeouts from what is left of the budget (and, on PostgreSQL, our name and, for the
        writers, a statement bound) merged into connect_args."""
        from celerydiag.access.backend import connect_timeout_args, statement_timeout_args

        timeout = self.budget.call_timeout()
        out = dict(connect_timeout_args(self.url, timeout))
        out.update(args)
        if self.dialect == "postgresql":
            from celerydiag.backend.contention import APPLICATION_NAME

            out["application_name"] = APPLICATION_NAME  # ours, always: cancel_writers ends only these
        if not statements:
            return out
        return statement_timeout_args(self.url, timeout, out)

    def connect(self, engine: Any) -> Any:
        """The control connection, timed (what every later connect is expected to cost); closed by
        the cleanup stack after the DROP that uses it."""
        self.doing("connecting to the result backend's database")
        started = time.perf_counter()
        conn = engine.connect()
        self.connect_s = time.perf_counter() - started
        self.ctx.cleanup.callback(quietly, conn.close)
        return conn

    def bound(self, conn: Any) -> None:
        """PostgreSQL: this session's statements end by the deadline (libpq has no read timeout, so
        the server's statement_timeout is the bound); one round trip, timed. MySQL/MariaDB: the
        connection's read_timeout already bounds every call; the round trip is timed all the same."""
        from sqlalchemy import text

        started = time.perf_counter()
        if self.dialect == "postgresql":
            conn.execute(text(f"SET statement_timeout = {int(self.budget.call_timeout() * 1000)}"))
        else:
            conn.execute(text("SELECT 1"))
        took = time.perf_counter() - started
        self.rtt_s = took if not self.rtt_s else min(self.rtt_s, took)

    @property
    def write_guess_s(self) -> float:
        """One of Celery's writes before any was timed: about six round trips (SELECT, SELECT FOR
        UPDATE, UPDATE, COMMIT, the pool's reset) plus local work."""
        return 6 * self.rtt_s + 0.002

    def run(self) -> Iterator[Finding]:
        from celerydiag.backend.db import server_info, table_info, visibility_notes

        ctx = self.ctx
        ctx.progress.start("backend", self.STAGES)
        engine = self.engine()
        conn = self.connect(engine)
        self.bound(conn)
        if not self.budget.fits(SETTINGS_ROUND_TRIPS * self.rtt_s):
            yield Finding("backend.not-measured", Cause.BACKEND, Severity.INFO,
                          f"nothing measured: connecting took {self.connect_s:.2g} s of --max-seconds"
                          f" {ctx.limits.max_seconds:g}",
                          detail=f"A new connection to this database costs {self.connect_s:.2g} s and a round trip"
                                 f" {self.rtt_s * 1000:.0f} ms; reading the settings alone needs about"
                                 f" {SETTINGS_ROUND_TRIPS} round trips more. Give the probe more --max-seconds.",
                          evidence={**self.time_evidence(), **trust_evidence(0)})
            return
        ctx.progress.step(1, "server settings and the task table")
        self.doing("reading the server's settings and the task table")
        info = server_info(conn)
        self.notes += info.notes
        self.notes += self.guarded(lambda: visibility_notes(conn, info), info) or []
        tinfo = self.guarded(lambda: table_info(conn, self.table, info.dialect), info)
        if tinfo is None:
            from celerydiag.backend.db import TableInfo

            tinfo = TableInfo(self.table)
        yield from self.settings_findings(info)
        yield from self.table_findings(conn, info, tinfo)
        duration = self.lock_duration()
        ctx.progress.step(1, f"sampling lock waits for {duration:.3g} s")
        self.bound(conn)
        yield from self.lock_findings(conn, info, duration, self.idle_stop_s(tinfo))
        ctx.progress.step(1, "contention experiment on a scratch table")
        self.bound(conn)
        yield from self.experiment(engine, conn, info)
        yield self.server_finding(info, tinfo)

    def lock_duration(self) -> float:
        """``--duration``, cut to LOCK_SHARE of what is left (the experiment needs the rest), or to
        all that is left when the experiment cannot fit anyway."""
        asked = self.ctx.options.duration
        left = self.budget.left()
        duration = min(asked, LOCK_SHARE * left)
        if left - duration < self.phase_floor_s() + self.write_guess_s:
            # the experiment will not fit either way: let the sampling have the time instead
            duration = min(asked, max(duration, left - 4 * self.rtt_s))  # bound() and a sample after it
        if duration < asked:
            self.skipped["lock_sampling"] = (f"Sampled {duration:.2g} s of the {asked:g} s --duration asks:"
                                             f" --max-seconds {self.ctx.limits.max_seconds:g} leaves no more")
        return duration

    def idle_stop_s(self, tinfo: Any) -> float | None:
        """When the lock sampling may end before ``--duration``: after IDLE_LOCK_LOOK_S with no
        session waiting for any lock in any snapshot, unless an open transaction touches the task
        table, or on MariaDB holds any row lock (a blocker in waiting: then the whole --duration,
        for a writer to run into it).

        Only with the default --duration: a user who asks for a longer look (to catch an
        intermittent blocker, a nightly backend_cleanup) gets all of it. Why stop at all: on an
        idle server every further snapshot repeats the empty answer of the first ones, and a
        fixed 3 s of them was a third of doctor's time on a database target."""
        from celerydiag.probe import ProbeOptions

        if self.ctx.options.duration != ProbeOptions().duration:
            return None
        oldest = getattr(tinfo, "oldest_trx", None) or {}
        touches = oldest.get("touches_task_table")
        # MariaDB cannot say which table a transaction locked (None): one holding any row counts
        if touches or (touches is None and oldest.get("rows_locked_count", 0) > 0):
            return None
        return IDLE_LOCK_LOOK_S

    def guarded(self, fn: Any, info: Any) -> Any:
        """Run a catalog read; a privilege we lack becomes a note, not a failure."""
        from celerydiag.backend.db import degrade_note

        try:
            return fn()
        except Exception as exc:
            if not is_permission(exc):
                raise
            self.notes.append(self.target.redact(degrade_note(info, exc)))
            return None

    # -- settings and table ----------------------------------------------------------------------------
    def settings_findings(self, info: Any) -> Iterator[Finding]:
        fix = engine_fix(info.dialect, self.target)
        if info.dialect == "postgresql":
            raw = info.settings.get("lock_timeout", "0")
            wait_s = _pg_seconds(raw)
            if wait_s == 0 and "lock_timeout" not in str(current_engine_options(self.target)):
                yield Finding("backend.lock-timeout", Cause.BACKEND, Severity.INFO,
                              "lock_timeout is 0: a blocked update_state waits for as long as the blocker"
                              " holds its lock", evidence={"lock_timeout": raw,
                                                            "deadlock_timeout": info.settings.get("deadlock_timeout"),
                                                            "log_lock_waits": info.settings.get("log_lock_waits")},
                              detail=_log_lock_waits_note(info), fix=fix)
            else:
                yield Finding("backend.lock-timeout", Cause.BACKEND, Severity.OK,
                              f"lock_timeout bounds a blocked write ({raw})", evidence={"lock_timeout": raw})
            yield Finding("backend.isolation-level", Cause.BACKEND, Severity.OK,
                          f"isolation {info.isolation() or 'READ COMMITTED'} (PostgreSQL's default; nothing to change)",
                          evidence={"default_transaction_isolation":
                                    info.settings.get("default_transaction_isolation")})
        elif info.is_mysql_family:
            raw = info.settings.get("innodb_lock_wait_timeout", "50")
            configured = "innodb_lock_wait_timeout" in str(current_engine_options(self.target))
            if float(raw or 0) > LONG_LOCK_WAIT_S and not configured:
                yield Finding("backend.lock-timeout", Cause.BACKEND, Severity.INFO,
                              f"innodb_lock_wait_timeout is {raw} s: a blocked update_state can wait that long,"
                              " then Celery retries it (and the task waits)",
                              evidence={"innodb_lock_wait_timeout_s": float(raw)}, fix=fix)
            else:
                yield Finding("backend.lock-timeout", Cause.BACKEND, Severity.OK,
                              f"innodb_lock_wait_timeout {raw} s", evidence={"innodb_lock_wait_timeout_s": float(raw)})
            isolation = info.isolation()
            opts = current_engine_options(self.target)
            if isolation == "REPEATABLE READ" and opts.get("isolation_level") != "READ COMMITTED":
                yield Finding("backend.isolation-level", Cause.BACKEND, Severity.INFO,
                              "REPEATABLE READ: gap locks on celery_taskmeta cause the deadlocks and duplicate-key"
                              " errors of the Celery FAQ; READ COMMITTED is recommended",
                              evidence={"isolation": isolation}, fix=fix)
            else:
                yield Finding("backend.isolation-level", Cause.BACKEND, Severity.OK,
                              f"isolation {opts.get('isolation_level') or isolation}",
                              evidence={"isolation": isolation})

    def table_findings(self, conn: Any, info: Any, tinfo: Any) -> Iterator[Finding]:
        from celerydiag.backend.db import scan_cost

        where = self.table.qualified
        if not tinfo.exists:
            yield Finding("backend.task-table", Cause.BACKEND, Severity.INFO,
                          f"task table {where} does not exist (yet): Celery creates it on its first write",
                          detail="If your workers write results, check database_table_names/database_table_schemas"
                                 " and the database name in result_backend: the workers may write elsewhere.",
                          evidence={"table": where})
            return
        if tinfo.date_done_indexed:
            yield Finding("backend.date-done-index", Cause.BACKEND, Severity.OK,
                          f"{where}.date_done is indexed: backend_cleanup deletes without a table scan",
                          evidence={"table": where, "rows_count": tinfo.rows})
            return
        scanned = self.guarded(lambda: scan_cost(conn, self.table, info.dialect, self.ctx.limits.timeout_s), info)
        if scanned is None:  # no SELECT on the user's task table: the missing index is still a fact
            _rollback(conn)
        scan_ms, cut = scanned if scanned is not None else (0.0, False)
        index = f"ix_{self.table.name}_date_done"
        ddl = f"CREATE INDEX {index} ON {where} (date_done);"
        if info.dialect == "postgresql":
            ddl = f"CREATE INDEX CONCURRENTLY {index} ON {where} (date_done);"
        yield delay("backend.date-done-index", Cause.BACKEND, scan_ms,
                    f"no index on {where}.date_done: celery.backend_cleanup's DELETE scans the whole table"
                    + (f" ({scan_ms:.0f} ms{'+' if cut else ''} for {tinfo.rows or 0} rows)" if scanned is not None
                       else " (not timed: this role may not SELECT from it)") + " while it locks rows",
                    detail="Tables created before Celery 5.6.3 lack this index and create_all() does not add it;"
                           " on InnoDB the scan locks every row it reads and blocks update_state (celery#10097).",
                    evidence={"table": where, "rows_count": tinfo.rows, "size_bytes": tinfo.size_bytes,
                              "scan_ms": round(scan_ms, 1), "scan_cut_by_timeout": cut,
                              "indexes": tinfo.indexes},
                    fix=Fix(f"run once, in the database: {ddl} (and the same for the group table)", "",
                            (DB_DOCS,)))

    # -- lock waits ------------------------------------------------------------------------------------
    def lock_findings(self, conn: Any, info: Any, duration: float,
                      idle_stop_s: float | None = None) -> Iterator[Finding]:
        from celerydiag.backend.db import wait_query, watch_waits

        if wait_query(info) is None:
            return
        if duration < 2 * self.rtt_s or not self.budget.fits(2 * self.rtt_s):
            yield Finding("backend.lock-wait", Cause.BACKEND, Severity.INFO,
                          "lock waits not sampled: --max-seconds left no time for it",
                          detail=f"{self.skipped.get('lock_sampling', '')}; one sample takes a round trip,"
                                 f" {self.rtt_s * 1000:.0f} ms here.",
                          evidence={"sampled_s": 0.0, "asked_s": self.ctx.options.duration, **self.time_evidence()})
            return
        self.doing(f"sampling lock waits for {duration:.3g} s")
        interval = min(0.25, max(0.05, duration / 8))
        if idle_stop_s is not None and idle_stop_s < duration:
            interval = min(interval, idle_stop_s / 4)  # the short look still takes a few snapshots
        else:
            idle_stop_s = None
        started = time.monotonic()
        episodes = self.guarded(lambda: watch_waits(conn, info, self.table, duration, interval, self.stop,
                                                    idle_stop_s=idle_stop_s), info)
        sampled = min(duration, time.monotonic() - started)
        if episodes is None:
            yield Finding("backend.lock-wait", Cause.BACKEND, Severity.INFO,
                          "lock waits not sampled: the database user may not read the lock views",
                          detail=self.notes[-1] if self.notes else "", evidence={"sampled_s": 0.0})
            return
        ours = [e for e in episodes if e.on_task_table]
        others = [e for e in episodes if not e.on_task_table]
        idle = idle_stop_s is not None and not episodes and sampled < duration - interval
        if not idle:
            sampled = duration
        evidence: dict[str, Any] = {"sampled_s": round(sampled, 3), "asked_s": self.ctx.options.duration,
                                    "samples_count": max(1, int(sampled / interval) + (1 if idle else 0)),
                                    "table": self.table.qualified, "other_waits_count": len(others),
                                    "stopped_idle": idle}
        cut = self.skipped.get("lock_sampling", "")
        if idle:
            cut = (f"No session waited for any lock in {evidence['samples_count']} snapshots over {sampled:.2g} s"
                   " and no open transaction touches the task table, so the sampling stopped there instead of"
                   f" running the whole {duration:g} s; pass --duration to sample for a set time")
        if not ours:
            yield Finding("backend.lock-wait", Cause.BACKEND, Severity.OK,
                          f"no lock waits on {self.table.qualified} in {sampled:.3g} s of sampling"
                          + (" (cut short by --max-seconds)" if cut and not idle else "")
                          + (" (the server was idle: no session waited for any lock)" if idle else ""),
                          detail=cut + ("." if cut else ""),
                          evidence={**evidence, "episodes": [e.to_evidence() for e in others[:3]]})
            return
        worst = ours[0]
        b = worst.blocker
        kill = (f"SELECT pg_terminate_backend({b['id']});" if info.dialect == "postgresql"
                else f"KILL {b['id']};")
        fix = engine_fix(info.dialect, self.target)
        summary = (f"find out what connection {b['id']} ({b.get('user')}@{b.get('host')}) is doing in its"
                   f" {b.get('transaction_age_s', 0):.0f} s-old transaction and end it ({kill}); then bound waits:"
                   f" {fix.summary if fix else 'lock timeouts are already set'}")
        yield delay("backend.lock-wait", Cause.BACKEND, worst.wait_s * 1000,
                    f"writes to {self.table.qualified} blocked {worst.wait_s * 1000:.0f} ms by connection"
                    f" {b['id']} ({b.get('user')}@{b.get('host')}, {b.get('state')})",
                    detail=f"{len(ours)} lock-wait episode(s) on the task table in {duration:g} s. Blocker's last"
                           f" statement: {b.get('query')!r}. Waiter {worst.waiter_id}: {worst.waiter.get('query')!r}.",
                    evidence={**evidence, "episodes_count": len(ours), "blocker_id": b["id"],
                              "wait_ms": round(worst.wait_s * 1000, 1),
                              "episodes": [e.to_evidence() for e in ours[:5]]},
                    fix=Fix(summary, fix.config if fix else "", fix.docs if fix else (DB_DOCS,)))

    # -- the experiment --------------------------------------------------------------------------------
    def experiment(self, engine: Any, conn: Any, info: Any) -> Iterator[Finding]:
        from celerydiag.access.app import fresh_app
        from celerydiag.backend.contention import Experiment, scratch_table_name
        from celerydiag.backend.scratch import scratch_model

        ctx = self.ctx
        conf = self.target.conf
        name = scratch_table_name(ctx.scratch)
        if not self.budget.fits(self.phase_floor_s()):
            self.skipped["experiment"] = self.no_time("the contention experiment")
            yield Finding("backend.experiment", Cause.BACKEND, Severity.INFO,
                          "contention experiment skipped (0 timed writes): --max-seconds left no time for it",
                          detail=f"{self.skipped['experiment'][:1].upper()}{self.skipped['experiment'][1:]}."
                                 " Give the probe more --max-seconds.",
                          evidence={**self.time_evidence(), **trust_evidence(0)})
            return
        model = scratch_model(name, self.table.schema, bool(conf.get("result_extended")))
        app = fresh_app(self.target, "celerydiag-backend", ("result_", "database_", "accept_content"),
                        skip=("database_table_names", "database_table_schemas"))
        exp = Experiment(app, self.url, model, self.budget, self.stop, control=conn,
                         write_guess_s=self.write_guess_s)
        ctx.cleanup.callback(exp.drop, engine)  # registered before the CREATE
        ctx.cleanup.callback(exp.stop_writers)  # and runs before the DROP (LIFO)
        try:
            self.doing(f"creating the scratch table {name}")
            exp.create(engine)
        except Exception as exc:
            if not is_permission(exc):
                raise
            from celerydiag.errors import describe

            yield Finding("backend.experiment", Cause.BACKEND, Severity.INFO,
                          "contention experiment skipped: the database user may not create a table"
                          " (read-only user?)",
                          detail=self.target.redact(f"CREATE TABLE {name} refused: {describe(exc)}. Run the probe"
                                                    " with the workers' own (writing) database user to measure"
                                                    " contention and connection cost."),
                          evidence={"table": name})
            return
        phases, fresh, pooled = self.phases(exp, info)
        yield from self.experiment_findings(info, name, phases)
        yield self.read_finding(fresh, pooled)

    def phases(self, exp: Any, info: Any) -> tuple[dict[str, Any], Any, Any]:
        """The writers' phases and the connection-cost reads, each given an equal share of the time
        left when it starts (at least :meth:`phase_floor_s`; one that cannot have it is skipped)."""
        ctx = self.ctx
        base = current_engine_options(self.target)
        from celerydiag.config.fixes import db_driver

        fixed = fixed_engine_options(info.dialect, base, db_driver(self.target))
        writers = 1 if info.dialect == "sqlite" else WRITERS
        writes = max(writers * 10, ctx.limits.samples // 3)
        shared = [f"{ctx.scratch}-shared"] * writers
        distinct = [f"{ctx.scratch}-w{i}" for i in range(writers)]
        plan = [("distinct_rows", distinct, base)]
        if writers > 1:
            plan.append(("one_row", shared, base))
            if fixed != base:
                plan.append(("one_row_with_fix", shared, fixed))
        phases: dict[str, Any] = {}
        for i, (phase, task_ids, options) in enumerate(plan):
            seconds = self.share(len(plan) + 1 - i)  # +1: the connection-cost reads come last
            if not seconds:
                self.skipped[phase] = self.no_time(f"the {phase} phase")
                continue
            self.doing(f"the contention experiment's {phase} phase ({len(task_ids)} writers, {seconds:.2g} s)")
            opts = {**options, "connect_args": self.bounded_args(dict(options.get("connect_args") or {}))}
            phases[phase] = exp.run_phase(phase, task_ids, opts, writes, seconds)
            self.bound(exp.control)
        ctx.progress.step(1, "connection cost per client read")
        seconds = self.share(1)
        self.doing("timing a client read with a new connection and a pooled one")
        opts = {**base, "connect_args": self.bounded_args(dict(base.get("connect_args") or {}))}
        fresh, pooled = exp.read_cost(distinct[0], opts, min(30, ctx.limits.samples), seconds, self.connect_s)
        if not fresh.samples:
            self.skipped["read_cost"] = self.no_time("the connection-cost reads")
        return phases, fresh, pooled

    def phase_floor_s(self) -> float:
        """The least a phase is worth running for: its writers' connects and three writes."""
        return self.connect_s + 3 * self.write_guess_s

    def share(self, stages_left: int) -> float:
        """Seconds for the next of ``stages_left`` stages: an equal share of what is left, at least
        the phase floor; 0 when not even that is left."""
        left = self.budget.left()
        floor = self.phase_floor_s()
        if left < floor:
            return 0.0
        return max(floor, left / max(1, stages_left))

    def no_time(self, what: str) -> str:
        return (f"{what} did not run: {self.budget.left():.2g} s of --max-seconds"
                f" {self.ctx.limits.max_seconds:g} were left and it needs at least {self.phase_floor_s():.2g} s"
                f" (a new connection costs {self.connect_s:.2g} s here, a round trip {self.rtt_s * 1000:.0f} ms)")

    def time_evidence(self) -> dict[str, Any]:
        """How the budget went: for every finding a short budget cut."""
        return {"max_s": self.ctx.limits.max_seconds, "connect_s": round(self.connect_s, 3),
                "round_trip_ms": round(self.rtt_s * 1000, 3), "skipped_stages": dict(self.skipped)}

    def experiment_findings(self, info: Any, table: str, phases: dict[str, Any]) -> Iterator[Finding]:
        distinct = phases.get("distinct_rows")
        s = distinct.summary if distinct is not None else None
        if distinct is None or s is None or (not s.samples and not sum(distinct.errors.values())):
            why = self.skipped.get("distinct_rows") or self.no_time("the timed writes")
            yield self.not_measured("backend.write-latency", "update_state write latency not measured: "
                                    "--max-seconds left no time for a timed write", why, table)
            return
        if not s.samples:
            raise DiagError(f"every write to the scratch table failed: {distinct.first_error}",
                            "check the database user's INSERT/UPDATE rights and the server's log")
        evidence = {"table": table, **distinct.to_evidence(), **trust_evidence(s.samples),
                    **self.time_evidence()}
        yield delay("backend.write-latency", Cause.BACKEND, s.p99_ms,
                    f"update_state write P99 {s.p99_ms:.1f} ms, P50 {s.p50_ms:.1f} ms"
                    f" ({distinct.writers} writer(s), own rows, {distinct.writes_per_s:.0f} writes/s)"
                    f"{thin_note(s.samples, 'writes')}",
                    detail="Celery's own DatabaseBackend.store_result on a scratch copy of the task table, pooled"
                           " connections as in a prefork child. Every update_state blocks the task this long."
                           + self.cut_note(),
                    evidence=evidence,
                    fix=redis_progress_fix() if s.p99_ms >= 0.2 * self.ctx.budget_ms else None)
        yield from self.contention_finding(info, table, phases, s)

    def not_measured(self, fid: str, title: str, why: str, table: str) -> Finding:
        """What a stage the budget left no time for says instead of a number."""
        return Finding(fid, Cause.BACKEND, Severity.INFO, title,
                       detail=f"{sentence(why)} Give the probe more --max-seconds.",
                       evidence={"table": table, **self.time_evidence(), **trust_evidence(0)})

    def cut_note(self) -> str:
        """One sentence per stage the budget cut, for the detail of the findings it thinned."""
        return "".join(f" {sentence(why)}" for stage, why in self.skipped.items() if stage != "lock_sampling")

    def contention_finding(self, info: Any, table: str, phases: dict[str, Any], s: Any) -> Iterator[Finding]:
        one = phases.get("one_row")
        if one is None and "one_row" not in self.skipped:
            return  # one writer only (SQLite): no row contention to measure
        if one is None or (not one.summary.samples and not sum(one.errors.values())):
            why = self.skipped.get("one_row") or self.no_time("the one_row phase's timed writes")
            yield self.not_measured("backend.row-contention", "concurrent writes to one task row not measured: "
                                    "--max-seconds left no time for it", why, table)
            return
        o = one.summary
        impact = max(0.0, o.p99_ms - s.p99_ms) if o.samples else 0.0
        lock_wait = max(0.0, o.mean_ms - s.mean_ms) if o.samples else 0.0
        failures = sum(one.errors.values())
        with_fix = phases.get("one_row_with_fix")
        fix = engine_fix(info.dialect, self.target)
        detail = (f"{one.writers} writers on one task row (what duplicate runs of a task do): P99 {o.p99_ms:.1f} ms"
                  f"{thin_note(o.samples, 'writes')},"
                  f" ≈{lock_wait:.1f} ms lock wait per write, {one.errors['lock_timeout']} lock timeouts,"
                  f" {one.errors['deadlock']} deadlocks, {one.writes_per_s:.0f} writes/s.")
        if with_fix is not None and with_fix.summary.samples:
            w = with_fix.summary
            detail += (f" With the fix applied: P99 {w.p99_ms:.1f} ms ({w.p99_ms - o.p99_ms:+.1f} ms),"
                       f" {with_fix.errors['lock_timeout']} lock timeouts, {with_fix.errors['deadlock']} deadlocks.")
        elif "one_row_with_fix" in self.skipped:
            why = self.skipped["one_row_with_fix"]
            detail += f" {sentence(why)}"
        if one.first_error:
            detail += f" First error: {self.target.redact(one.first_error)}."
        # failed writes are worse than their milliseconds say: at least a warning
        yield delay("backend.row-contention", Cause.BACKEND, impact,
                    f"concurrent writes to one task row add {impact:.1f} ms at P99"
                    f" ({failures} failed writes){thin_note(min(o.samples, s.samples), 'writes')}", detail=detail,
                    evidence={"table": table, "phases": {k: p.to_evidence() for k, p in phases.items()},
                              **trust_evidence(min(o.samples, s.samples)),
                              "lock_wait_ms": round(lock_wait, 2),
                              "failed_writes_count": failures},
                    fix=fix if (failures or impact >= 0.2 * self.ctx.budget_ms) else None,
                    at_least=Severity.WARNING if failures else None)

    def read_finding(self, fresh: Any, pooled: Any) -> Finding:
        if not fresh.samples:
            return Finding("backend.reconnect-per-read", Cause.BACKEND, Severity.INFO,
                           "connection cost not measured: --max-seconds left no time for it",
                           detail=f"{self.skipped.get('read_cost') or self.no_time('the connection-cost reads')}.",
                           evidence=self.time_evidence())
        extra = max(0.0, fresh.p50_ms - pooled.p50_ms)
        return delay("backend.reconnect-per-read", Cause.BACKEND, extra,
                     f"a client read costs {fresh.p50_ms:.1f} ms with a new connection (Celery outside forked"
                     f" workers) vs {pooled.p50_ms:.1f} ms pooled: +{extra:.1f} ms per AsyncResult.state",
                     detail="Outside prefork children (web/API processes, solo/threads/gevent/eventlet pools)"
                            " Celery's database backend uses NullPool: every read and write opens a new connection"
                            " (reference A.2, celery#2661). Poll less often, read meta once per poll"
                            " (backend.get_task_meta) instead of .state then .info, or use a push backend.",
                     evidence={"fresh_connection_read_ms": fresh.short(), "pooled_read_ms": pooled.short(),
                               "connect_ms": round(extra, 3), "reads_count": fresh.samples},
                     fix=redis_progress_fix() if extra >= 0.2 * self.ctx.budget_ms else None)

    def server_finding(self, info: Any, tinfo: Any) -> Finding:
        from celerydiag.backend.db import TableInfo

        t: TableInfo = tinfo
        evidence = {"dialect": info.dialect, "server_version": info.version, "settings": dict(info.settings),
                    "table": t.table.qualified, "table_exists": t.exists, "rows_count": t.rows,
                    "size_bytes": t.size_bytes, "indexes": t.indexes, "notes": list(self.notes)}
        detail = " ".join(self.notes)
        if t.oldest_trx:
            o = dict(t.oldest_trx)
            evidence["oldest_transaction"] = o
            scope = "on the task table" if o.get("touches_task_table") else "in the server"
            detail = (f"Oldest open transaction {scope}: connection {o['id']} ({o.get('user')}@{o.get('host')},"
                      f" {o.get('state')}) open {o['age_s']:.1f} s. " + detail).strip()
        rows = "missing" if not t.exists else f"{t.rows if t.rows is not None else '?'} rows"
        severity = Severity.INFO if self.notes or (t.oldest_trx and t.oldest_trx["age_s"] >= 1) else Severity.OK
        return Finding("backend.server", Cause.BACKEND, severity,
                       f"{info.dialect} {info.version}: task table {t.table.qualified}"
                       f" ({rows})",
                       detail=self.target.redact(detail), evidence=evidence)


def _redis_latency(fid: str, summary: Any, noun: str, title: str, detail: str, key: str,
                   timing: dict[str, Any]) -> Iterator[Finding]:
    """One Redis latency finding, or, when --max-seconds left no time for a single timed call, a
    finding that says so (never a NaN P99)."""
    if not summary.samples:
        yield Finding(fid, Cause.BACKEND, Severity.INFO,
                      f"{title.split(' P99')[0]} not measured: --max-seconds left no time for a timed call",
                      detail=f"A round trip costs {timing['round_trip_ms']:.0f} ms here. Give the probe more"
                             " --max-seconds.", evidence={**timing, **trust_evidence(0)})
        return
    yield delay(fid, Cause.BACKEND, summary.p99_ms,
                title.format(p99=summary.p99_ms, p50=summary.p50_ms) + thin_note(summary.samples, noun),
                detail=detail, evidence={key: summary.short(), **trust_evidence(summary.samples), **timing})


def _rollback(conn: Any) -> None:
    """After a refused statement PostgreSQL aborts the transaction: end it so the next reads run."""
    from celerydiag.errors import quietly

    quietly(conn.rollback)


def thin_note(samples: int, noun: str) -> str:
    """'' for a P99 from enough samples, else the words that say it is not one (issue 12)."""
    from celerydiag.measure import MIN_SAMPLES_FOR_P99

    if samples >= MIN_SAMPLES_FOR_P99:
        return ""
    return (f" (only {samples} {noun}, below the {MIN_SAMPLES_FOR_P99} a P99 needs:"
            " that P99 is their maximum, not a trustworthy P99)")


def trust_evidence(samples: int) -> dict[str, Any]:
    """How many samples a latency finding got against its trust floor, for --format json readers."""
    from celerydiag.measure import MIN_SAMPLES_FOR_P99

    return {"samples": samples, "samples_floor_count": MIN_SAMPLES_FOR_P99,
            "p99_trustworthy": samples >= MIN_SAMPLES_FOR_P99}


def _pg_seconds(value: str) -> float:
    """'0' / '2s' / '1500ms' / '1min' → seconds (pg_settings unit applied by server_info)."""
    text = value.strip().lower()
    units = (("ms", 0.001), ("min", 60.0), ("s", 1.0), ("h", 3600.0), ("d", 86400.0))
    for suffix, factor in units:
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * factor
            except ValueError:
                return 0.0
    try:
        return float(text) / 1000.0  # lock_timeout without a unit is in milliseconds
    except ValueError:
        return 0.0


def _log_lock_waits_note(info: Any) -> str:
    if info.settings.get("log_lock_waits") == "off":
        return ("log_lock_waits is off, so the server log shows no lock waits either; even when on it only"
                " logs waits longer than deadlock_timeout (ALTER SYSTEM SET log_lock_waits = on).")
    return ""


# ---- Redis ----------------------------------------------------------------------------------------------

def sentence(text: str) -> str:
    """``text`` as a sentence of a finding's detail: capitalised, with its full stop."""
    return f"{text[:1].upper()}{text[1:]}."


def redis_findings(ctx: ProbeContext) -> Iterator[Finding]:
    from celerydiag.backend.redis import EVICTING, measure

    ctx.progress.start("backend", 2)
    ctx.progress.step(1, "Redis writes and reads on a key of our own")
    from celerydiag.measure import Budget, StopRule

    budget = Budget.of(ctx)
    budget.deadline -= min(FINDINGS_MARGIN_S, 0.1 * ctx.limits.max_seconds)
    ctx.doing("Redis writes and reads on a key of our own")
    facts = measure(ctx.target, ctx.scratch, ctx.cleanup, ctx.limits.samples, budget.left(), ctx.limits.timeout_s,
                    budget=budget, enough=StopRule.for_budget(ctx.budget_ms))
    ctx.progress.step(1, "subscribers, eviction, TTLs")
    timing = {"max_s": ctx.limits.max_seconds, "connect_s": round(facts.connect_s, 3),
              "round_trip_ms": round(facts.round_trip_ms, 3)}
    yield from _redis_latency("backend.write-latency", facts.write, "writes",
                              "update_state write P99 {p99:.2f} ms, P50 {p50:.2f} ms (GET + MULTI/SETEX/PUBLISH/EXEC)",
                              "Celery's own RedisBackend.store_result on a key of our own, sent on a fixed schedule"
                              " and timed from the intended send time.", "write_ms", timing)
    yield from _redis_latency("backend.read-latency", facts.read, "reads",
                              "client read (AsyncResult.state) P99 {p99:.2f} ms, P50 {p50:.2f} ms", "", "read_ms",
                              timing)
    memory = {"maxmemory_bytes": facts.maxmemory_bytes, "used_memory_bytes": facts.used_memory_bytes,
              "maxmemory_policy": facts.policy}
    if facts.maxmemory_bytes and facts.policy in EVICTING:
        share = facts.used_memory_bytes / facts.maxmemory_bytes
        yield Finding("backend.redis-eviction", Cause.BACKEND,
                      Severity.WARNING if share >= 0.5 else Severity.INFO,
                      f"maxmemory-policy {facts.policy} can evict result keys (memory {share:.0%} of maxmemory):"
                      " an evicted state reads as PENDING for ever",
                      evidence={**memory, "used_ratio": round(share, 3)},
                      fix=Fix("keep results on a Redis that does not evict them: CONFIG SET maxmemory-policy"
                              " noeviction (writes then fail loudly when full) or a separate Redis for results",
                              "", (REDIS_DOCS,)))
    else:
        yield Finding("backend.redis-eviction", Cause.BACKEND, Severity.OK,
                      "result keys cannot be evicted" + (f" (maxmemory-policy {facts.policy})" if facts.policy else ""),
                      evidence=memory)
    yield Finding("backend.result-subscribers", Cause.BACKEND, Severity.OK if not facts.notes else Severity.INFO,
                  f"{facts.subscribers_count} subscriber(s) on {facts.channels_count} result channel(s)"
                  f" ({facts.pattern_subscriptions_count} pattern subscriptions on the server)",
                  detail=" ".join(facts.notes),
                  evidence={"channels_count": facts.channels_count, "subscribers_count": facts.subscribers_count,
                            "pattern_subscriptions_count": facts.pattern_subscriptions_count})
    ttl_evidence = {"result_expires_s": facts.expires_s, "written_key_ttl_s": facts.our_ttl_s,
                    "keys_sampled_count": facts.keys_sampled_count,
                    "keys_without_ttl_count": facts.keys_without_ttl_count}
    if facts.expires_s is None or facts.keys_without_ttl_count:
        yield Finding("backend.result-expires", Cause.BACKEND, Severity.INFO,
                      "result keys that never expire: "
                      + ("result_expires is off" if facts.expires_s is None else
                         f"{facts.keys_without_ttl_count} of {facts.keys_sampled_count} sampled keys have no TTL"),
                      detail="Keys without a TTL pile up until maxmemory; then, depending on the policy, writes"
                             " fail or other results are evicted.",
                      evidence=ttl_evidence,
                      fix=Fix("let results expire (seconds; Celery's default is one day)", "result_expires = 86400\n",
                              ("https://docs.celeryq.dev/en/stable/userguide/configuration.html#result-expires",)))
    else:
        yield Finding("backend.result-expires", Cause.BACKEND, Severity.OK,
                      f"result keys expire after {facts.expires_s:.0f} s (written key TTL {facts.our_ttl_s} s)",
                      evidence=ttl_evidence)
