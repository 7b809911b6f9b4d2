"""The command line: a click group, shared option bundles, and the one exit-code mapper.

Each command lives in its own module beside this one and stays thin: parse options, call one
engine function, render, return an ExitCode. :func:`main` turns every outcome into an exit code
and one line on stderr, never a traceback (``--traceback`` or CELERYDIAG_TRACEBACK=1 shows it).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import sys
import traceback as tb
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click

from celerydiag import __version__, interrupt
from celerydiag.emit import silence_stdout
from celerydiag.errors import DiagError, ExitCode, one_line, secrets_of
from celerydiag.render import OutputFormat
from celerydiag.target import redact, scrub

# One line per command module; each defines `command`.
COMMAND_MODULES: tuple[str, ...] = (
    "celerydiag.cli.doctor",
    "celerydiag.cli.probe",
    "celerydiag.cli.report",
    "celerydiag.cli.poll_model",
    "celerydiag.cli.bench_serialize",
    "celerydiag.cli.capture",
    "celerydiag.cli.watch",
)

class ProbesCrashed(Exception):
    """Probes that failed on a bug of ours (the guard caught it, the report was still written):
    :func:`main` exits 4 and, with ``--traceback``, prints each probe's traceback on stderr."""

    def __init__(self, errors: Sequence[tuple[str, BaseException]]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(f"internal error in probe {name}: {one_line(exc)}" for name, exc in self.errors))


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
@click.option("--traceback", is_flag=True, envvar="CELERYDIAG_TRACEBACK",
              help="On an internal error (exit 4), also print its traceback on stderr (the exit "
                   "code stays 4). Also CELERYDIAG_TRACEBACK=1, or after the command name.")
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


def _not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``-A ""`` or ``--broker ""`` (an unset shell variable) is a mistake, not "use the default"."""
    if value is not None and not value.strip():
        from celerydiag.errors import H_APP_EMPTY, H_BACKEND_FORM, H_BROKER_FORM, InputError

        flag = {"app": "--app", "broker": "--broker", "backend": "--backend"}[str(param.name)]
        hint = {"app": H_APP_EMPTY, "broker": H_BROKER_FORM, "backend": H_BACKEND_FORM}[str(param.name)]
        raise InputError(f"{flag} is empty", hint)
    return value


def target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--app / --broker / --backend: which deployment to measure, each URL as Celery picks it."""
    fn = click.option("--backend", metavar="URL", callback=_not_empty,
                      help="Result backend URL, e.g. redis://host:6379/0 or "
                           "db+postgresql+psycopg://user@host/db. Else CELERY_RESULT_BACKEND, else "
                           "the app's result_backend, as Celery does. Percent-encode / ? # @ in a "
                           "password.")(fn)
    fn = click.option("--broker", metavar="URL", callback=_not_empty,
                      help="Broker URL, e.g. amqp://user:pass@host:5672// or redis://host:6379/0. "
                           "Else CELERY_BROKER_URL, else the app's broker_url, as Celery does. "
                           "Percent-encode / ? # @ in a password.")(fn)
    fn = click.option("-A", "--app", metavar="MODULE[:ATTR]", callback=_not_empty,
                      help="Your Celery app, imported like `celery -A` (e.g. proj.celery:app): its "
                           "settings, and the URLs no flag or variable sets. Nothing named at all: "
                           "an embedded in-memory default.")(fn)
    return fn


class FiniteRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf``. click checks a range by
    comparing, and every comparison with nan is false, so ``FloatRange(min=1)`` takes ``nan`` (and,
    with no max, ``inf``): a NaN budget or timeout then runs with nonsense. Every float option of
    every command uses this type (tests/unit/test_option_values.py walks them all)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class FormatChoice(click.Choice):
    """``--format`` over some OutputFormat members: the user types the value, the command gets the
    member, so no command compares format strings of its own."""

    def __init__(self, formats: tuple[OutputFormat, ...]) -> None:
        super().__init__([f.value for f in formats])

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> OutputFormat:
        return OutputFormat(super().convert(value, param, ctx))


