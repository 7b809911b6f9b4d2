"""The command line: a click group, shared option bundles, and the one exit-code mapper.

Each command lives in its own module beside this one and stays thin: parse options, call one
engine function, render, return an ExitCode. :func:`main` turns every outcome into an exit code
and one line on stderr, never a traceback (``--traceback`` or CELERYDIAG_TRACEBACK=1 shows it).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from celerydiag import __version__, interrupt
from celerydiag.errors import DiagError, ExitCode, one_line
from celerydiag.findings import Report, Severity
from celerydiag.target import redact

# One line per command module; each defines `command`.
COMMAND_MODULES: tuple[str, ...] = (
    "celerydiag.cli.doctor",
    "celerydiag.cli.probe",
    "celerydiag.cli.report",
    "celerydiag.cli.poll_model",
    "celerydiag.cli.bench_serialize",
    "celerydiag.cli.capture",
)

FORMAT_NAMES = ("text", "json", "markdown", "junit")
_secrets: list[str] = []  # passwords the current command knows, scrubbed from any error line


def remember_secrets(secrets: Sequence[str]) -> None:
    _secrets.extend(s for s in secrets if s)


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [m.rsplit(".", 1)[1].replace("_", "-") for m in COMMAND_MODULES]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = f"celerydiag.cli.{name.replace('-', '_')}"
        if module not in COMMAND_MODULES:
            return None
        return importlib.import_module(module).command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="celerydiag")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for debug).")
@click.option("--traceback", is_flag=True, hidden=True, envvar="CELERYDIAG_TRACEBACK",
              help="Show the traceback of an internal error.")
def cli(verbose: int, traceback: bool) -> None:
    """Why does my Celery task's state show up late?

    celerydiag measures each cause (broker, result backend, network, serialization, polling)
    on your real systems, ranks them by the milliseconds they add, and prints the config change
    that fixes each. Start with `celerydiag doctor`.
    """
    level = logging.WARNING - 10 * verbose
    logger = logging.getLogger("celerydiag")
    logger.setLevel(max(level, logging.DEBUG))
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("celerydiag: %(levelname)s: %(message)s"))
        logger.addHandler(handler)


def target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--app / --broker / --backend: which deployment to measure (first match wins)."""
    fn = click.option("--backend", metavar="URL",
                      help="Result backend URL, e.g. redis://host:6379/0 or "
                           "db+postgresql+psycopg://user@host/db (overrides the app's).")(fn)
    fn = click.option("--broker", metavar="URL",
                      help="Broker URL, e.g. amqp://user:pass@host:5672// or redis://host:6379/0 "
                           "(overrides the app's).")(fn)
    fn = click.option("-A", "--app", metavar="MODULE[:ATTR]",
                      help="Your Celery app, imported like `celery -A` (e.g. proj.celery:app). "
                           "Without it: --broker/--backend, then CELERY_BROKER_URL/"
                           "CELERY_RESULT_BACKEND, then an embedded in-memory default.")(fn)
    return fn


def output_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--format / --output / --fail-on / --budget-ms / --no-color, shared by report commands."""
    fn = click.option("--no-color", is_flag=True, envvar="NO_COLOR",
                      help="Plain text even on a terminal.")(fn)
    fn = click.option("--fail-on", type=click.Choice(["critical", "warning", "info", "never"]),
                      default="critical", show_default=True,
                      help="Exit 1 when a finding is at or above this severity.")(fn)
    fn = click.option("--budget-ms", type=click.FloatRange(min=1), default=1000.0,
                      show_default=True,
                      help="How late a state may show up. A cause adding at least this much is "
                           "critical; at least 20% of it, a warning.")(fn)
    fn = click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
                      help="Write the report to this file instead of stdout.")(fn)
    fn = click.option("-f", "--format", "fmt", type=click.Choice(FORMAT_NAMES),
                      default="text", show_default=True,
                      help="Report format: text for people, json for scripts, markdown for "
                           "tickets, junit for CI.")(fn)
    return fn


def document_options(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """-f text|json / -o / --no-color for commands whose output is not a doctor report
    (poll-model, bench-serialize); ``what`` says what text shows, e.g. "table + chart"."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--no-color", is_flag=True, envvar="NO_COLOR",
                          help="Plain text even on a terminal.")(fn)
        fn = click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
                          help="Write the output to this file instead of stdout.")(fn)
        fn = click.option("-f", "--format", "fmt", type=click.Choice(["text", "json"]), default="text",
                          show_default=True, help=f"text for people ({what}), json for scripts.")(fn)
        return fn
    return decorate


