"""The end-to-end probe: the whole problem, measured directly.

A real Celery worker (in this process, on a thread, pool ``solo``) consumes only a queue of its
own on the target's broker and writes to the target's result backend. Its probe task calls
``update_state`` N times on a fixed schedule and records when each call returned. A client (a
second Celery app, as a web process would be) watches the way users do: polling
``backend.get_task_meta`` at a fine interval, and, where the backend pushes (Redis, rpc),
``AsyncResult.get(on_message=...)``. Worker and client share one clock, so the latency of every
update is exact, with no clock skew to correct.

What it creates, and removes at the end (also on Ctrl-C): the queue ``celerydiag.probe.<id>``
(and its exchange), result keys of its own task ids, and on the database backend a scratch copy
of Celery's task table ``celerydiag_<id>_e2e_taskmeta`` (never the user's ``celery_taskmeta``,
nor Celery's shared sequence or model classes: see ``scratch_db``).
"""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celerydiag import interrupt
from celerydiag.errors import TargetUnreachable, quietly
from celerydiag.findings import Cause, Finding, Fix, Severity, delay
from celerydiag.measure import downsampled, ms, summarize
from celerydiag.probe import Probe, ProbeContext, Skip, log
from celerydiag.target import AMQP_SCHEMES, REDIS_SCHEMES, Side, Target, redact_url

PUSH_BACKENDS = REDIS_SCHEMES | {"rpc"}  # get(on_message=...) is woken by each write
POLL_INTERVAL_S = 0.002  # a client polling as fast as it sensibly can: we want the backend's delay
UPDATE_SPACING_S = 0.005  # least time between two update_state calls (2x a Redis poll: see _calibrate_spacing)
MAX_SPACING_S = 0.2
SPACING_TIME_SHARE = 0.8  # of the update phase: the rest is for the writes a poller misses
CALIBRATION_READS = 10
MAX_WRITES_FACTOR = 3
DISPATCH_SAMPLES = 30
DISPATCH_SPACING_S = 0.01  # one ping in flight at a time: the worker is idle for each either way
DISPATCH_SHARE = 0.25  # of --max-seconds; the update phase gets the rest
START_TIMEOUT_S = 15.0
WORKER_STOP_S = 5.0
# Of --max-seconds, kept for a watch's overshoot (Celery's result.get() checks its timeout between
# drains, up to ~1 s late), stopping the worker and building the findings.
FINISH_MARGIN_S = 1.5
SQLITE_BUSY_S = 0.5  # SQLite lock wait of our e2e apps and cleanup (see _use_scratch_table)
TRUST_FLOOR = 200  # updates seen: below this a P99 is a few samples' maximum, and the finding says so

# Settings copied from the target so our worker and client talk to its services exactly as its
# own processes do (transport options, serializers, backend tuning), and nothing else (no routes,
# imports, beat schedule, …).
COPIED_PREFIXES = ("broker_", "result_", "redis_", "database_", "accept_content", "task_serializer",
                   "task_compression", "task_track_started", "task_default_delivery_mode",
                   "security_", "mongodb_", "cache_")
NOT_COPIED = {"broker_connection_retry_on_startup",
              "broker_connection_max_retries", "database_table_names", "database_table_schemas",
              "database_url", "database_create_tables_at_setup", "result_expires"}


@dataclass
class Trace:
    """What the worker and the client each saw, on the same clock (perf_counter seconds)."""

    started: dict[str, float] = field(default_factory=dict)  # task id -> task body start
    returned: dict[tuple[str, int], float] = field(default_factory=dict)  # (task, i) -> returned
    write_s: list[float] = field(default_factory=list)  # how long each update_state blocked
    seen: dict[str, dict[int, float]] = field(default_factory=dict)  # mode -> i -> first seen
    reads_s: list[float] = field(default_factory=list)  # one poll's read time
    # mode -> the last time the client looked and saw no update while the task still ran: a client
    # that saw none of them gives each a lower bound, not a latency (see _findings)
    blind: dict[str, float] = field(default_factory=dict)
    deadline: float = 0.0

    def clear(self) -> None:
        """Forget the last round (in place: the registered tasks hold this object), so a monitor
        running rounds for hours keeps one round's samples, not all of them."""
        self.started.clear()
        self.returned.clear()
        self.write_s.clear()
        self.seen.clear()
        self.reads_s.clear()


@dataclass(frozen=True)
class Round:
    """One short measurement by :meth:`E2ERun.one_round`, in ms: what a monitor records."""

    dispatch_ms: list[float]
    dispatch_sent: int
    visibility_ms: dict[str, list[float]]  # mode ("poll", "push") -> seen - returned per update
    missed: dict[str, int]  # mode -> updates written that the client never saw
    update_state_ms: list[float]  # how long each update_state() blocked the task


