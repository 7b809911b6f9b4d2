"""`celerydiag poll-model`: what a client's polling costs in delay, missed states and backend load.

Thin: parse options into a Scenario and Strategies, call :func:`celerydiag.polling.model.model`, print
the trade-off table (or JSON), the CDF chart, the recommendation. Needs no service.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import click

from celerydiag.cli import FiniteRange, document_options, named_target, target_options
from celerydiag.emit import check_writable, open_output, writing
from celerydiag.errors import ExitCode, InputError, carrying
from celerydiag.polling import observe as watch
from celerydiag.render import OutputFormat
from celerydiag.render.charts import require

EPILOG = """\b
Examples:
  celerydiag poll-model --interval 5s --strategy fixed --threshold 135ms --durations exp:2s
  celerydiag poll-model --interval 2s --strategy fixed --strategy smart --strategy push --clients 500
  celerydiag poll-model --durations observed.txt --target-delay 1s --request-budget 200 --plot cdf.png
  celerydiag poll-model --format json | jq '.strategies[] | {name, p99: .delay_ms.p99}'
  celerydiag poll-model --from-backend 6f1c0b3e-... --backend redis://127.0.0.1:6379/0 --interval 1s

\b
Strategies (several --strategy allowed; default: all five at --interval):
  fixed[:T]                      a poll every T
  jitter[:T[,SPREAD]]            intervals uniform in T*(1 +- SPREAD), default 20%
  backoff[:START[,FACTOR[,CAP]]] START (0.5s), then x FACTOR (2) per poll up to CAP (--interval)
  smart[:START]                  the copied "smart poll": next interval x0.8 when the poll saw the
                                 task in progress, x1.5 when it saw PENDING, clamped to 200ms-5s
  push                           AsyncResult.get(on_message=cb) on a Redis/RPC backend (no polling)

\b
The model: the task waits --queue-wait (PENDING), then goes through --states PROGRESS states
each lasting a --durations draw, then SUCCESS. Delay = time from a state write to the first poll
after it (+ --read-latency). A PROGRESS state no poll falls into is missed. Fixed intervals use
the closed form (delay uniform in 0..T); the others a seeded Monte-Carlo with 95% intervals.