def named_target(app: str | None, broker: str | None, backend: str | None) -> Any:
    """The target the user named (--app, --broker/--backend, or CELERY_BROKER_URL /
    CELERY_RESULT_BACKEND) with its passwords remembered for redaction, or None when nothing is
    named. For commands that only read a target (capture, bench-serialize, poll-model): the
    embedded default would be a temp dir for nothing."""
    from celerydiag.target import passwords_of, resolve_target

    remember_secrets([*passwords_of(broker), *passwords_of(backend)])
    if not (app or broker or backend or os.environ.get("CELERY_BROKER_URL")
            or os.environ.get("CELERY_RESULT_BACKEND")):
        return None
    target = resolve_target(app=app, broker=broker, backend=backend)
    remember_secrets(target.secrets())
    return target


def fail_on_severity(value: str) -> Severity | None:
    return None if value == "never" else Severity.parse(value)


def emit(report: Report, fmt: str, output: str | None, fail_on: str, no_color: bool) -> ExitCode:
    """Render to stdout or --output, print the one-line summary on stderr, pick the exit code."""
    from celerydiag.render import render

    threshold = fail_on_severity(fail_on)
    junit_threshold = threshold or Severity.CRITICAL
    if output:
        try:
            with open(output, "w", encoding="utf-8") as stream:
                render(report, fmt, stream, fail_on=junit_threshold, color=False)
        except OSError as exc:
            raise DiagError(f"cannot write --output {output}: {exc.strerror}") from None
    else:
        color = fmt == "text" and not no_color and sys.stdout.isatty()
        try:
            render(report, fmt, sys.stdout, fail_on=junit_threshold, color=color)
            sys.stdout.flush()
        except BrokenPipeError:
            # `| head` went away: not our error. Left to click it becomes exit 1 (= findings)
            # with no summary; the summary and the real exit code still belong on stderr.
            _silence_stdout()
    counts = {s: sum(1 for f in report.findings if f.severity == s) for s in Severity}
    failed = [p.name for p in report.probes if str(p.status) == "failed"]
    summary = (f"celerydiag: {counts[Severity.CRITICAL]} critical, {counts[Severity.WARNING]} "
               f"warning, {counts[Severity.INFO]} info, {counts[Severity.OK]} ok")
    if failed:
        summary += f"; probes failed: {', '.join(failed)}"
    click.echo(summary, err=True)
    if threshold is not None and report.worst() >= threshold and report.worst() > Severity.OK:
        return ExitCode.FINDINGS
    return ExitCode.OK


def _error_line(message: str) -> str:
    return redact(message, _secrets)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the command and map every outcome to an exit code and one line."""
    args = list(sys.argv[1:] if argv is None else argv)
    show_tb = "--traceback" in args or os.environ.get("CELERYDIAG_TRACEBACK") == "1"
    # Our error lines say "rerun with --traceback": accept it after the command name too, where a
    # user appends it, not only as a group option before it.
    args = [a for a in args if a != "--traceback"]
    _secrets.clear()
    try:
        with interrupt.handled():  # Ctrl-C and kill both clean up, even inside a driver call
            result = cli.main(args=args, prog_name="celerydiag", standalone_mode=False)
        return int(result) if isinstance(result, int) else ExitCode.OK
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.message = _error_line(exc.message)
        exc.show()
        return exc.exit_code
    except DiagError as exc:
        click.echo(f"celerydiag: error: {_error_line(exc.message)}", err=True)
        if exc.hint:
            click.echo(f"  hint: {_error_line(exc.hint)}", err=True)
        return exc.exit_code
    except (KeyboardInterrupt, click.Abort):
        click.echo("celerydiag: interrupted; whatever the run had created (queues, keys, scratch tables) "
                   "was removed first", err=True)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return ExitCode.OK
    except Exception as exc:
        if show_tb:
            raise
        click.echo(f"celerydiag: internal error: {_error_line(one_line(exc))} "
                   "(a bug in celerydiag; rerun with --traceback and report it)", err=True)
        return ExitCode.INTERNAL


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