QUEUE_EXPIRES_MS = 60_000  # our queue outlives a cut cleanup by at most a minute


class E2EProbe(Probe):
    """End-to-end: a real worker's update_state() to a client seeing it, P50/P95/P99.

    Starts a Celery worker (in-process, pool solo) on a queue of its own, runs a probe task that
    calls update_state `--updates` times (default 250), and measures how long each new state
    takes to reach a polling client and, where the backend pushes, an on_message client; also
    dispatch latency (apply_async to task start) from up to 30 tasks sent one at a time, 10 ms
    apart. Load: one task queue, at most ~200 writes/s and one client's reads, within
    --max-seconds. Cleans up its queue, result keys and scratch tables.
    """

    name = "e2e"
    cause = Cause.E2E
    needs = frozenset({Side.BROKER, Side.BACKEND})

    def applies(self, ctx: ProbeContext) -> str | None:
        if ctx.target.backend_scheme in ("disabled", ""):
            return "no result backend configured: there are no task states to see"
        if ctx.target.backend_scheme == "db":
            from celerydiag.config.fixes import engine_options_crash

            return engine_options_crash(ctx.target.conf)  # the user's setting, not our bug
        return None

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        run = E2ERun(ctx)
        yield from run.measure()


class E2ERun:
    """One measurement: build the apps, start the worker, run both phases, clean up."""

    def __init__(self, ctx: ProbeContext) -> None:
        self.ctx = ctx
        self.target = ctx.target
        self.trace = Trace()
        self.queue_name = f"celerydiag.probe.{ctx.scratch.split('-', 1)[-1]}"
        self.table_prefix = ctx.scratch.replace("-", "_")
        self.task_ids: list[str] = []
        self.round_tag = ""  # one_round(): each round's task ids are new, so no stale state is read
        self.calibrated = False  # one_round(): the update spacing is calibrated once per worker
        self.spacing_s = UPDATE_SPACING_S
        self.modes = ["push"] if self.target.backend_scheme == "rpc" else ["poll"]
        if self.target.backend_scheme in PUSH_BACKENDS and "push" not in self.modes:
            self.modes.append("push")

    # -- orchestration ------------------------------------------------------------------------

    def measure(self) -> Iterator[Finding]:
        ctx, limits = self.ctx, self.ctx.limits
        updates = limits.updates
        ctx.progress.start("e2e", total=DISPATCH_SAMPLES + updates * len(self.modes))
        self._refuse_blocked_broker()
        with self.started() as client_app:
            try:
                # The phases share what is left of --max-seconds after the worker started, less a
                # margin to stop it and build the findings: the guard cuts the probe at the bound.
                end = time.perf_counter() + max(ctx.left() - FINISH_MARGIN_S, 0.0)
                ctx.doing("timing task dispatch")
                dispatch = self._dispatch_phase(client_app, end)
                self.trace.deadline = end
                ctx.doing("calibrating the state polls")
                self.spacing_s = self._calibrate_spacing(client_app)
                for mode in self.modes:
                    ctx.doing(f"watching state updates ({mode})")
                    self._progress_phase(client_app, mode, updates)
            finally:
                # On Ctrl-C too: the probe task stops at its next update, so the worker can stop
                # at once instead of after its join timeout, and before our cleanup runs.
                self.trace.deadline = 0.0
        yield from self._findings(dispatch)

    @contextmanager
    def started(self) -> Iterator[Any]:
        """The worker running on our queue; yields the client app. What it creates goes on
        ``ctx.cleanup`` (closed by the caller after this block, which stops the worker). Shared by
        :meth:`measure` and a long-running monitor (`celerydiag watch`), which keeps it open."""
        ctx = self.ctx
        ctx.doing("starting the e2e worker")
        worker_app, client_app = self._apps()
        # An ExitStack unwinds last-in first-out: remove what we made, then close the apps.
        ctx.cleanup.callback(worker_app.close)
        ctx.cleanup.callback(client_app.close)
        if not self.target.scratch_dir:  # the embedded default's SQLite file goes with its temp dir
            ctx.cleanup.callback(self._forget_results, client_app)
        ctx.cleanup.callback(self._delete_queue, client_app)
        self._register_tasks(worker_app)
        hostname = f"{ctx.scratch}@{socket.gethostname()}"
        with running_worker(worker_app, hostname, self.queue_name, self.target, ctx):
            yield client_app

    def one_round(self, client: Any, tag: str, updates: int, dispatch_s: float, update_s: float) -> Round:
        """The probe's method at a monitor's scale, inside :meth:`started`: dispatch pings for
        ``dispatch_s``, then one progress task per mode writing ``updates`` states within
        ``update_s`` of its phase's start (a slow dispatch cannot squeeze it). Forgets the previous
        round's results and samples first, so running rounds for hours holds one round in memory
        and in the backend."""
        self._forget_results(client)
        self.task_ids.clear()
        self.trace.clear()
        self.round_tag = tag
        try:
            dispatch, sent = self._dispatch_phase(client, time.perf_counter() + dispatch_s)
            self.trace.deadline = time.perf_counter() + update_s
            if not self.calibrated:  # as measure() does: updates a poller can read, each
                self.spacing_s = self._calibrate_spacing(client)
                self.calibrated = True
            for mode in self.modes:
                self._progress_phase(client, mode, updates)
        finally:
            self.trace.deadline = 0.0
        visibility, missed = {}, {}
        for mode in self.modes:
            values, _, missed[mode], _ = self._latencies(mode)
            visibility[mode] = values
        return Round(dispatch, sent, visibility, missed, [ms(v) for v in self.trace.write_s])

    def _task_id(self, kind: str) -> str:
        return f"{self.ctx.scratch}{self.round_tag}-{kind}"

    def _refuse_blocked_broker(self) -> None:
        """A RabbitMQ that blocks publishers (memory or disk alarm) would hold every apply_async
        and update_state, and the close of every channel after them: nothing could be measured.
        One confirmed canary publish finds out first; the broker probe reports the alarm."""
        if self.target.broker_scheme not in AMQP_SCHEMES:
            return
        from celerydiag.broker.amqp import blocks_publishers

        self.ctx.doing("checking that the broker accepts publishes")
        reason = blocks_publishers(self.target, self.ctx.call_timeout(), f"{self.queue_name}.canary")
        if reason:
            raise Skip(f"the broker blocks publishers ({reason}): no task could be sent or state "
                       "reported; see broker.blocked, clear the broker's alarm and rerun")

    def _apps(self) -> tuple[Any, Any]:
        """A worker app and a client app with the target's transport settings and our own queue.

        Two apps, like a real deployment: the worker's database backend behaves as a forked
        prefork child (pooled connections); the client's as a web process (a new connection per
        read when not forked: reference A.2).
        """
        from kombu import Exchange, Queue

        from celerydiag.access.app import fresh_app

        apps = []
        for role in ("worker", "client"):
            app = fresh_app(self.target, f"celerydiag-e2e-{role}", COPIED_PREFIXES, NOT_COPIED, broker=True)
            exchange = Exchange(self.queue_name, "direct", durable=False, auto_delete=True)
            app.conf.update(
                # x-expires: RabbitMQ drops the queue by itself once unused, should the cleanup be
                # cut (a signal on a loaded host); auto-delete alone keeps a never-consumed queue.
                task_queues=[Queue(self.queue_name, exchange, routing_key=self.queue_name,
                                   durable=False, auto_delete=True,
                                   queue_arguments={"x-expires": QUEUE_EXPIRES_MS})],
                task_default_queue=self.queue_name,
                task_default_exchange=self.queue_name,
                task_default_routing_key=self.queue_name,
                task_routes=None,
                task_create_missing_queues=False,
                worker_enable_remote_control=False,
                worker_send_task_events=False,
                task_send_sent_event=False,
                worker_hijack_root_logger=False,
                # 1 would be the natural choice for one probe task at a time, but with the solo
                # pool on AMQP (Celery 5.7) the consumer then stalls after its first task.
                worker_prefetch_multiplier=4,
                broker_connection_retry_on_startup=False,
                broker_connection_max_retries=1,
                broker_connection_timeout=self.ctx.limits.timeout_s,
                result_expires=600,  # our keys vanish by themselves even if cleanup cannot run
            )
            if self.target.broker_scheme in AMQP_SCHEMES and role == "client":
                # py-amqp reads and writes with no timeout by default: a broker that stops reading
                # our socket mid-run would hold a publish or a channel close (the guard's cut is
                # the backstop; this makes the failure a timeout first).
                options = dict(app.conf.broker_transport_options or {})
                options.setdefault("read_timeout", self.ctx.limits.timeout_s)
                options.setdefault("write_timeout", self.ctx.limits.timeout_s)
                app.conf.broker_transport_options = options
            if self.target.broker_scheme == "memory":
                app.conf.broker_transport_options = {"polling_interval": 0.01}
            apps.append(app)
        if self.target.backend_scheme == "db":
            self._use_scratch_table(*apps)
        return apps[0], apps[1]

    def _use_scratch_table(self, worker: Any, client: Any) -> None:
        """Database backend: Celery's own backend on a scratch copy of its task table (never the
        user's, see scratch_db). The worker pools connections as a prefork child does; the client
        opens one per read, as a web process does (reference A.2)."""
        from celerydiag.access.backend import database_url, dialect, engine
        from celerydiag.backend.scratch import scratch_backend_class, scratch_model
        from celerydiag.compat import backend_reference, forget_backend

        url = database_url(self.target)
        conf = self.target.conf
        cleanup_timeout_s = self.ctx.limits.timeout_s
        if dialect(url) == "sqlite":
            # SQLite waits for a lock in C, where no signal reaches us: keep each wait short, so
            # a read that Ctrl-C interrupted cannot hold our cleanup (and the worker) for the
            # driver's 5 s default, twice. Our worker and client hold locks for milliseconds.
            cleanup_timeout_s = SQLITE_BUSY_S
            for app in (worker, client):
                options = dict(app.conf.database_engine_options or {})
                options["connect_args"] = {"timeout": SQLITE_BUSY_S, **(options.get("connect_args") or {})}
                app.conf.database_engine_options = options
        model = scratch_model(f"{self.table_prefix}_e2e_taskmeta",
                                   (conf.database_table_schemas or {}).get("task"),
                                   bool(conf.result_extended))
        for app, forked in ((worker, True), (client, False)):
            # by name, not the class: a class works as backend_cls only from Celery 5.7 (compat)
            app.backend_cls = backend_reference(scratch_backend_class(model, forked))
            self.ctx.cleanup.callback(forget_backend, app.backend_cls)
            app.conf.database_url = url
            app.conf.database_create_tables_at_setup = False
        db = engine(url, cleanup_timeout_s)
        self.ctx.cleanup.callback(db.dispose)
        self.ctx.cleanup.callback(model.__table__.drop, db, checkfirst=True)  # before create
        model.__table__.create(db, checkfirst=True)

    def _register_tasks(self, app: Any) -> None:
        trace = self.trace

        # Bound tasks: the instance that runs is not always the proxy this decorator returns, so
        # only `self.request` reliably names the running task.
        @app.task(name="celerydiag.e2e.ping", ignore_result=True, bind=True, shared=False)
        def ping(self: Any) -> None:
            trace.started[self.request.id] = time.perf_counter()

        @app.task(name="celerydiag.e2e.progress", bind=True, shared=False)
        def progress(self: Any, mode: str, updates: int, spacing_s: float) -> dict[str, int]:
            """Write until the client has seen `updates` states (a poller misses some), at most
            MAX_WRITES_FACTOR times that many, and never past the deadline."""
            task_id = self.request.id
            trace.started[task_id] = begin = time.perf_counter()
            seen = trace.seen.setdefault(mode, {})
            done = 0
            for i in range(updates * MAX_WRITES_FACTOR):
                if len(seen) >= updates:
                    break
                slot = begin + i * spacing_s
                delay = slot - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                if time.perf_counter() > trace.deadline:
                    break
                t0 = time.perf_counter()
                self.update_state(state="PROGRESS", meta={"i": i, "n": updates})
                t1 = time.perf_counter()
                trace.returned[(task_id, i)] = t1
                trace.write_s.append(t1 - t0)
                done += 1
            return {"i": done, "n": updates}

    # -- phase 1: dispatch --------------------------------------------------------------------

    def _dispatch_phase(self, client: Any, end: float) -> tuple[list[float], int]:
        """apply_async → task start for up to DISPATCH_SAMPLES pings, one in flight at a time.

        Each is timed from its slot on a fixed schedule, so a slow publish or a late start shows
        in full. One at a time because a fixed open-loop rate would overload a slow path (200 ms
        confirms sustain 5 publishes/s) and measure our own backlog instead of the user's
        dispatch latency. Bounded by DISPATCH_SHARE of the time to ``end`` (perf_counter), and
        never past it. Returns the latencies and how many pings were sent.
        """
        ping = client.signature("celerydiag.e2e.ping")
        # Warm-up, not measured: the first publish also opens the producer's connection and
        # channel (the broker probe reports connect time on its own).
        warmup = self._task_id("ping-warmup")
        self._forget_pings_later(warmup)
        ping.apply_async(task_id=warmup, queue=self.queue_name, routing_key=self.queue_name,
                         exchange=self.queue_name)
        warm_until = min(time.perf_counter() + self.ctx.limits.timeout_s, end)
        while warmup not in self.trace.started and time.perf_counter() < warm_until:
            time.sleep(0.001)
        latencies: list[float] = []
        start = time.perf_counter()
        stop = start + DISPATCH_SHARE * max(end - start, 0.0)
        slot = start
        sent = 0
        for i in range(DISPATCH_SAMPLES):
            slot = max(slot, time.perf_counter())
            if slot > stop:
                break
            time.sleep(max(0.0, slot - time.perf_counter()))
            task_id = self._task_id(f"ping-{i}")
            self._forget_pings_later(task_id)
            ping.apply_async(task_id=task_id, queue=self.queue_name,
                             routing_key=self.queue_name, exchange=self.queue_name)
            sent += 1
            wait_until = min(max(stop, time.perf_counter() + self.ctx.limits.timeout_s), end)
            while task_id not in self.trace.started and time.perf_counter() < wait_until:
                time.sleep(0.001)
            if task_id in self.trace.started:
                latencies.append(ms(self.trace.started[task_id] - slot))
            self.ctx.progress.step(1, "dispatch")
            slot += DISPATCH_SPACING_S
        return latencies, sent

    # -- phase 2: progress updates ------------------------------------------------------------

    def _calibrate_spacing(self, client: Any) -> float:
        """Space updates so a poller can read each one: twice the client's read time where the
        update phase has the time for it, never less than one read.

        Updates faster than a read would be overwritten before the poller sees them; that is
        a polling effect (the polling probe models it), not a backend delay, and it would leave
        too few samples for a P99. But twice a slow read (a new MariaDB connection per read:
        ~50 ms here) times --updates can outlast the phase's share of --max-seconds and end
        with too few samples too (164 of 250 at 135 ms spacing); so where it would, the spacing
        shrinks to what fits, with room for the writes a poller misses, down to one read.
        """
        if "poll" not in self.modes:
            return UPDATE_SPACING_S
        reads = []
        for _ in range(CALIBRATION_READS):
            t0 = time.perf_counter()
            client.backend.get_task_meta(f"{self.ctx.scratch}-calibrate")
            reads.append(time.perf_counter() - t0)
        typical = sorted(reads)[int(len(reads) * 0.9) - 1]
        wanted = 2 * typical + POLL_INTERVAL_S
        phase_s = max(self.trace.deadline - time.perf_counter(), 0.0) / len(self.modes)
        fits = SPACING_TIME_SHARE * phase_s / self.ctx.limits.updates
        one_read = typical + POLL_INTERVAL_S
        return min(MAX_SPACING_S, max(UPDATE_SPACING_S, one_read, min(wanted, fits)))

    def _progress_phase(self, client: Any, mode: str, updates: int) -> None:
        task_id = self._task_id(f"progress-{mode}")
        self.task_ids.append(task_id)
        seen: dict[int, float] = {}
        self.trace.seen[mode] = seen
        result = client.signature("celerydiag.e2e.progress", args=(mode, updates, self.spacing_s)) \
            .apply_async(task_id=task_id, queue=self.queue_name, routing_key=self.queue_name,
                         exchange=self.queue_name)
        # Until the phase's end, plus a read's timeout for the last writes, but never past the
        # probe's own margin: the guard would cut the probe and lose what it measured.
        budget = max(self.trace.deadline - time.perf_counter(), 0.0) + self.ctx.limits.timeout_s
        budget = max(min(budget, self.ctx.left() - FINISH_MARGIN_S), 0.01)
        if mode == "push":
            self._watch_push(result, seen, budget)
        else:
            self._watch_poll(client, task_id, seen, budget)

    def _note(self, seen: dict[int, float], meta: Any, now: float) -> None:
        if isinstance(meta, dict) and isinstance(meta.get("i"), int) and meta["i"] not in seen:
            seen[meta["i"]] = now
            if len(seen) <= self.ctx.limits.updates:  # one write may land after the target
                self.ctx.progress.step(1, "updates")

    def _watch_poll(self, client: Any, task_id: str, seen: dict[int, float], budget: float) -> None:
        """Poll the way a careful client does: one read per poll, state and meta from the same
        read (reference B: `.state` then `.info` are two reads and can disagree)."""
        backend = client.backend
        stop = time.perf_counter() + budget
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            meta = backend.get_task_meta(task_id)
            t1 = time.perf_counter()
            self.trace.reads_s.append(t1 - t0)
            if meta.get("status") == "PROGRESS":
                self._note(seen, meta.get("result"), t1)
            elif meta.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
                return
            if not seen:  # looked, and still none of the updates
                self.trace.blind["poll"] = t1
            time.sleep(POLL_INTERVAL_S)

    def _watch_push(self, result: Any, seen: dict[int, float], budget: float) -> None:
        def on_message(body: dict[str, Any]) -> None:
            now = time.perf_counter()
            if body.get("status") == "PROGRESS":
                self._note(seen, body.get("result"), now)

        from celery.exceptions import TimeoutError as ResultTimeout

        try:
            result.get(on_message=on_message, propagate=False, timeout=budget, disable_sync_subtasks=False)
        except ResultTimeout:
            pass  # what arrived is in `seen`; the finding reports the rest as missed
        if not seen:  # listened until now (a timeout or the final state) and none arrived
            self.trace.blind["push"] = time.perf_counter()

    # -- findings -----------------------------------------------------------------------------

    def _latencies(self, mode: str) -> tuple[list[float], int, int, int]:
        """Per update seen: seen − returned, in ms. Also: updates written, updates never seen,
        and updates seen before update_state had returned (visible before its reply arrived)."""
        task_id = self._task_id(f"progress-{mode}")
        seen = self.trace.seen.get(mode, {})
        written = [i for (t, i) in self.trace.returned if t == task_id]
        values, early = [], 0
        for i, t_seen in seen.items():
            returned = self.trace.returned.get((task_id, i))
            if returned is None:
                continue
            delta = t_seen - returned
            if delta < 0:
                early += 1
            values.append(ms(max(delta, 0.0)))
        return values, len(written), len(set(written) - set(seen)), early

    def _findings(self, dispatch: tuple[list[float], int]) -> Iterator[Finding]:
        ctx = self.ctx
        where = _where(self.target)
        write = summarize([ms(v) for v in self.trace.write_s])
        latencies, sent = dispatch
        d = summarize(latencies)
        if d.samples:
            yield delay(
                "e2e.dispatch-latency", Cause.E2E, d.p99_ms,
                f"Task dispatch (apply_async → task starts) P99 {d.p99_ms:.1f} ms",
                detail=(f"{d.samples} tasks sent one at a time, {DISPATCH_SPACING_S * 1000:.0f} ms apart, "
                        f"through {where}; each timed from its slot on that schedule. This is the time a "
                        "task spends PENDING before it can report anything; the broker probe explains it."),
                evidence={**d.to_dict(), "lost_count": sent - d.samples})
        observed_mode = "push" if "push" in self.modes else "poll"
        for mode in self.modes:
            values, written, missed, early = self._latencies(mode)
            s = summarize(values)
            if not written:
                yield Finding(f"e2e.visibility-{mode}", Cause.E2E, Severity.INFO,
                              f"State visibility ({mode}) not measured: the probe task wrote no state "
                              "within --max-seconds",
                              detail=(f"Dispatch took P99 {d.p99_ms:.0f} ms, so the time bound ran out before "
                                      "the probe task could run; rerun with a larger --max-seconds."
                                      if d.samples else "No probe task started within the time bound."),
                              evidence={"updates_written_count": 0,
                                        "max_seconds_s": ctx.limits.max_seconds})
                continue
            if not s.samples:
                yield self._none_seen(mode, written, missed)
                continue
            how = ("polling backend.get_task_meta() every "
                   f"{POLL_INTERVAL_S * 1000:.0f} ms (plus the read itself)" if mode == "poll"
                   else "AsyncResult.get(on_message=...) (the backend pushes)")
            evidence: dict[str, Any] = {**s.to_dict(), "updates_written_count": written, "missed_count": missed,
                                        "update_spacing_ms": round(self.spacing_s * 1000, 3),
                                        "seen_before_return_count": early,
                                        "update_state_p50_ms": round(write.p50_ms, 3),
                                        "update_state_p99_ms": round(write.p99_ms, 3)}
            if mode == "poll":
                reads = summarize([ms(v) for v in self.trace.reads_s])
                evidence.update(read_p50_ms=round(reads.p50_ms, 3), read_p99_ms=round(reads.p99_ms, 3),
                                poll_interval_ms=POLL_INTERVAL_S * 1000)
            thin = s.samples < TRUST_FLOOR
            evidence.update(trust_floor_count=TRUST_FLOOR, trusted=not thin,
                            series={"latencies_ms": downsampled(values)})  # the HTML report's CDF
            yield delay(
                f"e2e.visibility-{mode}", Cause.E2E, s.p99_ms,
                (f"State visibility ({mode}): update_state() returned → client saw it, P50 {s.p50_ms:.1f} ms, "
                 f"max {s.max_ms:.1f} ms from only {s.samples} updates: too few for a P99 (it needs "
                 f"{TRUST_FLOOR}; rerun with a larger --max-seconds)" if thin else
                 f"State visibility ({mode}): update_state() returned → client saw it, "
                 f"P99 {s.p99_ms:.1f} ms"),
                detail=(f"{s.samples} updates written by a real worker through {where} and watched by a "
                        f"client {how}. update_state() itself blocked the task for P50 "
                        f"{write.p50_ms:.1f} ms / P99 {write.p99_ms:.1f} ms per call."
                        + (f" {missed} updates were overwritten before the client read them (a poller "
                           "only sees the latest state)." if missed else "")),
                evidence=evidence,
                fix=_visibility_fix(self.target, mode, s.p99_ms, ctx.budget_ms))
            if mode == observed_mode:
                ctx.latency.update(observed_p50_ms=round(s.p50_ms, 3),
                                   observed_p99_ms=None if thin else round(s.p99_ms, 3),
                                   observed_mode=mode, observed_samples=s.samples)

    def _none_seen(self, mode: str, written: int, missed: int) -> Finding:
        """The client saw none of the updates. Where it was still looking after the first one
        returned, that update took longer than the gap: a measured lower bound, the impact, said
        to be one. Where it was not (the task ended first: its updates were lost, not late), there
        is no delay to put in milliseconds, and the finding says why."""
        task_id = f"{self.ctx.scratch}-progress-{mode}"
        first = min((t for (task, _), t in self.trace.returned.items() if task == task_id), default=None)
        blind = self.trace.blind.get(mode)
        evidence: dict[str, Any] = {"missed_count": missed, "updates_written_count": written}
        title = f"The {mode} client saw none of the task's {written} state updates"
        if first is None or blind is None or blind <= first:
            return Finding(f"e2e.visibility-{mode}", Cause.E2E, Severity.WARNING, title,
                           detail="The task wrote them but no PROGRESS state reached the client, and the task"
                                  " ended before the client next looked, so no update is known to be late by"
                                  " any number of milliseconds: they were lost (overwritten between two reads"
                                  " or never delivered), not slow. See the backend and broker probes.",
                           evidence={**evidence, "impact_is_lower_bound": False})
        bound_ms = ms(blind - first)
        return delay(f"e2e.visibility-{mode}", Cause.E2E, bound_ms,
                     f"{title}: the first was still not visible {bound_ms:.0f} ms after update_state() returned"
                     " (a lower bound)",
                     detail=(f"The client was still watching {bound_ms:.0f} ms after the first update_state()"
                             " returned and had seen none, so that update took at least this long to become"
                             " visible and each later one at least its own share of it (the impact is that"
                             " lower bound, not a P99). See the backend and broker probes."),
                     evidence={**evidence, "impact_is_lower_bound": True, "watched_after_first_ms": round(bound_ms, 3)},
                     at_least=Severity.WARNING)

    # -- cleanup ------------------------------------------------------------------------------

    def _forget_pings_later(self, task_id: str) -> None:
        """The ping is an ignore_result task, but Celery 5.6 lets the request's ignore_result
        header (False unless given: app.send_task) override the task's, so its worker stores each
        ping's SUCCESS (5.7 sends None, and before 5.6 the task's own flag wins). On a Redis backend
        those keys would outlive us by result_expires: forget them too. Elsewhere they go with
        our scratch table (database) or are never stored (rpc://)."""
        if self.target.backend_scheme in REDIS_SCHEMES:
            self.task_ids.append(task_id)

    def _forget_results(self, client: Any) -> None:
        for task_id in self.task_ids:
            quietly(client.backend.forget, task_id)

    def _delete_queue(self, client: Any) -> None:
        if self.target.broker_scheme == "memory":
            return
        with client.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=self.ctx.limits.timeout_s)
            channel = conn.default_channel
            for queue in client.conf.task_queues:
                bound = queue(channel)
                if conn.transport.driver_type != "amqp":
                    # Virtual transports (Redis) unbind from the channel's own memory of the
                    # bindings; a fresh channel has none until it declares the queue itself.
                    quietly(bound.declare)
                quietly(bound.delete)
                quietly(queue.exchange(channel).delete)


