"""`celerydiag watch`: the state-latency SLI, live in the terminal, as JSON lines, in Prometheus."""

from __future__ import annotations

import sys
from typing import Any

import click

from celerydiag.cli import FiniteRange, target_options
from celerydiag.errors import ExitCode, InputError, carrying

EPILOG = """\b
Examples:
  celerydiag watch                                     # embedded default: see it work, no services
  celerydiag watch -A proj.celery:app --prometheus 127.0.0.1:9808
  celerydiag watch --broker amqp://guest:guest@127.0.0.1:5672// --backend redis://127.0.0.1:6379/0
  celerydiag watch -A proj --format json | jq -c '{round, visibility_ms}'

\b
Load on your services, per interval (default 10 s): the canary sends at most 16 small task
messages to a queue of its own (1 warm-up, up to 13 dispatch pings in a quarter second, 1 task
per client mode) and writes result states: each progress task writes until its client has seen
--updates states (at most 3 x --updates), plus its result and the forget of the last round's
(typically 2 x (--updates + 2) writes); the client reads them every 2 ms while the task runs
(well under a second on a healthy backend). The passive readers add one confirmed unrouted
publish on RabbitMQ (is it blocked?), one passive declare per app queue (one LLEN pipeline on
Redis), a ping each, and one read-only counter query on the backend. With the defaults: under
2 messages and 2 result writes per second on average, 3.4 at most.

\b
Exit codes: 0 stopped after --count intervals, 2 bad usage (a bad option, a --prometheus
address that cannot listen), 130 Ctrl-C and 143 SIGTERM (after removing the canary's queue,
keys and table), 141 stdout closed (`| head`). A broken broker or backend does not stop it:
it shows in the view and the metrics.
"""


def _listen(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    from celerydiag.watch.metrics import parse_listen

    if value is None:
        return None
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("watch", epilog=EPILOG)
@target_options
@click.option("--interval", type=FiniteRange(min=0.5, max=3600), default=10.0, show_default=True,
              help="Seconds between measurements.")
@click.option("--timeout", type=FiniteRange(min=0.1, max=300), default=5.0, show_default=True,
              help="Seconds to wait for any single network call; a whole canary round is cut at 3 x this "
                   "+ 3 s.")
@click.option("--updates", type=click.IntRange(min=1, max=50), default=5, show_default=True,
              help="update_state() calls per client mode per interval (the visibility samples).")
@click.option("--prometheus", "listen", metavar="HOST:PORT", callback=_listen,
              help="Serve /metrics for Prometheus here, e.g. 127.0.0.1:9808 (a bare :PORT binds "
                   "loopback). Bind 0.0.0.0 only on a network you trust: the metrics have no auth.")
@click.option("--rabbitmq-api", metavar="URL",
              help="RabbitMQ management API, e.g. http://guest:guest@host:15672: adds its alarms "
                   "and blocked connections to the broker-blocked signal.")
@click.option("--events", is_flag=True,
              help="Also listen to the app's task events and record real tasks' queue wait "
                   "(task-sent -> task-started; needs workers with -E and task_send_sent_event).")
@click.option("-f", "--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True,
              help="text: a live table on a terminal (a line per interval elsewhere); json: one JSON "
                   "object per line.")
@click.option("--count", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop after this many intervals (0: run until Ctrl-C or SIGTERM).")
@click.option("--no-color", is_flag=True, envvar="NO_COLOR", help="Plain text even on a terminal.")
def command(app: str | None, broker: str | None, backend: str | None, interval: float, timeout: float,
            updates: int, listen: tuple[str, int] | None, rabbitmq_api: str | None, events: bool,
            fmt: str, count: int, no_color: bool) -> ExitCode:
    """Measure state visibility and its causes continuously, until stopped.

    Every --interval: a canary task on a queue of its own calls update_state() and a client
    times how late it sees each state (polling, and on_message where the backend pushes), plus
    dispatch latency; passively, the backlog of the app's queues, whether the broker blocks
    publishers, the backend's write rate from its own counters, and the RTT to broker and backend.
    Faults (broker blocked or down, backend unreachable, a hung peer) show in the view and the
    metrics and clear by themselves. Ctrl-C/SIGTERM remove the canary's queue, keys and table,
    then exit 130/143.
    """
    from celerydiag.cli.doctor import bounded_target
    from celerydiag.target import resolve_target
    from celerydiag.watch.loop import WatchOptions, run

    target = bounded_target(app, broker, backend, timeout) or resolve_target()
    options = WatchOptions(interval_s=interval, timeout_s=timeout, updates=updates, count=count,
                           rabbitmq_api=rabbitmq_api, events=events)
    from celerydiag.emit import StdoutClosed, StdoutFailed, silence_stdout

    with carrying(target.secrets() + _api_secrets(rabbitmq_api)):
        sinks, closers = _sinks(target, fmt, no_color, listen, updates)
        try:
            run(target, options, sinks, say=lambda line: click.echo(f"celerydiag watch: {line}", err=True))
        except StdoutClosed:  # `watch --format json | head -1`: the canary is cleaned up by run's finally
            silence_stdout()
            click.echo("celerydiag watch: stdout closed; stopped", err=True)
            return ExitCode.STDOUT_CLOSED
        except StdoutFailed as exc:
            silence_stdout()
            raise InputError(f"cannot write to stdout: {exc}", "free space or point stdout elsewhere") from None
        finally:
            for close in closers:
                close()
            if target.scratch_dir:  # the embedded default's SQLite file, as doctor does
                import shutil

                shutil.rmtree(target.scratch_dir, ignore_errors=True)
    return ExitCode.OK


def _api_secrets(api: str | None) -> tuple[str, ...]:
    from celerydiag.target import passwords_of

    return tuple(passwords_of(api)) if api else ()


def _sinks(target: Any, fmt: str, no_color: bool, listen: tuple[str, int] | None,
           updates: int) -> tuple[list[Any], list[Any]]:
    from rich.console import Console

    from celerydiag.watch import view
    from celerydiag.watch.canary import Canary
    from celerydiag.watch.metrics import Metrics, is_loopback, serve

    sinks: list[Any] = []
    closers: list[Any] = []
    def say(line: str) -> None:
        click.echo(f"celerydiag watch: {line}", err=True)

    say(f"measuring {target.describe()}")
    if listen is not None:
        metrics = Metrics(Canary(target, 1.0, updates).modes, target.broker_scheme, target.backend_scheme)
        host, port = listen
        try:
            server, port = serve(metrics, host, port)
        except OSError as exc:
            raise InputError(f"--prometheus {host}:{port}: cannot listen there ({exc.strerror or exc})",
                             "pick a free port, e.g. --prometheus 127.0.0.1:9808") from None
        closers.append(server.shutdown)
        where = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"
        scope = ("loopback only" if is_loopback(host) else
                 "NOT loopback: anyone who can reach this address can read the metrics")
        say(f"serving Prometheus metrics on {where} ({scope})")
        sinks.append(metrics.observe)
    from celerydiag.emit import GuardedStdout

    stdout: Any = GuardedStdout(sys.stdout)  # a closed pipe -> StdoutClosed -> exit 141, as every command
    if fmt == "json":
        sinks.append(view.line_writer(stdout, view.json_line))
    elif sys.stdout.isatty():
        live = view.LiveView(Console(no_color=no_color), f"celerydiag watch: {target.describe()}")
        sinks.append(live)
        closers.insert(0, live.close)
    else:
        sinks.append(view.line_writer(stdout, view.plain_line))
    return sinks, closers
