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
from celerydiag.errors import DiagError
from celerydiag.findings import Cause, Finding, Fix, Severity, delay
from celerydiag.probe import Probe, ProbeContext
from celerydiag.target import REDIS_SCHEMES, Side, Target

DB_DOCS = "https://docs.celeryq.dev/en/stable/userguide/configuration.html#database-backend-settings"
FAQ_DEADLOCK = "https://docs.celeryq.dev/en/stable/faq.html#mysql-is-throwing-deadlock-errors-what-can-i-do"
REDIS_DOCS = "https://docs.celeryq.dev/en/stable/userguide/configuration.html#redis-backend-settings"
PG_LOCK_TIMEOUT_MS = 2000
MYSQL_LOCK_WAIT_S = 5
LONG_LOCK_WAIT_S = 10  # a server that lets a write wait longer than this gets the lock-timeout fix
WRITERS = 4


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
        return None

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        if ctx.target.backend_scheme == "db":
            yield from DatabaseRun(ctx).run()
        else:
            yield from redis_findings(ctx)


# ---- fixes ---------------------------------------------------------------------------------------------

def current_engine_options(target: Target) -> dict[str, Any]:
    return dict(target.conf.get("database_engine_options") or {})


def fixed_engine_options(dialect: str, current: dict[str, Any]) -> dict[str, Any]:
    """The user's own engine options plus the two changes that bound lock waits (reference E):
    MySQL/MariaDB READ COMMITTED (Celery FAQ) and a 5 s innodb_lock_wait_timeout; PostgreSQL a
    2 s lock_timeout (its isolation is already READ COMMITTED: nothing to change there)."""
    options = dict(current)
    args = dict(options.get("connect_args") or {})
    if dialect in ("mysql", "mariadb"):
        options["isolation_level"] = "READ COMMITTED"
        existing = str(args.get("init_command") or "")
        setting = f"innodb_lock_wait_timeout={MYSQL_LOCK_WAIT_S}"
        if not existing:
            args["init_command"] = f"SET SESSION {setting}"
        elif "innodb_lock_wait_timeout" not in existing and existing.upper().startswith("SET "):
            args["init_command"] = f"{existing}, SESSION {setting}"
    elif dialect == "postgresql":
        existing = str(args.get("options") or "")
        if "lock_timeout" not in existing:
            args["options"] = f"{existing} -c lock_timeout={PG_LOCK_TIMEOUT_MS}".strip()
    else:
        return options
    options["connect_args"] = args
    return options


def engine_fix(dialect: str, target: Target) -> Fix | None:
    """One database_engine_options for every probe: the config probe's recommendation (the user's
    options, what crashes removed, secrets never printed) with the lock-wait bounds added, so
    pasting both probes' fixes cannot leave two different dicts."""
    from celerydiag.compat import celery_version
    from celerydiag.config.fixes import assignments, recommended_engine_options

    current = current_engine_options(target)
    if fixed_engine_options(dialect, current) == current:
        return None
    options = fixed_engine_options(dialect, recommended_engine_options(target.conf, target, celery_version()))
    if dialect == "postgresql":
        summary = (f"give Celery's connections a {PG_LOCK_TIMEOUT_MS} ms lock_timeout: a blocked update_state"
                   " fails fast (Celery retries it, result_backend_max_retries=3) instead of waiting without"
                   " limit; PostgreSQL is already READ COMMITTED, leave isolation alone")
    else:
        summary = (f"READ COMMITTED (Celery FAQ) and a {MYSQL_LOCK_WAIT_S} s innodb_lock_wait_timeout on Celery's"
                   " connections: a blocked update_state fails fast (Celery retries it) instead of waiting 50 s")
    return Fix(summary, assignments(database_engine_options=options), (DB_DOCS, FAQ_DEADLOCK))


def redis_progress_fix() -> Fix:
    return Fix("keep the database for results if you must, but let progress (update_state) go to Redis:"
               " a push-based backend with sub-millisecond writes",
               "# point this at your Redis\nresult_backend = 'redis://localhost:6379/0'\n", (REDIS_DOCS,))


# ---- database ------------------------------------------------------------------------------------------