def output_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--format / --output / --fail-on / --budget-ms / --no-color / --verbose, shared by report commands."""
    fn = click.option("--verbose", "verbose", is_flag=True,
                      help="List the checks that passed as rows (by default they are folded into one line).")(fn)
    fn = click.option("--no-color", is_flag=True, envvar="NO_COLOR",
                      help="Plain text even on a terminal.")(fn)
    fn = click.option("--fail-on", type=click.Choice(["critical", "warning", "info", "never"]),
                      default="critical", show_default=True,
                      help="Exit 1 when a finding is at or above this severity.")(fn)
    fn = click.option("--budget-ms", type=FiniteRange(min=1), default=1000.0,
                      show_default=True,
                      help="How late a state may show up. A cause adding at least this much is "
                           "critical; at least 20% of it, a warning.")(fn)
    fn = click.option("-o", "--output", type=click.Path(), metavar="FILE",
                      help="Write the report to this file instead of stdout (checked before any work; "
                           "replaced only when the run finishes).")(fn)
    fn = click.option("-f", "--format", "fmt", type=FormatChoice(tuple(OutputFormat)),
                      default=OutputFormat.TEXT.value, show_default=True,
                      help="Report format: text for people, json for scripts, markdown for "
                           "tickets, junit for CI, html for one self-contained page with charts "
                           "(needs `pip install 'celerydiag[html]'`).")(fn)
    return fn


def document_options(what: str, html: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """-f text|json (|html) / -o / --no-color for commands whose output is not a doctor report
    (poll-model, bench-serialize); ``what`` says what text shows, e.g. "table + chart"."""
    formats = (OutputFormat.TEXT, OutputFormat.JSON, *((OutputFormat.HTML,) if html else ()))
    more = ", html for one self-contained page with the chart" if html else ""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--no-color", is_flag=True, envvar="NO_COLOR",
                          help="Plain text even on a terminal.")(fn)
        fn = click.option("-o", "--output", type=click.Path(), metavar="FILE",
                          help="Write the output to this file instead of stdout (checked before any "
                               "work; replaced only when the run finishes).")(fn)
        fn = click.option("-f", "--format", "fmt", type=FormatChoice(formats),
                          default=OutputFormat.TEXT.value,
                          show_default=True, help=f"text for people ({what}), json for scripts{more}.")(fn)
        return fn
    return decorate


def named_target(app: str | None, broker: str | None, backend: str | None) -> Any:
    """The target the user named (--app, --broker/--backend, or CELERY_BROKER_URL /
    CELERY_RESULT_BACKEND), or None when nothing is named. For commands that only read a target
    (capture, bench-serialize, poll-model): the embedded default would be a temp dir for nothing.
    The target carries its secrets (Target.secrets); a command wraps what it does with it in
    ``errors.carrying(target.secrets())`` so any error line is scrubbed of them."""
    from celerydiag.target import BACKEND_ENV, BROKER_ENV, pin_environment, resolve_target

    if app is None and broker is None and backend is None and not (
            os.environ.get(BROKER_ENV) or os.environ.get(BACKEND_ENV)):
        return None
    target = resolve_target(app=app, broker=broker, backend=backend)
    pin_environment(target)  # every Celery app of this run now uses these URLs (main restores)
    return target


# The variables pin_environment sets; main() puts them back, so an in-process caller (the tests,
# a script calling main twice) sees its own environment again.
PINNED_ENV = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")


@contextlib.contextmanager
def _environment_restored() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in PINNED_ENV}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _error_line(message: str, exc: BaseException) -> str:
    """``message`` scrubbed of URL passwords and of every secret the error carries."""
    return redact(message, secrets_of(exc))


def _say_crashed(crashed: ProbesCrashed, show_tb: bool) -> None:
    """One line per probe that hit a bug of ours, each after its traceback if asked; scrubbed of
    the target's passwords (carried by ``crashed``) and of any the error carries itself."""
    for name, error in crashed.errors:
        secrets = secrets_of(crashed) + secrets_of(error)
        if show_tb:
            lines = tb.format_exception(type(error), error, error.__traceback__)
            click.echo(f"celerydiag: traceback of probe {name}:\n{redact(''.join(lines), secrets).rstrip()}",
                       err=True)
        click.echo(f"celerydiag: internal error in probe {name}: {redact(one_line(error), secrets)} "
                   "(a bug in celerydiag; rerun with --traceback and report it)", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the command and map every outcome to an exit code and one line."""
    args = list(sys.argv[1:] if argv is None else argv)
    show_tb = "--traceback" in args or os.environ.get("CELERYDIAG_TRACEBACK") == "1"
    # Our error lines say "rerun with --traceback": accept it after the command name too, where a
    # user appends it, not only as a group option before it.
    args = [a for a in args if a != "--traceback"]
    try:
        with _environment_restored(), interrupt.handled():  # Ctrl-C and kill both clean up, even in a driver call
            result = cli.main(args=args, prog_name="celerydiag", standalone_mode=False)
        return int(result) if isinstance(result, int) else ExitCode.OK
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        # click's own message (a bad option value may quote a URL): scrubbed, then shown the same
        # way click would, "Error: ..." on stderr with its usage line
        exc.message = _error_line(exc.message, exc)  # type: ignore[misc]  # Final in click's stubs only
        exc.show()
        return exc.exit_code
    except DiagError as exc:
        click.echo(f"celerydiag: error: {_error_line(exc.message, exc)}", err=True)
        if exc.hint:  # our own words (URL forms like USER:PASSWORD@HOST): only known secrets scrubbed
            click.echo(f"  hint: {scrub(exc.hint, secrets_of(exc))}", err=True)
        return exc.exit_code
    except (KeyboardInterrupt, click.Abort):
        click.echo(f"celerydiag: interrupted ({interrupt.signal_name()}); whatever the run had created "
                   "(queues, keys, scratch tables) was removed first", err=True)
        if argv is None:  # the console script: cleanup is done, skip Python's slow finalization
            interrupt.exit_now(interrupt.exit_code())
        return ExitCode(interrupt.exit_code())  # 130 for Ctrl-C, 143 for SIGTERM
    except BrokenPipeError:  # what did not go through emit (probe --list | head -1): same code
        silence_stdout()
        click.echo("celerydiag: stdout closed before the output was complete", err=True)
        return ExitCode.STDOUT_CLOSED
    except ProbesCrashed as exc:
        _say_crashed(exc, show_tb)
        return ExitCode.INTERNAL
    except Exception as exc:
        if show_tb:  # asked for: the traceback, still scrubbed, and still exit 4 (not Python's 1)
            lines = tb.format_exception(type(exc), exc, exc.__traceback__)
            click.echo(_error_line("".join(lines), exc).rstrip("\n"), err=True)
        click.echo(f"celerydiag: internal error: {_error_line(one_line(exc), exc)} "
                   "(a bug in celerydiag; rerun with --traceback and report it)", err=True)
        return ExitCode.INTERNAL
