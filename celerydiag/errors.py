"""Exit codes and the few exceptions that reach the user.

Every exit code is named here once, so the CLI, the tests and the README agree. Exceptions carry
a one-line message and an optional hint (the fix); the CLI prints both and never a traceback.
Probes never import click, so DiagError is not a click exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # nothing at or above --fail-on
    FINDINGS = 1  # findings at or above --fail-on
    USAGE = 2  # bad usage or unreadable input
    UNREACHABLE = 3  # the target's broker or backend could not be reached
    INTERNAL = 4  # a bug of ours that escaped a probe's guard
    INTERRUPTED = 130  # Ctrl-C, after cleanup
    STDOUT_CLOSED = 141  # the reader of stdout went away (`| head`): 128 + SIGPIPE, as a shell reports it


class DiagError(Exception):
    """An expected failure with a message for the user and, where we know it, the fix."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, hint: str | None = None, secrets: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Passwords this message may hold (a URL that did not parse, a driver's text): the error
        # mapper in cli.main scrubs them from every line it prints. Carried here, not in a global.
        self.secrets: tuple[str, ...] = tuple(secrets)

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class InputError(DiagError):
    """Bad usage or input we cannot read: an --app that does not import, a broken file."""

    exit_code = ExitCode.USAGE


class TargetUnreachable(DiagError):
    """The broker or backend did not answer, refused us, or rejected our credentials."""

    exit_code = ExitCode.UNREACHABLE


SECRETS_ATTR = "secrets"  # where an escaping exception carries the passwords to scrub from its line


@contextlib.contextmanager
def carrying(secrets: Iterable[str]) -> Iterator[None]:
    """Attach ``secrets`` to whatever escapes the block (a DiagError, or our own bug), so the one
    error mapper can scrub them from the line it prints, wherever the error was raised."""
    known = tuple(s for s in secrets if s)
    try:
        yield
    except Exception as exc:
        if known:
            with contextlib.suppress(AttributeError, TypeError):  # a C type without __dict__
                setattr(exc, SECRETS_ATTR, (*secrets_of(exc), *known))
        raise


def secrets_of(exc: BaseException) -> tuple[str, ...]:
    found = getattr(exc, SECRETS_ATTR, ())
    return tuple(s for s in found if isinstance(s, str)) if isinstance(found, tuple) else ()


E_APP_IMPORT = "cannot import --app {app!r}: {error}"
H_APP_IMPORT = "pass the same value you give `celery -A`, e.g. --app proj.celery:app, run from the project root"
E_BACKEND_SCHEME = "unsupported result backend {url}: {error}"
H_BACKEND_SCHEME = (
    "use a scheme Celery knows: redis://, rediss://, db+postgresql+psycopg://, db+mysql+pymysql://,"
    " db+sqlite:///, rpc://"
)
E_BROKER_SCHEME = "unsupported broker {url}: {error}"
H_BROKER_SCHEME = "use a transport kombu knows: amqp://, amqps://, redis://, rediss://, sentinel://, sqs://, memory://"
E_BROKER_UNREACHABLE = "broker {url} unreachable: {error}"
E_BACKEND_UNREACHABLE = "result backend {url} unreachable: {error}"
H_UNREACHABLE = "check host, port, credentials and vhost/database; is the service running and reachable from here?"
