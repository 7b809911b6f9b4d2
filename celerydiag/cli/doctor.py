"""`celerydiag doctor`: run every probe that applies to the target, rank, print the fixes."""

from __future__ import annotations

from typing import Any

import click

from celerydiag.cli import named_target, output_options, target_options
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
        click.option("--timeout", type=click.FloatRange(min=0.1, max=300), default=5.0,
                     show_default=True, help="Seconds to wait for any single network call."),
        click.option("--max-seconds", type=click.FloatRange(min=1, max=3600), default=30.0,
                     show_default=True, help="Upper bound on each active probe's run time."),
        click.option("--samples", type=click.IntRange(min=10, max=100_000), default=500,
                     show_default=True,
                     help="Messages/writes an active probe sends at most (broker, backend)."),
        click.option("--updates", type=click.IntRange(min=20, max=20_000), default=250,
                     show_default=True,
                     help="update_state() calls the e2e probe's task makes and the client "
                          "watches (at least 200 for a trustworthy P99)."),
        click.option("--poll-interval", type=click.FloatRange(min=0.001, max=3600),
                     metavar="SECONDS",
                     help="How often your clients poll AsyncResult.state (polling probe)."),
        click.option("--poll-strategy", metavar="NAME", callback=_check_strategy,
                     help="How your clients poll: fixed, jitter, backoff, smart, push, with "
                          "optional values as in `poll-model --help` (polling probe)."),
        click.option("--pcap", type=click.Path(exists=True, dir_okay=False), callback=_check_pcap,
                     help="Analyse this capture of broker/backend traffic (network probe)."),
        click.option("--iface", metavar="IFACE",
                     help="Capture live on this interface during the run (network probe; "
                          "needs root or CAP_NET_RAW)."),
        click.option("--duration", type=click.FloatRange(min=0.1, max=3600), default=3.0,
                     show_default=True,
                     help="Seconds to sample lock waits and live traffic."),
        click.option("--rabbitmq-api", metavar="URL",
                     help="RabbitMQ management API, e.g. http://guest:guest@host:15672 "
                          "(optional; adds alarms and queue rates)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def run_report(app: str | None, broker: str | None, backend: str | None, probes: Any,
               fmt: OutputFormat, output: str | None, fail_on: str, budget_ms: float, no_color: bool,
               static: bool, timeout: float, max_seconds: float, samples: int, updates: int,
               poll_interval: float | None, poll_strategy: str | None, pcap: str | None,
               iface: str | None, duration: float, rabbitmq_api: str | None) -> ExitCode:
    """Shared by doctor and probe: resolve, diagnose, render."""
    from celerydiag.doctor import diagnose
    from celerydiag.probe import Limits, ProbeOptions
    from celerydiag.target import resolve_target
    from celerydiag.ui import make_progress

    with open_output(output, fmt, no_color) as out:  # an unwritable --output fails before any probe
        target = named_target(app, broker, backend) or resolve_target()  # nothing named: embedded default
        options = ProbeOptions(poll_interval=poll_interval, poll_strategy=poll_strategy, pcap=pcap,
                               iface=iface, duration=duration, rabbitmq_api=rabbitmq_api)
        progress = make_progress(enabled=fmt is not OutputFormat.JSON)  # design.md: off for json, off a tty
        with carrying(target.secrets()):  # any error line from here on is scrubbed of the target's passwords
            try:
                report = diagnose(target, probes, budget_ms=budget_ms, static=static, progress=progress,
                                  limits=Limits(samples=samples, max_seconds=max_seconds, timeout_s=timeout,
                                                updates=updates),
                                  options=options)
            finally:
                progress.close()
            return emit_report(out, report, fmt, fail_on)


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
    input (an unwritable --output before any probe), 3 target unreachable, 4 internal error,
    130 interrupted (after cleanup), 141 stdout closed early (`| head`).
    """
    from celerydiag.probe import probe_classes

    return run_report(probes=probe_classes(), **kw)