\b
--from-backend TASK_ID watches one of your tasks on your result backend (--app, --backend or
CELERY_RESULT_BACKEND), read-only: a read every --watch-interval (Redis: Celery's get_task_meta,
one GET; database: one SELECT on a read-only session), until the task is SUCCESS/FAILURE/REVOKED
or --watch-seconds pass. Start it before or while the task runs. Each state that began and ended
while watched gives one duration (exact to about one --watch-interval); they replace --durations,
their count replaces --states and the measured read time replaces --read-latency, unless you
pass those. With no complete state (the task stayed PENDING: unknown id, expired result, still
queued) it says so and models --durations instead; the exit code is still 0. Writes nothing.
"""


def _seconds(what: str, interval: bool = False) -> Any:
    def convert(ctx: click.Context, param: click.Parameter, value: Any) -> float | None:
        from celerydiag.polling.model import check_interval, parse_seconds

        if value is None:
            return None
        seconds = parse_seconds(value, what)
        if interval:
            return check_interval(seconds, what)
        if seconds > 86400:
            raise InputError(f"{what}: expected at most 1 day, got {value!r}")
        return seconds

    return convert


def _durations(what: str) -> Any:
    def convert(ctx: click.Context, param: click.Parameter, value: str) -> Any:
        from celerydiag.polling.model import parse_durations

        return parse_durations(value, what)

    return convert


WATCH_BOUNDS = (watch.MIN_WATCH_S, watch.MAX_WATCH_S)
INTERVAL_BOUNDS = (watch.MIN_INTERVAL_S, watch.MAX_INTERVAL_S)


def _bounded(what: str, bounds: tuple[float, float]) -> Any:
    def convert(ctx: click.Context, param: click.Parameter, value: str) -> float:
        from celerydiag.polling.model import fmt_s, parse_seconds

        seconds = parse_seconds(value, what)
        if not bounds[0] <= seconds <= bounds[1]:
            raise InputError(f"{what}: expected {fmt_s(bounds[0])} to {fmt_s(bounds[1])}, got {value!r}")
        return seconds

    return convert


@click.command("poll-model", epilog=EPILOG)
@click.option("--interval", default="5s", show_default=True, metavar="DURATION",
              callback=_seconds("--interval", interval=True),
              help="Poll interval T (fixed, jitter), backoff's cap and smart's start: 5s, 500ms, 0.2.")
@click.option("-s", "--strategy", "strategies", multiple=True, metavar="SPEC",
              help="A polling strategy (repeatable); see the list below. Default: all five.")
@click.option("--threshold", default="1s", show_default=True, metavar="DURATION",
              callback=_seconds("--threshold"),
              help="Report P(delay > threshold): how often a state shows up later than this.")
@click.option("--durations", default="exp:2s", show_default=True, metavar="SPEC",
              callback=_durations("--durations"),
              help="How long each PROGRESS state lasts: exp:MEAN, fixed:D, or a file of observed "
                   "durations (one per line, seconds; file:PATH or just PATH).")
@click.option("--states", default=10, show_default=True, type=click.IntRange(1, 10_000),
              help="PROGRESS states per task before SUCCESS.")
@click.option("--queue-wait", default="fixed:0s", show_default=True, metavar="SPEC",
              callback=_durations("--queue-wait"),
              help="Time a task waits PENDING before its first state, same forms as --durations.")
@click.option("--read-latency", default="0ms", show_default=True, metavar="DURATION",
              callback=_seconds("--read-latency"),
              help="Time one read of the state takes (added to every delay).")
@click.option("--clients", default=100, show_default=True, type=click.IntRange(1, 10_000_000),
              help="Concurrent clients each watching a task: sets the backend load column (req/s).")
@click.option("--target-delay", default="1s", show_default=True, metavar="DURATION",
              callback=_seconds("--target-delay"),
              help="P99 delay you want; the recommendation picks the cheapest way to meet it.")
@click.option("--request-budget", type=FiniteRange(min=0, min_open=True), metavar="REQ/S",
              help="Backend reads per second all --clients together may cost (default: no limit).")
@click.option("--tasks", default=4000, show_default=True, type=click.IntRange(100, 200_000),
              help="Tasks to simulate per strategy (fewer when intervals are tiny, to bound run time).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed: same seed, same numbers.")
@click.option("--explain-claim", is_flag=True,
              help="Explain the '5 s polling = 97.3% chance of missing SUCCESS' claim (automatic at "
                   "--interval 5s).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), metavar="FILE.png",
              help="Also write a PNG of the delay CDF per strategy (needs `pip install 'celerydiag[html]'`).")
@click.option("--from-backend", "task_id", metavar="TASK_ID",
              help="Measure --durations, --states and --read-latency by watching this task on your "
                   "result backend (read-only; see below).")
@click.option("--watch-seconds", default="60s", show_default=True, metavar="DURATION",
              callback=_bounded("--watch-seconds", WATCH_BOUNDS),
              help="With --from-backend: stop watching after this long if the task is not finished "
                   "(100ms-1h).")
@click.option("--watch-interval", default="20ms", show_default=True, metavar="DURATION",
              callback=_bounded("--watch-interval", INTERVAL_BOUNDS),
              help="With --from-backend: one backend read per this interval (5ms-5s; 20ms = 50 reads/s).")
@target_options
@document_options("table + chart", html=True)
def command(interval: float, strategies: tuple[str, ...], threshold: float, durations: Any, states: int,
            queue_wait: Any, read_latency: float, clients: int, target_delay: float,
            request_budget: float | None, tasks: int, seed: int, explain_claim: bool,
            plot_path: str | None, task_id: str | None, watch_seconds: float, watch_interval: float,
            app: str | None, broker: str | None, backend: str | None,
            fmt: OutputFormat, output: str | None, no_color: bool) -> ExitCode:
    """Model what polling AsyncResult costs: delay, missed PROGRESS states, backend load.

    Prints per strategy the detection delay (mean, P50, P95, P99), P(delay > --threshold), the
    chance a PROGRESS state is never seen, reads per task and req/s for --clients, a chart of the
    delay CDF, and the cheapest strategy that meets --target-delay within --request-budget.
    Needs no service, except with --from-backend TASK_ID, which measures the state durations on
    your result backend first. Exit codes: 0 done, 2 bad input (or an unwritable --output, before
    any work), 3 backend unreachable, 130 Ctrl-C, 143 SIGTERM, 141 stdout closed early (`| head`).
    """
    from celerydiag.polling import model as polling

    with open_output(output, fmt, no_color) as out:  # an unwritable --output fails before the watch
        if plot_path:
            check_writable(plot_path, "--plot")  # so does an unwritable --plot
            require("--plot")  # and a missing matplotlib, with the line that installs it
        observed = None
        if task_id:
            observed = _watch(task_id, app, broker, backend, watch_seconds, watch_interval, fmt)
            if observed.durations_s:
                given = click.get_current_context().get_parameter_source
                durations = _observed_durations(observed)
                if given("states") == click.core.ParameterSource.DEFAULT:
                    states = max(1, observed.progress_states)
                if given("read_latency") == click.core.ParameterSource.DEFAULT:
                    read_latency = observed.read.p50_ms / 1000
        elif app or broker or backend:
            raise InputError("--app/--broker/--backend only choose where --from-backend TASK_ID reads",
                             "add --from-backend TASK_ID, or drop them (the model alone needs no service)")

        chosen = [polling.parse_strategy(s, interval) for s in (strategies or polling.KINDS)]
        scenario = polling.Scenario(durations=durations, states=states, queue_wait=queue_wait,
                                    latency_s=read_latency, threshold_s=threshold, tasks=tasks, seed=seed)
        results = _run(chosen, scenario)
        recommendation = polling.recommend(results, target_delay, request_budget, clients, read_latency)
        claim_t = _claim_interval(chosen, interval, explain_claim)
        claim = polling.explain_claim(claim_t, read_latency) if claim_t else None
        if plot_path:
            _write_plot(plot_path, results)
        doc = polling.document(results, scenario, clients, recommendation, claim)
        if observed is not None:
            doc["observed"] = dict(observed.to_dict(), used=bool(observed.durations_s))
        summary = f"celerydiag: {len(results)} strategies modelled; {_summary(recommendation)}"
        return out.emit(lambda stream, color: _render(doc, results, fmt, stream, color), summary, ExitCode.OK)


def _summary(recommendation: Any) -> str:
    if recommendation.strategy is None:
        return "no strategy meets --target-delay within --request-budget"
    return f"recommended: {recommendation.strategy}"


def _watch(task_id: str, app: str | None, broker: str | None, backend: str | None, limit_s: float,
           interval_s: float, fmt: str) -> Any:
    """Watch the task read-only with a bar on stderr; the engine is celerydiag.polling.observe."""
    import os
    from contextlib import ExitStack

    from celerydiag.access.reach import check_backend
    from celerydiag.errors import describe
    from celerydiag.target import redact_url
    from celerydiag.ui import make_progress

    if not (app or backend or os.environ.get("CELERY_RESULT_BACKEND")):
        raise InputError("--from-backend needs the result backend the task writes to",
                         "pass --backend redis://host:6379/0 (or db+postgresql://…), or --app proj.celery:app")
    target = named_target(app, broker, backend)
    with carrying(target.secrets()), ExitStack() as cleanup:  # error lines scrubbed of its passwords
        reader = watch.open_reader(target, task_id, cleanup)  # bad input (rpc://, disabled) before I/O
        check_backend(target, watch.READ_TIMEOUT_S)
        progress = make_progress(enabled=fmt == "text", prefix="")
        cleanup.callback(progress.close)
        progress.start(f"watching task {task_id}", total=round(limit_s, 1))
        done = [0.0]

        def tick(elapsed: float, status: str, changes: int) -> None:
            progress.step(max(0.0, min(elapsed, limit_s) - done[0]), f"{status}, {changes} change(s); seconds")
            done[0] = max(done[0], min(elapsed, limit_s))

        return watch.watch(reader, task_id, redact_url(target.backend_url), interval_s=interval_s,
                           limit_s=limit_s, on_read=tick, describe_error=lambda e: target.redact(describe(e)))


def _observed_durations(observed: Any) -> Any:
    from celerydiag.polling.model import Durations

    values = tuple(observed.durations_s)
    return Durations("file", sum(values) / len(values), values,
                     label=f"measured on task {observed.task_id} ({len(values)} values)")


def _run(strategies: list[Any], scenario: Any) -> list[Any]:
    """Simulate, with a spinner on stderr when it is a terminal (large --tasks take seconds)."""
    from celerydiag.polling import model as polling

    if not sys.stderr.isatty():
        return polling.model(strategies, scenario)
    from rich.console import Console

    with Console(stderr=True).status("modelling") as status:
        return polling.model(strategies, scenario,
                             on_strategy=lambda s: status.update(f"modelling {s.name}"))


def _claim_interval(strategies: list[Any], interval: float, asked: bool) -> float | None:
    from celerydiag.polling.model import CLAIM_INTERVAL_S, StrategyKind

    fixed_like = [s.interval_s for s in strategies if s.kind in (StrategyKind.FIXED, StrategyKind.JITTER)]
    # Only when a fixed-interval strategy really polls every 5 s (its T defaults to --interval).
    if any(abs(t - CLAIM_INTERVAL_S) < 1e-9 for t in fixed_like):
        return CLAIM_INTERVAL_S
    return (fixed_like[0] if fixed_like else interval) if asked else None


def _curves(results: list[Any]) -> list[tuple[str, list[tuple[float, float]]]]:
    return [(r.strategy.name, [(x * 1000, p) for x, p in r.cdf]) for r in results]


def _x_max_ms(results: list[Any]) -> float:
    from celerydiag.render.terminal import nice_max

    return nice_max(max(r.p99_s for r in results) * 1000 * 1.05)


def _write_plot(path: str, results: list[Any]) -> None:
    from celerydiag.render.charts import cdf_png

    with writing("--plot", path), open(path, "wb") as stream:
        stream.write(cdf_png(_curves(results), x_max_ms=_x_max_ms(results)))
    click.echo(f"celerydiag: wrote the delay CDF to {path}", err=True)


def _ms(value: float) -> str:
    from celerydiag.polling.model import fmt_s

    return fmt_s(value / 1000)


def _render(doc: dict[str, Any], results: list[Any], fmt: str, stream: TextIO, color: bool) -> None:
    if fmt == "json":
        json.dump(doc, stream, indent=2, ensure_ascii=False, allow_nan=False)
        stream.write("\n")
        return
    if fmt == "html":
        _render_html(doc, results, stream)
        return
    from rich.console import Console
    from rich.table import Table

    from celerydiag.render.terminal import terminal_chart

    console = Console(file=stream, force_terminal=color, no_color=not color, width=120, highlight=False,
                      soft_wrap=True)
    inputs = doc["inputs"]
    console.print(f"Verdict: {doc['recommendation']['text']}")  # the answer first (issue 15)
    if doc.get("observed"):
        _render_observed(console, doc["observed"], inputs)
    console.print(f"Polling model: {inputs['states_count']} PROGRESS states per task, each {inputs['durations']}"
                  f", queue wait {inputs['queue_wait']}, read latency {_ms(inputs['read_latency_ms'])}, "
                  f"{inputs['clients_count']} clients")
    table = Table(title="Trade-off per strategy (delay = state write -> client sees it)")
    for name, justify in (("strategy", "left"), ("mean", "right"), ("p50", "right"), ("p95", "right"),
                          ("p99", "right"), (f"P(>{_ms(inputs['threshold_ms'])})", "right"),
                          ("P(miss)", "right"), ("reads/task", "right"), ("req/s", "right"),
                          ("how", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in doc["strategies"]:
        d = s["delay_ms"]
        method = "exact" if s["method"] == "closed-form" else "MC"
        table.add_row(s["name"], _ms(d["mean"]), _ms(d["p50"]), _ms(d["p95"]), _ms(d["p99"]),
                      _pct(s["p_delay_over_threshold"]), _pct(s["p_miss_transient"]),
                      f"{s['requests_per_task']:.4g}", f"{s['backend_requests_per_s']:.4g}", method)
    console.print(table)
    console.print("P(miss) = chance a PROGRESS state is never seen; req/s = backend reads for all clients; "
                  "how = exact (closed form) or MC (seeded Monte-Carlo; 95% intervals below and in --format json)")
    console.print(terminal_chart(_curves(results), x_max_ms=_x_max_ms(results)))
    mc = [s for s in doc["strategies"] if s["method"] == "monte-carlo"]
    if mc:
        console.print("95% intervals (Monte-Carlo): " + "; ".join(
            f"{s['name']} p99 {_ms(s['ci95']['delay_ms']['p99'][0])}-{_ms(s['ci95']['delay_ms']['p99'][1])}, "
            f"miss {_pct(s['ci95']['p_miss_transient'][0])}-{_pct(s['ci95']['p_miss_transient'][1])}"
            for s in mc))
    if doc["claim"]:
        console.print(f"\nThe '97.3 %' claim: {doc['claim']['text']}")
    console.print(f"\nRecommendation (P99 <= target delay): {doc['recommendation']['text']}")


def _render_html(doc: dict[str, Any], results: list[Any], stream: TextIO) -> None:
    """One self-contained page: the recommendation first, the delay CDF, the trade-off table."""
    from html import escape

    from celerydiag.render import charts, html

    inputs = doc["inputs"]
    rows = []
    for s in doc["strategies"]:
        d = s["delay_ms"]
        rows.append([escape(s["name"]), _ms(d["mean"]), _ms(d["p50"]), _ms(d["p95"]), _ms(d["p99"]),
                     _pct(s["p_delay_over_threshold"]), _pct(s["p_miss_transient"]),
                     f"{s['requests_per_task']:.4g}", f"{s['backend_requests_per_s']:.4g}",
                     "exact" if s["method"] == "closed-form" else "MC"])
    headers = ["strategy", "mean", "p50", "p95", "p99", f"P(&gt;{_ms(inputs['threshold_ms'])})", "P(miss)",
               "reads/task", "req/s", "how"]
    body = ["<h1>celerydiag poll-model</h1>",
            f'<div class="verdict">Recommendation (P99 &le; target delay): {escape(doc["recommendation"]["text"])}'
            "</div>",
            f'<p class="meta">{inputs["states_count"]} PROGRESS states per task, each '
            f"{escape(str(inputs['durations']))}, queue wait {escape(str(inputs['queue_wait']))}, "
            f"read latency {_ms(inputs['read_latency_ms'])}, "
            f"{inputs['clients_count']} clients</p>",
            html.figure(charts.poll_cdf(_curves(results), _x_max_ms(results))),
            "<h2>Trade-off per strategy</h2>", html.table(headers, rows, numeric=range(1, 9)),
            "<p class=\"dim\">P(miss) = chance a PROGRESS state is never seen; req/s = backend reads for all "
            "clients; how = exact (closed form) or MC (seeded Monte-Carlo).</p>"]
    if doc["claim"]:
        body.append(f"<h2>The '97.3 %' claim</h2><p>{escape(doc['claim']['text'])}</p>")
    stream.write(html.page("celerydiag poll-model", "".join(body)))


def _render_observed(console: Any, observed: dict[str, Any], inputs: dict[str, Any]) -> None:
    """What the watch saw: each state and how long it lasted, the read cost, what the model uses."""
    read = observed["read_ms"] or {}
    console.print(f"Watched task {observed['task_id']} on {observed['backend']} for {observed['elapsed_s']:.3g}s, "
                  f"a read every {_ms(observed['interval_ms'])}: {observed['reads_count']} reads, "
                  f"{observed['transitions_count']} state change(s), final state {observed['final_status']}")
    if read:
        console.print(f"Read cost per poll: p50 {_ms(read['p50_ms'])}, p95 {_ms(read['p95_ms'])}, "
                      f"max {_ms(read['max_ms'])}")
    for state in observed["states"]:
        if state["duration_s"] is not None:
            lasted = _ms(state["duration_s"] * 1000)
        elif state["start_s"] is None and observed["transitions_count"]:
            lasted = f"already current when the watch began, until {_ms(state['end_s'] * 1000)}"
        elif state["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
            lasted = "final"
        else:
            lasted = "still current when the watch ended"
        console.print(f"  {state['status']:<12} {lasted}")
    if observed["used"]:
        durations = observed["durations_s"]
        console.print(f"Model input: {len(durations)} measured durations (mean {_ms(inputs['mean_duration_s'] * 1000)}"
                      f"), {inputs['states_count']} states per task, read latency {_ms(inputs['read_latency_ms'])} "
                      "(options you passed win)\n")
    else:
        console.print(f"Note: {observed['note']}; modelling --durations {inputs['durations']} instead.\n")


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"