@contextmanager
def running_worker(app: Any, hostname: str, queue: str, target: Target, ctx: ProbeContext) -> Iterator[Any]:
    """A real worker on a thread, consuming only ``queue``; stopped on exit, Ctrl-C included.

    Celery's own embedded test worker (TestWorkController) is what we start, without its
    logging setup and ping task, and with a start timeout so a dead broker cannot hang us.
    Starting and stopping it both end by the probe's deadline, and after Ctrl-C/SIGTERM by the
    signal's bound (interrupt.stop_by), with half of it left for the cleanup stack.
    """
    from celery import _state as celery_state
    from celery.contrib.testing.worker import TestWorkController
    from celery.worker import state

    from celerydiag.compat import HubWaker

    # Starting a worker's pool sets a process-wide flag ("task joins will block") that makes every
    # later AsyncResult.get() in this process raise "Never call result.get() within a task!":
    # restore it on the way out, so the worker leaves nothing behind in the caller's process.
    join_will_block = celery_state.task_join_will_block()
    app.finalize()
    # Celery warns, with a traceback on stderr, when our probe task's own result write fails
    # (e.g. SQLite still locked by a read that Ctrl-C interrupted); the user sees one line only.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="celery.app.trace")
    worker = TestWorkController(
        app=app, concurrency=1, pool="solo", loglevel="ERROR", logfile=None, hostname=hostname,
        ready_callback=None, without_heartbeat=True, without_mingle=True, without_gossip=True,
        queues=[queue])

    def work() -> None:
        # Celery's solo pool looks tasks up on the *current* app, a thread-local: make ours
        # current in the worker thread only, leaving the caller's (and the user's) app alone.
        app.set_current()
        worker.start()

    thread = threading.Thread(target=work, name="celerydiag-e2e-worker", daemon=True)
    thread.start()
    waker: HubWaker | None = None
    try:
        start_s = min(START_TIMEOUT_S, ctx.left())
        if not worker._on_started.wait(start_s) or not thread.is_alive():
            raise TargetUnreachable(f"the e2e worker could not start on broker {redact_url(target.broker_url)} "
                                    f"within {start_s:.0f} s")
        hub = getattr(worker, "hub", None)
        waker = HubWaker(hub) if hub is not None else None  # compat: kombu < 5.7 needs a pipe to wake it
        yield worker
    except BaseException as exc:
        release_interrupted_calls(exc)
        raise
    finally:
        stopping = time.perf_counter()
        state.should_terminate = 0
        if waker is not None:  # AMQP: wake the event loop, or it sleeps until its next timer (~10 s)
            waker.wake()
        # A daemon thread: one stuck in a driver call cannot hold us, so wait only so long.
        thread.join(_stop_wait(ctx))
        if waker is not None and not thread.is_alive():
            waker.close()
        state.should_terminate = None
        celery_state._set_task_join_will_block(join_will_block)
        log.debug("e2e worker stopped in %.2f s", time.perf_counter() - stopping)