class DatabaseRun:
    """One run against a database backend; every object it creates is on ``ctx.cleanup``."""

    STAGES = 4

    def __init__(self, ctx: ProbeContext) -> None:
        from celerydiag.access.backend import TableRef, database_url, dialect

        self.ctx = ctx
        self.target = ctx.target
        self.url = database_url(ctx.target)
        self.dialect = dialect(self.url)
        self.table = TableRef.from_conf(ctx.target.conf)
        self.stop = threading.Event()
        self.notes: list[str] = []

    def engine(self) -> Any:
        from celerydiag.access.backend import engine

        # No statement_timeout here: pg_settings would then report ours instead of the server's.
        db = engine(self.url, self.ctx.limits.timeout_s, self.bounded_args({}, statements=False),
                    isolation_level="AUTOCOMMIT")
        self.ctx.cleanup.callback(db.dispose)
        return db

    def bounded_args(self, args: dict[str, Any], statements: bool = True) -> dict[str, Any]:
        """Driver timeouts (and, on PostgreSQL, our name and, for the writers, a statement bound) merged
        into connect_args."""
        from celerydiag.access.backend import connect_timeout_args

        out = dict(connect_timeout_args(self.url, self.ctx.limits.timeout_s))
        out.update(args)
        if self.dialect == "postgresql":
            from celerydiag.backend.contention import APPLICATION_NAME

            out.setdefault("application_name", APPLICATION_NAME)
            if not statements:
                return out
            bound = int(max(self.ctx.limits.max_seconds, self.ctx.limits.timeout_s) * 1000)
            out["options"] = f"{out.get('options', '')} -c statement_timeout={bound}".strip()
        return out

    def run(self) -> Iterator[Finding]:
        from sqlalchemy import text

        from celerydiag.backend.db import server_info, table_info, visibility_notes

        ctx = self.ctx
        ctx.progress.start("backend", self.STAGES)
        engine = self.engine()
        with engine.connect() as conn:
            ctx.progress.step(1, "server settings and the task table")
            info = server_info(conn)  # reads the server's own statement_timeout first, then we bound ours
            if info.dialect == "postgresql":  # the driver has no read timeout: a stalled server must not hang us
                conn.execute(text(f"SET statement_timeout = {int(ctx.limits.timeout_s * 1000)}"))
            self.notes += info.notes
            self.notes += self.guarded(lambda: visibility_notes(conn, info), info) or []
            tinfo = self.guarded(lambda: table_info(conn, self.table, info.dialect), info)
            if tinfo is None:
                from celerydiag.backend.db import TableInfo

                tinfo = TableInfo(self.table)
            yield from self.settings_findings(info)
            yield from self.table_findings(conn, info, tinfo)
            ctx.progress.step(1, f"sampling lock waits for {ctx.options.duration:g} s")
            yield from self.lock_findings(conn, info)
        ctx.progress.step(1, "contention experiment on a scratch table")
        yield from self.experiment(engine, info)
        yield self.server_finding(info, tinfo)

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
                              " then Celery retries it", evidence={"innodb_lock_wait_timeout_s": float(raw)}, fix=fix)
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
        scan_ms, cut = scan_cost(conn, self.table, info.dialect, self.ctx.limits.timeout_s)
        index = f"ix_{self.table.name}_date_done"
        ddl = f"CREATE INDEX {index} ON {where} (date_done);"
        if info.dialect == "postgresql":
            ddl = f"CREATE INDEX CONCURRENTLY {index} ON {where} (date_done);"
        yield delay("backend.date-done-index", Cause.BACKEND, scan_ms,
                    f"no index on {where}.date_done: celery.backend_cleanup's DELETE scans the whole table"
                    f" ({scan_ms:.0f} ms{'+' if cut else ''} for {tinfo.rows or 0} rows) while it locks rows",
                    detail="Tables created before Celery 5.6.3 lack this index and create_all() does not add it;"
                           " on InnoDB the scan locks every row it reads and blocks update_state (celery#10097).",
                    evidence={"table": where, "rows_count": tinfo.rows, "size_bytes": tinfo.size_bytes,
                              "scan_ms": round(scan_ms, 1), "scan_cut_by_timeout": cut,
                              "indexes": tinfo.indexes},
                    fix=Fix(f"run once, in the database: {ddl} (and the same for the group table)", "",
                            (DB_DOCS,)))

    # -- lock waits ------------------------------------------------------------------------------------
    def lock_findings(self, conn: Any, info: Any) -> Iterator[Finding]:
        from celerydiag.backend.db import wait_query, watch_waits

        if wait_query(info) is None:
            return
        duration = self.ctx.options.duration
        interval = min(0.25, max(0.05, duration / 8))
        episodes = self.guarded(lambda: watch_waits(conn, info, self.table, duration, interval, self.stop), info)
        if episodes is None:
            yield Finding("backend.lock-wait", Cause.BACKEND, Severity.INFO,
                          "lock waits not sampled: the database user may not read the lock views",
                          detail=self.notes[-1] if self.notes else "", evidence={"sampled_s": 0.0})
            return
        ours = [e for e in episodes if e.on_task_table]
        others = [e for e in episodes if not e.on_task_table]
        evidence: dict[str, Any] = {"sampled_s": duration, "samples_count": max(1, int(duration / interval)),
                                    "table": self.table.qualified, "other_waits_count": len(others)}
        if not ours:
            yield Finding("backend.lock-wait", Cause.BACKEND, Severity.OK,
                          f"no lock waits on {self.table.qualified} in {duration:g} s of sampling",
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
    def experiment(self, engine: Any, info: Any) -> Iterator[Finding]:
        from celerydiag.access.app import fresh_app
        from celerydiag.backend.contention import Experiment, scratch_table_name
        from celerydiag.backend.scratch import scratch_model

        ctx = self.ctx
        conf = self.target.conf
        name = scratch_table_name(ctx.scratch)
        model = scratch_model(name, self.table.schema, bool(conf.get("result_extended")))
        app = fresh_app(self.target, "celerydiag-backend", ("result_", "database_", "accept_content"),
                        skip=("database_table_names", "database_table_schemas"))
        deadline = time.monotonic() + ctx.limits.max_seconds
        exp = Experiment(app, self.url, model, deadline, self.stop)
        ctx.cleanup.callback(exp.drop, engine)  # registered before the CREATE
        ctx.cleanup.callback(exp.stop_writers)  # and runs before the DROP (LIFO)
        try:
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
        base = current_engine_options(self.target)
        base_opts = {**base, "connect_args": self.bounded_args(dict(base.get("connect_args") or {}))}
        fixed = fixed_engine_options(info.dialect, base)
        fixed_opts = {**fixed, "connect_args": self.bounded_args(dict(fixed.get("connect_args") or {}))}
        writers = 1 if info.dialect == "sqlite" else WRITERS
        writes = max(writers * 10, ctx.limits.samples // 3)
        seconds = max(1.0, ctx.limits.max_seconds / 5)
        scratch = ctx.scratch
        shared = [f"{scratch}-shared"] * writers
        distinct = [f"{scratch}-w{i}" for i in range(writers)]
        phases = {"distinct_rows": exp.run_phase("distinct_rows", distinct, base_opts, writes, seconds)}
        if writers > 1:
            phases["one_row"] = exp.run_phase("one_row", shared, base_opts, writes, seconds)
            if fixed != base:
                phases["one_row_with_fix"] = exp.run_phase("one_row_with_fix", shared, fixed_opts, writes, seconds)
        ctx.progress.step(1, "connection cost per client read")
        fresh, pooled = exp.read_cost(distinct[0], base_opts, min(30, ctx.limits.samples), seconds)
        yield from self.experiment_findings(info, name, phases)
        yield self.read_finding(fresh, pooled)

    def experiment_findings(self, info: Any, table: str, phases: dict[str, Any]) -> Iterator[Finding]:
        from celerydiag.measure import MIN_SAMPLES_FOR_P99

        distinct = phases["distinct_rows"]
        s = distinct.summary
        if not s.samples:
            raise DiagError(f"every write to the scratch table failed: {distinct.first_error}",
                            "check the database user's INSERT/UPDATE rights and the server's log")
        evidence = {"table": table, **distinct.to_evidence()}
        thin = "" if s.reliable else f" (only {s.samples} writes: P99 is the maximum below {MIN_SAMPLES_FOR_P99})"
        yield delay("backend.write-latency", Cause.BACKEND, s.p99_ms,
                    f"update_state write P99 {s.p99_ms:.1f} ms, P50 {s.p50_ms:.1f} ms"
                    f" ({distinct.writers} writer(s), own rows, {distinct.writes_per_s:.0f} writes/s){thin}",
                    detail="Celery's own DatabaseBackend.store_result on a scratch copy of the task table, pooled"
                           " connections as in a prefork child. Every update_state blocks the task this long.",
                    evidence=evidence,
                    fix=redis_progress_fix() if s.p99_ms >= 0.2 * self.ctx.budget_ms else None)
        one = phases.get("one_row")
        if one is None:
            return
        o = one.summary
        impact = max(0.0, o.p99_ms - s.p99_ms) if o.samples else 0.0
        lock_wait = max(0.0, o.mean_ms - s.mean_ms) if o.samples else 0.0
        failures = sum(one.errors.values())
        with_fix = phases.get("one_row_with_fix")
        fix = engine_fix(info.dialect, self.target)
        detail = (f"{one.writers} writers on one task row (what duplicate runs of a task do): P99 {o.p99_ms:.1f} ms,"
                  f" ≈{lock_wait:.1f} ms lock wait per write, {one.errors['lock_timeout']} lock timeouts,"
                  f" {one.errors['deadlock']} deadlocks, {one.writes_per_s:.0f} writes/s.")
        if with_fix is not None and with_fix.summary.samples:
            w = with_fix.summary
            detail += (f" With the fix applied: P99 {w.p99_ms:.1f} ms ({w.p99_ms - o.p99_ms:+.1f} ms),"
                       f" {with_fix.errors['lock_timeout']} lock timeouts, {with_fix.errors['deadlock']} deadlocks.")
        if one.first_error:
            detail += f" First error: {self.target.redact(one.first_error)}."
        # failed writes are worse than their milliseconds say: at least a warning
        yield delay("backend.row-contention", Cause.BACKEND, impact,
                    f"concurrent writes to one task row add {impact:.1f} ms at P99"
                    f" ({failures} failed writes)", detail=detail,
                    evidence={"table": table, "phases": {k: p.to_evidence() for k, p in phases.items()},
                              "lock_wait_ms": round(lock_wait, 2),
                              "failed_writes_count": failures},
                    fix=fix if (failures or impact >= 0.2 * self.ctx.budget_ms) else None,
                    at_least=Severity.WARNING if failures else None)

    def read_finding(self, fresh: Any, pooled: Any) -> Finding:
        if not fresh.samples:
            return Finding("backend.reconnect-per-read", Cause.BACKEND, Severity.INFO,
                           "connection cost not measured (time budget spent)", evidence={})
        extra = max(0.0, fresh.p50_ms - pooled.p50_ms)
        return delay("backend.reconnect-per-read", Cause.BACKEND, extra,
                     f"a client read costs {fresh.p50_ms:.1f} ms with a new connection (Celery outside forked"
                     f" workers) vs {pooled.p50_ms:.1f} ms pooled: +{extra:.1f} ms per AsyncResult.state",
                     detail="Outside prefork children (web/API processes, solo/threads/gevent/eventlet pools)"
                            " Celery's database backend uses NullPool: every read and write opens a new connection"
                            " (reference A.2, celery#2661). Poll less often, read meta once per poll"
                            " (backend.get_task_meta) instead of .state then .info, or use a push backend.",
                     evidence={"fresh_connection_read_ms": fresh.short(), "pooled_read_ms": pooled.short(),
                               "connect_ms": round(extra, 3)},
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

def redis_findings(ctx: ProbeContext) -> Iterator[Finding]:
    from celerydiag.backend.redis import EVICTING, measure

    ctx.progress.start("backend", 2)
    ctx.progress.step(1, "Redis writes and reads on a key of our own")
    facts = measure(ctx.target, ctx.scratch, ctx.cleanup, ctx.limits.samples,
                    max(1.0, ctx.limits.max_seconds / 3), ctx.limits.timeout_s)
    ctx.progress.step(1, "subscribers, eviction, TTLs")
    w, r = facts.write, facts.read
    yield delay("backend.write-latency", Cause.BACKEND, w.p99_ms,
                f"update_state write P99 {w.p99_ms:.2f} ms, P50 {w.p50_ms:.2f} ms (GET + MULTI/SETEX/PUBLISH/EXEC)",
                detail="Celery's own RedisBackend.store_result on a key of our own, sent on a fixed schedule and"
                       " timed from the intended send time.",
                evidence={"write_ms": w.short(), "samples": w.samples})
    yield delay("backend.read-latency", Cause.BACKEND, r.p99_ms,
                f"client read (AsyncResult.state) P99 {r.p99_ms:.2f} ms, P50 {r.p50_ms:.2f} ms",
                evidence={"read_ms": r.short(), "samples": r.samples})
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
