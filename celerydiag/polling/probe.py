"""The doctor's polling probe: the delay a client's polling adds, from the model (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from celerydiag.errors import describe
from celerydiag.findings import Cause, Finding, Fix, Kind, Severity, delay
from celerydiag.polling.reads import MIN_READS, ClientReads
from celerydiag.probe import Probe, ProbeContext
from celerydiag.rank import GIVEN
from celerydiag.target import Target

DOCS_GET = "https://docs.celeryq.dev/en/stable/reference/celery.result.html#celery.result.AsyncResult.get"
DOCS_DB = "https://docs.celeryq.dev/en/stable/userguide/tasks.html#database-result-backend"
MIN_WINDOW_S = 0.5  # a shorter window counts too few reads to say anything
PROBE_TASKS = 1000  # simulated tasks for the non-closed-form strategies: well under a second
ASSUMED_DURATIONS = "exp:2s"  # only used by backoff/smart/jitter, whose delay depends on the timeline
PUSH_SNIPPET = ("def on_state(meta):  # called for every state the worker writes, PROGRESS included\n"
                "    push_to_browser(meta['status'], meta['result'])\n"
                "result.get(on_message=on_state, propagate=False)")
ONE_READ_SNIPPET = ("meta = result.backend.get_task_meta(result.id)  # one read per poll\n"
                    "state, info = meta['status'], meta.get('result')")


def push_backend(target: Target) -> bool | None:
    """True when the backend's get() is push-based (Redis, RPC: Celery's AsyncBackendMixin), False
    for polling (sync) backends, None when Celery does not know the URL. Loads the class only."""
    from celery.app.backends import by_url
    from celery.backends.asynchronous import AsyncBackendMixin

    try:
        cls, _ = by_url(target.backend_url, getattr(target.app, "loader", None))
    except Exception:  # an unknown scheme: the target module already reports it
        return None
    return issubclass(cls, AsyncBackendMixin)


class PollingProbe(Probe):
    """Polling: how late polling clients see each state and which PROGRESS states they skip (no network).

    Models --poll-interval/--poll-strategy (how your clients poll AsyncResult) with the closed form
    for a fixed interval, or a seeded simulation for backoff/smart/jitter. Without them it measures
    how your clients really poll: the result backend's own read counters (PostgreSQL
    pg_stat_user_tables, MySQL performance_schema or status counters, Redis INFO commandstats)
    twice, --duration seconds apart, read-only, divided by the tasks in flight. With --static, or
    when nothing could be counted, it models Celery's own AsyncResult.get() (polling every 0.5 s
    on the database backend, push on Redis and RPC) at info: an assumption never warns. Creates
    nothing.
    """

    name = "polling"
    cause = Cause.POLLING
    static = True

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        from celerydiag.polling import model as polling

        interval = ctx.options.poll_interval
        spec = ctx.options.poll_strategy
        push = push_backend(ctx.target)
        scheme = ctx.target.backend_scheme or "unknown"
        if spec is not None and str(spec).strip().lower() == "push":
            yield from self._push(ctx, push, scheme)
            return
        if interval is None and spec is None:
            measured = self._measure(ctx)
            if getattr(self, "measure_error", None):
                yield Finding("polling.measured-reads", Cause.POLLING, Severity.INFO,
                              "the clients' reads of task states could not be counted: the poll interval "
                              "below is assumed",
                              detail=f"Reading the {scheme} backend's counters failed: {self.measure_error}.",
                              evidence={"error": self.measure_error})
            if measured is not None:
                yield self._reads_finding(measured, scheme)
                if measured.interval_s is not None:
                    seen = polling.Strategy(polling.StrategyKind.FIXED, measured.interval_s)
                    yield from self._modelled(ctx, seen, scheme, push, assumed=False, measured=measured)
                    return
            if push:
                yield Finding(
                    "polling.client-model", Cause.POLLING, Severity.INFO,
                    f"AsyncResult.get() on the {scheme} backend is push-based; how your web clients poll "
                    "is unknown",
                    detail=("Celery's get() subscribes and is woken by each write (no polling delay). A page "
                            "that polls result.state every T seconds sees each state up to T late and skips "
                            "PROGRESS states shorter than T. Assumption: clients use get(). Pass "
                            "--poll-interval SECONDS (and --poll-strategy) to model your clients."),
                    evidence={"backend": scheme, "get_push_based": True})
                return
            get = polling.Strategy(polling.StrategyKind.FIXED, polling.CELERY_GET_INTERVAL_S)
            yield from self._modelled(ctx, get, scheme, push, assumed=True)
            return
        strategy = polling.parse_strategy(spec or "fixed", float(interval or polling.CELERY_GET_INTERVAL_S),
                                          "--poll-strategy")
        yield from self._modelled(ctx, strategy, scheme, push, assumed=False,
                                  interval_assumed=interval is None, given=interval is not None)
        yield from self._client_reads(scheme)

    def _measure(self, ctx: ProbeContext) -> ClientReads | None:
        """The clients' real reads over a --duration window (not with --static, not on backends
        whose reads we cannot count); None when not measured, a note on stderr's log when it failed."""
        from celerydiag.polling import reads

        if ctx.static or not reads.measurable(ctx.target):
            return None
        window = min(float(ctx.options.duration), max(0.0, ctx.left() - 2 * ctx.limits.timeout_s))
        if window < MIN_WINDOW_S:
            return None
        ctx.doing(f"counting the clients' reads of task states for {window:g} s")
        try:
            return reads.measure(ctx.target, window, ctx.call_timeout())
        except Exception as exc:  # unreadable statistics: the model stands, and says why
            self.measure_error = ctx.target.redact(describe(exc))
            return None

    def _reads_finding(self, seen: ClientReads, scheme: str) -> Finding:
        where = ("the task table" if seen.scope == "table" else "the whole server")
        evidence = seen.evidence()
        if seen.reads <= 0:
            return Finding(
                "polling.measured-reads", Cause.POLLING, Severity.OK,
                f"no client read a task state in {seen.window_s:.1f} s ({seen.source}): no polling delay seen",
                detail=(f"The {scheme} backend's own counters ({seen.source}, {where}) show no read of a task "
                        f"state besides the workers' writes ({seen.writes}) while we watched for "
                        f"{seen.window_s:.1f} s. Clients that poll only now and then (or a page nobody has "
                        "open) are not seen; pass --poll-interval SECONDS to model them."),
                evidence=evidence)
        if seen.reads < MIN_READS:
            return Finding(
                "polling.measured-reads", Cause.POLLING, Severity.INFO,
                f"only {seen.reads} client read(s) of task states in {seen.window_s:.1f} s: too few to tell a "
                "poll interval",
                detail=(f"The {scheme} backend's counters ({seen.source}, {where}) show {seen.reads} read(s) besides "
                        f"the workers' {seen.writes} writes: within the counters' edge error, or a client "
                        f"polling less often than every {seen.window_s / MIN_READS:.1f} s. Pass --poll-interval "
                        "SECONDS to model it, or a longer --duration to measure it."),
                evidence=evidence)
        if seen.interval_s is None:  # reads, but no task in flight: nobody is waiting on a state
            return Finding(
                "polling.measured-reads", Cause.POLLING, Severity.INFO,
                f"{seen.reads_per_s:.1f} reads/s counted but no task was in flight: not polls of a running task",
                detail=(f"{seen.reads} reads in {seen.window_s:.1f} s from the {scheme} backend's counters "
                        f"({seen.source}, {where}), the workers' {seen.writes} writes subtracted; with no task "
                        "in a non-final state they are reads of finished tasks, of tasks not stored yet "
                        "(PENDING has no row), or other applications' queries."),
                evidence=evidence)
        interval = seen.interval_s
        lower = (" (a lower bound: tasks in flight could not be counted, so the reads are counted for one)"
                 if seen.in_flight is None else "")
        server = (" Server-wide counters also count other applications' reads, so the interval is a lower bound"
                  + ("" if seen.attributable else " and the delay below is only a model (at most info)") + "."
                  if seen.scope == "server" else "")
        return Finding(
            "polling.measured-reads", Cause.POLLING, Severity.INFO,
            f"clients read task states {seen.reads_per_s:.1f} times/s over {seen.tasks} task"
            f"{'' if seen.tasks == 1 else 's'} in flight: each polled about every "
            f"{interval * 1000:.0f} ms{lower}",
            detail=(f"{seen.reads} reads in {seen.window_s:.1f} s from the {scheme} backend's counters "
                    f"({seen.source}, {where}), the workers' {seen.writes} state writes and our own "
                    f"{seen.own_reads} reads subtracted, over {seen.tasks} task(s) not yet final." + server
                    + (" A task left in a non-final state by a dead worker counts as in flight and stretches "
                       "this interval: if every read was of one task, it was polled every "
                       f"{seen.window_s / seen.reads * 1000:.0f} ms." if seen.tasks > 1 else "")),
            evidence=evidence)

    def _modelled(self, ctx: ProbeContext, strategy: Any, scheme: str, push: bool | None, *, assumed: bool,
                  interval_assumed: bool = False, given: bool = False,
                  measured: ClientReads | None = None) -> Iterator[Finding]:
        from celerydiag.polling import model as polling

        scenario = polling.Scenario(durations=polling.parse_durations(ASSUMED_DURATIONS), states=10,
                                    threshold_s=ctx.budget_ms / 1000, tasks=PROBE_TASKS)
        result = polling.simulate(strategy, scenario)
        ms = {k: round(v.value * 1000, 3) for k, v in result.delay_s.items()}
        miss_1s = (polling.fixed_p_miss(strategy.interval_s, 1.0) if strategy.kind == "fixed"
                   else polling.simulate(strategy, polling.Scenario(
                       polling.fixed_durations(1.0), states=10, tasks=PROBE_TASKS)).p_miss.value)
        evidence: dict[str, Any] = {
            "strategy": strategy.name, "method": result.method,
            "mean_ms": ms["mean"], "p50_ms": ms["p50"], "p95_ms": ms["p95"], "p99_ms": ms["p99"],
            "miss_1s_state_ratio": round(miss_1s, 4),
            "reads_per_task_count": round(result.requests_per_task.value, 2),
        }
        if strategy.kind != "fixed":
            evidence["assumed_state_durations"] = ASSUMED_DURATIONS
        if given:
            evidence["input"] = GIVEN  # the user's --poll-interval: rank may rate it above info
        if measured is not None:
            evidence["measured"] = measured.evidence()
        who = ("AsyncResult.get() (Celery's default, interval=0.5)" if assumed
               else f"clients polling every {polling.fmt_s(strategy.interval_s)} (measured)"
               if measured and measured.attributable
               else f"clients polling every {polling.fmt_s(strategy.interval_s)} or less (server-wide count)"
               if measured
               else f"clients polling {strategy.name}")
        assumption = ("Assumption: clients wait with result.get() and its default interval of 0.5 s; if a "
                      "web page polls result.state instead, pass --poll-interval SECONDS. " if assumed else "")
        if interval_assumed:
            assumption += "Assumption: no --poll-interval given, so 0.5 s (Celery's get() default) was used. "
        if measured is not None:
            assumption = (f"Measured: the backend counted {measured.reads} client reads in "
                          f"{measured.window_s:.1f} s over {measured.tasks} task(s) in flight "
                          "(polling.measured-reads), one poll per task every "
                          f"{polling.fmt_s(strategy.interval_s)}. ")
        elif assumed and getattr(self, "measure_error", None):
            assumption += f"The clients' reads could not be counted: {self.measure_error}. "
        detail = (f"{assumption}A state written by the worker is seen by {who} after the next poll: mean "
                  f"{polling.fmt_s(ms['mean'] / 1000)}, P99 {polling.fmt_s(ms['p99'] / 1000)} "
                  f"({'closed form' if result.method == 'closed-form' else 'simulated'}). A PROGRESS state "
                  f"lasting 1 s is never seen with probability {miss_1s:.0%}. "
                  "`celerydiag poll-model` shows the full trade-off.")
        yield delay("polling.detection-delay", Cause.POLLING, ms["p99"],
                    f"states reach {who} up to {polling.fmt_s(ms['p99'] / 1000)} late (P99)",
                    kind=Kind.MEASURED if measured is not None and measured.attributable else Kind.MODELLED,
                    detail=detail, evidence=evidence,
                    fix=self._fix(ctx, strategy, scheme, push))

    def _fix(self, ctx: ProbeContext, strategy: Any, scheme: str, push: bool | None) -> Fix:
        from celerydiag.polling.model import fmt_s

        # The longest fixed interval whose P99 (0.99 T) stays under the warning line (20 % of budget).
        target_s = max(0.2 * ctx.budget_ms / 1000 / 0.99, 0.001)
        if push:
            return Fix(f"Stop polling: on the {scheme} backend result.get(on_message=cb, propagate=False) "
                       "calls cb for every state the worker writes (code in polling.client-reads); or poll "
                       f"every {fmt_s(target_s)} or less.", docs=(DOCS_GET,))
        return Fix(f"Poll every {fmt_s(target_s)} or less (result.get(interval={round(target_s, 3)})); each "
                   f"read costs the {scheme} backend a query (a new connection in non-forked processes). "
                   "For push-based get() with no polling delay, use a Redis result backend:",
                   config='result_backend = "redis://localhost:6379/0"  # your Redis; get() is then push-based\n',
                   docs=(DOCS_GET, DOCS_DB))

    def _push(self, ctx: ProbeContext, push: bool | None, scheme: str) -> Iterator[Finding]:
        from celerydiag.polling import model as polling

        if push:
            yield Finding("polling.detection-delay", Cause.POLLING, Severity.OK,
                          f"clients are pushed every state (get(on_message=...) on {scheme}): no polling delay",
                          evidence={"strategy": "push", "p99_ms": 0.0})
            return
        p99_ms = polling.fixed_delay_quantile_s(polling.CELERY_GET_INTERVAL_S, 0.99) * 1000
        yield delay(
            "polling.detection-delay", Cause.POLLING, p99_ms,
            f"push is not available on the {scheme} backend: get() polls every 0.5 s",
            kind=Kind.MODELLED,
            detail=(f"--poll-strategy push needs a Redis or RPC result backend; on {scheme} Celery rejects "
                    "get(on_message=...) (ImproperlyConfigured: Backend does not support on_message callback) "
                    f"and get() polls every 0.5 s, so states are up to {polling.fmt_s(p99_ms / 1000)} late "
                    "(P99)."),
            evidence={"strategy": "push", "p99_ms": p99_ms, "get_interval_s": polling.CELERY_GET_INTERVAL_S,
                      "input": GIVEN},
            fix=Fix("Use a Redis result backend for push-based get(on_message=...):",
                    config='result_backend = "redis://localhost:6379/0"  # your Redis\n', docs=(DOCS_GET,)))

    def _client_reads(self, scheme: str) -> Iterator[Finding]:
        """What every poller of .state should know (celery-facts B), stated once, at info."""
        if scheme == "rpc":
            yield Finding(
                "polling.rpc-other-process", Cause.POLLING, Severity.WARNING,
                "with rpc:// results only the process that sent the task sees its states",
                detail=("The RPC backend delivers states to the sender's reply queue; a web process polling "
                        "result.state for a task another process sent sees PENDING until it expires. Poll "
                        "from the sending process, or use a Redis result backend."),
                fix=Fix("Use a result backend every process can read:",
                        config='result_backend = "redis://localhost:6379/0"  # your Redis\n', docs=(DOCS_GET,)))
        cost = (" On the database backend each read is also a new connection in processes that were not "
                "forked by a worker (web servers)." if scheme == "db" else "")
        yield Finding(
            "polling.client-reads", Cause.POLLING, Severity.INFO,
            "each .state/.info access is a separate backend read: read the meta once per poll",
            detail=("AsyncResult caches only finished states, so result.state followed by result.info makes two "
                    "reads that can straddle a write (PROGRESS with the SUCCESS payload, or the reverse)." + cost
                    + " Per poll, read once:\n" + ONE_READ_SNIPPET + "\nOr, on Redis/RPC, stream states with no "
                    "polling:\n" + PUSH_SNIPPET),
            fix=Fix("Read the task meta once per poll (client code in the detail), or stream with "
                    "get(on_message=...) on Redis/RPC.", docs=(DOCS_GET,)))
