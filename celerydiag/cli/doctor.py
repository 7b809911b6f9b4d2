"""`celerydiag doctor`: run every probe that applies to the target, rank, print the fixes."""

from __future__ import annotations

from typing import Any

import click

from celerydiag.cli import FiniteRange, ProbesCrashed, named_target, output_options, target_options
from celerydiag.cli.reads import name_readers, refuse_unread
from celerydiag.emit import emit_report, open_output
from celerydiag.errors import ExitCode, carrying
from celerydiag.render import OutputFormat

EPILOG = """\b
Examples:
  celerydiag doctor                                   # embedded default, no services needed
  celerydiag doctor -A proj.celery:app                # your app's broker and backend
  celerydiag doctor --broker amqp://guest:guest@127.0.0.1:5672// --backend redis://127.0.0.1:6379/0
  celerydiag doctor -A proj --static --format junit -o celerydiag.xml   # CI, no network
  celerydiag doctor -A proj --format json | jq '.findings[0]'
"""


def _check_strategy(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a bad --poll-strategy as usage (exit 2) before any probe runs."""
    if value is not None:
        from celerydiag.errors import InputError
        from celerydiag.polling.model import parse_strategy

        try:
            parse_strategy(value, 0.5, "--poll-strategy")
        except InputError as exc:
            raise click.BadParameter(exc.message) from None
    return value


def _check_pcap(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A --pcap that is not a complete capture is bad input (exit 2) before any probe runs."""
    from celerydiag.network.probe import check_pcap

    return check_pcap(value)


def probe_options(fn: Any) -> Any:
    """Bounds and inputs every active probe reads (ProbeContext.limits, ProbeContext.options)."""
    opts = [
        click.option("--timeout", type=FiniteRange(min=0.1, max=300), default=5.0,
                     show_default=True, help="Seconds to wait for any single network call (the reachability "
                                              "check before the probes too)."),
        click.option("--max-seconds", type=FiniteRange(min=1, max=3600), default=30.0,
                     show_default=True,
                     help="Upper bound on each probe's run time: it is cut there, and its cleanup "
                          "then has 2 s more (doctor states its total bound on stderr)."),
        click.option("--samples", type=click.IntRange(min=10, max=100_000), default=500,
                     show_default=True,
                     help="Messages/writes an active probe sends at most."),
        click.option("--updates", type=click.IntRange(min=20, max=20_000), default=250,
                     show_default=True,
                     help="update_state() calls the e2e task makes and the client "
                          "watches (at least 200 for a trustworthy P99)."),
        click.option("--poll-interval", type=FiniteRange(min=0.001, max=3600),
                     metavar="SECONDS",
                     help="How often your clients poll AsyncResult.state."),
        click.option("--poll-strategy", metavar="NAME", callback=_check_strategy,
                     help="How your clients poll: fixed, jitter, backoff, smart, push, with "
                          "optional values as in `poll-model --help`."),
        click.option("--pcap", type=click.Path(exists=True, dir_okay=False), callback=_check_pcap,
                     help="Analyse this capture of broker/backend traffic."),
        click.option("--iface", metavar="IFACE",
                     help="Capture live on this interface during the run (needs root or "
                          "CAP_NET_RAW)."),
        click.option("--duration", type=FiniteRange(min=0.1, max=3600), default=3.0,
                     show_default=True,
                     help="Seconds to sample lock waits and live traffic."),
        click.option("--rabbitmq-api", metavar="URL",
                     help="RabbitMQ management API, e.g. http://guest:guest@host:15672 "
                          "(optional; adds alarms and queue rates)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return name_readers(fn)  # each option's help ends with the probes that read it (probe.READS)


def bounded_target(app: str | None, broker: str | None, backend: str | None, timeout_s: float) -> Any:
    """:func:`named_target`, with the import of ``--app`` cut at ``--timeout``: a settings module
    that waits for a service at import time would hold us forever. The error says where the
    import was when it was cut (the app's own line, and the call it was blocked in)."""
    import time

    from celerydiag import interrupt
    from celerydiag.errors import InputError

    if not app:
        return named_target(app, broker, backend)
    try:
        with interrupt.deadline(time.monotonic() + timeout_s) as bound:
            return named_target(app, broker, backend)
    except (InputError, interrupt.Overrun) as exc:
        if not bound.fired:
            raise
        cut = exc if isinstance(exc, interrupt.Overrun) else exc.__context__  # import_app re-raises it
        raise InputError(f"--app {app!r} did not finish importing within --timeout {timeout_s:g} s"
                         f"{where_blocked(cut)}",
                         "an import that waits for a service (a settings module connecting at import "
                         "time) hangs `celery -A` too; fix that, or raise --timeout if it is only slow") from None


def where_blocked(exc: BaseException | None) -> str:
    """", it was at proj/settings.py:12 (in socket.py:850 create_connection)": the innermost
    line of the user's code in ``exc``'s traceback, and the innermost line of all if different."""
    import os
    import sys
    import traceback

    if exc is None or exc.__traceback__ is None:
        return ""
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # celerydiag/: the cut itself
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(("<", ours))]
    if not frames:
        return ""
    library = (sys.prefix, sys.base_prefix)
    own = [f for f in frames if not f.filename.startswith(library)]

    def line(f: traceback.FrameSummary) -> str:
        name = os.path.basename(f.filename) if f.filename.startswith(library) else os.path.relpath(f.filename)
        code = (f.line or f.name).split("  #")[0].strip()
        return f"{name}:{f.lineno} ({code[:60]})"

    words = f", it was at {line(own[-1])}" if own else ""
    if not own or own[-1] is not frames[-1]:
        words += f"{', ' if own else ', it was '}in {line(frames[-1])}"
    return words


def run_report(app: str | None, broker: str | None, backend: str | None, probes: Any,
               fmt: OutputFormat, output: str | None, fail_on: str, budget_ms: float, no_color: bool,
               static: bool, timeout: float, max_seconds: float, samples: int, updates: int,
               poll_interval: float | None, poll_strategy: str | None, pcap: str | None,
               iface: str | None, duration: float, rabbitmq_api: str | None,
               state_bound: bool = False, verbose: bool = False) -> ExitCode:
    """Shared by doctor and probe: resolve, diagnose, render. ``state_bound``: say on stderr,
    before the probes start, how long they may take at most (doctor)."""
    from celerydiag.doctor import diagnose
    from celerydiag.probe import Limits, ProbeOptions
    from celerydiag.target import resolve_target
    from celerydiag.ui import make_progress

    refuse_unread(probes, static)  # an option no probe that runs reads is a usage error (probe.READS)
    with open_output(output, fmt, no_color) as out:  # an unwritable --output fails before any probe
        target = bounded_target(app, broker, backend, timeout) or resolve_target()  # nothing named: embedded
        options = ProbeOptions(poll_interval=poll_interval, poll_strategy=poll_strategy, pcap=pcap,
                               iface=iface, duration=duration, rabbitmq_api=rabbitmq_api)
        progress = make_progress(enabled=fmt is not OutputFormat.JSON)  # design.md: off for json, off a tty
        with carrying(target.secrets()):  # any error line from here on is scrubbed of the target's passwords
            try:
                report = diagnose(target, probes, budget_ms=budget_ms, static=static, progress=progress,
                                  limits=Limits(samples=samples, max_seconds=max_seconds, timeout_s=timeout,
                                                updates=updates),
                                  options=options,
                                  on_start=(lambda line: click.echo(line, err=True)) if state_bound else None)
            finally:
                progress.close()
            code = emit_report(out, report, fmt, fail_on, unreachable_said=state_bound, verbose=verbose)
            crashed = [(p.name, p.error) for p in report.probes if p.error is not None]
            if crashed and code is not ExitCode.STDOUT_CLOSED:  # the report is out; now the bug: exit 4
                raise ProbesCrashed(crashed)
            return code


@click.command("doctor", epilog=EPILOG)
@target_options
@output_options
@click.option("--static", is_flag=True,
              help="Only the checks that need no network (config): the CI smoke check for a "
                   "repository with no services.")
@probe_options
def command(**kw: Any) -> ExitCode:
    """Run every probe that applies to the target, rank causes by milliseconds, print fixes.

    Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 bad usage or
    input (an unwritable --output before any probe; with --static, an option only other probes
    read), 3 target unreachable (the probes that need it fail, the others run; --format json still
    writes the report), 4 internal error, 130 Ctrl-C and 143 SIGTERM (after cleanup, within 2 s),
    141 stdout closed early (`| head`).
    """
    from celerydiag.probe import probe_classes

    return run_report(probes=probe_classes(), state_bound=True, **kw)
