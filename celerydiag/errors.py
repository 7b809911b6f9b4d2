"""Exit codes and the few exceptions that reach the user.

Every exit code is named here once, so the CLI, the tests and the README agree. Exceptions carry
a one-line message and an optional hint (the fix); the CLI prints both and never a traceback.
Probes never import click, so DiagError is not a click exception. Also here, once each: how an
exception becomes one line (:func:`one_line`, :func:`describe`) and how cleanup swallows the
failure of a close that must not hide the real error (:func:`quietly`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0  # nothing at or above --fail-on
    FINDINGS = 1  # findings at or above --fail-on
    USAGE = 2  # bad usage or unreadable input
    UNREACHABLE = 3  # the target's broker or backend could not be reached
    INTERNAL = 4  # a bug of ours that escaped a probe's guard
    INTERRUPTED = 130  # Ctrl-C, after cleanup
    TERMINATED = 143  # SIGTERM (kill, systemd, Kubernetes), after cleanup: 128 + 15, as a shell reports it
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
# Bad URLs (celerydiag.access.urls): usage errors, named by where the URL came from ({where}:
# "--broker", "CELERY_RESULT_BACKEND", "broker_url of --app proj"), never quoting what did not parse.
E_URL_EMPTY = "{where} is empty"
E_URL_NOT_A_URL = "{where} is not a valid URL: {reason}"
E_URL_CREDENTIALS = ("{where} {url}: the user name or password holds {chars} unencoded, so Celery would "
                     "read part of it as the host, port or path and connect somewhere else")
H_URL_CREDENTIALS = ("percent-encode the password (# -> %23, / -> %2F, ? -> %3F, @ -> %40, % -> %25, "
                     "space -> %20), e.g. amqp://guest:p%23ss%2Fword@127.0.0.1:5672//; "
                     "an '@' that belongs to the path or query is %40 too")
E_URL_INVALID = "{where} {url}: {reason}"
H_BROKER_FORM = ("expected a broker URL: amqp://USER:PASSWORD@HOST:5672/VHOST, "
                 "redis://[:PASSWORD@]HOST:6379/DB, rediss://...?ssl_cert_reqs=required, memory://")
H_BACKEND_FORM = ("expected a result backend URL: redis://[:PASSWORD@]HOST:6379/DB, "
                  "db+postgresql+psycopg://USER:PASSWORD@HOST:5432/DB, db+mysql+pymysql://USER:PASSWORD@HOST:3306/DB, "
                  "db+sqlite:///PATH, rpc://")
H_REDIS_TLS = ("add ?ssl_cert_reqs=required (or optional, none) to the rediss:// URL, or set "
               "{setting} in your app")
H_APP_EMPTY = "pass the value you give `celery -A`, e.g. --app proj.celery:app"
E_BROKER_UNREACHABLE = "broker {url} unreachable: {error}"
E_BACKEND_UNREACHABLE = "result backend {url} unreachable: {error}"
H_UNREACHABLE = "check host, port, credentials and vhost/database; is the service running and reachable from here?"


def unreachable_lines(messages: Iterable[str]) -> list[str]:
    """What stderr says first for each dead side (doctor before its probes, emit otherwise): its
    one line and the hint."""
    return [f"celerydiag: error: {message}\n  hint: {H_UNREACHABLE}\n" for message in messages]


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """``Type: first line of the message`` (just ``Type`` when it has none), cut at ``limit``
    characters: some libraries embed a whole payload in the message (YAML's repr of an array)."""
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if limit is not None and len(first) > limit:
        first = first[:limit - 1] + "\u2026"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def describe(exc: BaseException) -> str:
    """A driver error as one line: the innermost cause (SQLAlchemy's ``orig``, else the end of
    the ``__cause__`` chain), without SQLAlchemy's "(Background on this error ...)" tail."""
    root: BaseException = exc
    seen = set()
    while root.__cause__ is not None and id(root) not in seen:
        seen.add(id(root))
        root = root.__cause__
    orig = getattr(exc, "orig", None)
    inner = orig if isinstance(orig, BaseException) else root
    text = str(inner).strip()
    line = text.splitlines()[0] if text else ""
    # An empty message is what a driver's socket timeout carries (py-amqp re-raises a bare one).
    line = line.split("(Background on this error")[0].strip() or "timed out"
    return f"{type(inner).__name__}: {line}"


def quietly(fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
    """Call ``fn`` and swallow any Exception: for cleanup (close, delete, dispose) whose failure
    must not replace the error or the result the run already has. Ctrl-C still propagates."""
    try:
        fn(*args, **kw)
    except Exception:
        pass