def release_interrupted_calls(exc: BaseException) -> None:
    """Let go of what the calls ``exc`` interrupted still hold. The traceback keeps their frames,
    and with them a driver cursor mid-read: on SQLite that cursor holds a shared lock, so the
    worker's next update_state() waits for it (in C, for the busy timeout) and cannot stop, and
    our cleanup waits behind the worker. Clearing the finished frames' locals and collecting
    closes that connection now; the traceback keeps its lines."""
    import gc
    import traceback

    traceback.clear_frames(exc.__traceback__)
    gc.collect()


def _stop_wait(ctx: ProbeContext) -> float:
    """How long to wait for the worker thread to end: WORKER_STOP_S at most, what is left of the
    probe's time (its margin), and after a signal half of what is left of the signal's bound."""
    wait = min(WORKER_STOP_S, max(ctx.left() - 0.25, 0.1))
    signalled = interrupt.stop_by() - time.monotonic()
    if signalled < float("inf"):
        wait = min(wait, max(signalled / 2, 0.05))
    return wait


def _where(target: Target) -> str:
    return f"broker {redact_url(target.broker_url)} and backend {redact_url(target.backend_url)}"


def _visibility_fix(target: Target, mode: str, p99_ms: float, budget_ms: float) -> Fix | None:
    if p99_ms < 0.2 * budget_ms:
        return None
    if target.backend_scheme == "db":
        return Fix("Move the result backend to Redis and stream states with get(on_message=...): the "
                   "database backend is polled and every read is a query (see the backend probe for what "
                   "slows it). result_backend is app-wide: every result moves, not only progress.",
                   "result_backend = 'redis://REDIS-HOST:6379/0'\n",
                   ("https://docs.celeryq.dev/en/stable/userguide/configuration.html#result-backend",))
    return Fix("See the broker, backend and network findings for what adds the delay; the e2e "
               "number is their sum as a client sees it.")

