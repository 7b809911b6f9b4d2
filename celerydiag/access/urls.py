"""Is a broker or result backend URL one Celery reads the way the user meant? If not, refuse it.

Why here, before any probe: kombu and Celery's backends split URLs with urllib
(``kombu.utils.url.url_to_parts``), which ends the host at the first ``/``, ``?`` or ``#``. A
password holding one of them unencoded is cut there: the rest becomes a "port" (a ValueError
quoting it: a password in an error line), or a host and port that parse and point elsewhere
(``guest:1234/x@h`` is host ``guest``, port 1234). SQLAlchemy (database backends) ends the
password at the first ``@`` instead, and Celery's worker prints even a database URL through
kombu's parser. Celery would misread such a URL without saying so; we say so, with the fix.

The other checks are ones Celery makes only at connect time (so they looked like "unreachable",
exit 3) or never: the scheme, the port, a Redis database number, ``rediss://`` without TLS
settings, a SQLAlchemy dialect and its driver. Every failure is an InputError (exit 2) that names
where the URL came from and never quotes what did not parse (that may be a piece of a password).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celerydiag.errors import (
    E_URL_CREDENTIALS,
    E_URL_EMPTY,
    E_URL_INVALID,
    E_URL_NOT_A_URL,
    H_BACKEND_FORM,
    H_BROKER_FORM,
    H_REDIS_TLS,
    H_URL_CREDENTIALS,
    InputError,
    one_line,
)
from celerydiag.target import Family, family_of, redact_url, scheme_of

URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
ENDS_HOST = "/?#"  # where urllib ends the authority (RFC 3986 3.2)


def check_broker_url(url: str, where: str, conf: Any = None) -> None:
    """Refuse (InputError) a broker URL kombu would misread or cannot use. ``where`` names its
    origin for the message; ``conf`` is the app's, for settings that complete a URL
    (``broker_use_ssl``)."""
    _check_text(url, where, H_BROKER_FORM)
    for part in url.split(";"):  # kombu's failover list: every member is connected to in turn
        _check_part(part.strip(), where, H_BROKER_FORM, database=False)
        _check_redis(part.strip(), where, _setting(conf, "broker_use_ssl"), "broker_use_ssl", H_BROKER_FORM)
        _check_transport(part.strip(), where)


def check_backend_url(url: str, where: str, app: Any) -> None:
    """Refuse (InputError) a result backend URL Celery would misread or cannot use; last, build
    the backend the way ``app.backend`` does (no network), so Celery's own checks run too."""
    _check_text(url, where, H_BACKEND_FORM)
    database = family_of(url) is Family.DATABASE
    for part in [url] if database else url.split(";"):  # a Sentinel backend takes a list
        _check_part(part.strip(), where, H_BACKEND_FORM, database)
        _check_redis(part.strip(), where, _setting(app.conf, "redis_backend_use_ssl"), "redis_backend_use_ssl",
                     H_BACKEND_FORM)
    if database:
        _check_sqlalchemy(url, where)
    _check_backend_class(url, where, app)


def _refuse(where: str, url: str, reason: str, hint: str) -> InputError:
    return InputError(E_URL_INVALID.format(where=where, url=redact_url(url), reason=reason), hint)


def _check_text(url: str, where: str, hint: str) -> None:
    if not url.strip():
        raise InputError(E_URL_EMPTY.format(where=where), hint)
    if url != url.strip():
        raise InputError(E_URL_NOT_A_URL.format(where=where, reason="it starts or ends with whitespace"), hint)
    if not URL_START.match(url):
        raise InputError(E_URL_NOT_A_URL.format(where=where, reason="it does not start with SCHEME://"), hint)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):  # urllib drops tabs and newlines silently
        raise InputError(E_URL_NOT_A_URL.format(where=where, reason="it holds a control character"), hint)


def _check_part(part: str, where: str, hint: str, database: bool) -> None:
    """One URL (a member of a failover list): its credentials, host and port."""
    if not URL_START.match(part):
        raise InputError(E_URL_NOT_A_URL.format(
            where=where, reason="a member of its ';' list does not start with SCHEME://"), hint)
    rest = part.split("://", 1)[1]
    if rest.startswith("/"):  # no authority at all: db+sqlite:///path, redis+socket:///run/redis.sock
        return
    cut = min((i for i in (rest.find(c) for c in ENDS_HOST) if i >= 0), default=len(rest))
    authority = rest[:cut]
    cutters = "".join(sorted({c for c in rest[:rest.rfind("@")] if c in ENDS_HOST})) if "@" in rest[cut:] else ""
    if database and authority.count("@") > 1:  # SQLAlchemy's password ends at the first '@'
        cutters += "@"
    if cutters:
        chars = " ".join(repr(c) for c in cutters)
        raise InputError(E_URL_CREDENTIALS.format(where=where, url=redact_url(part), chars=chars),
                         H_URL_CREDENTIALS)
    if any(c.isspace() for c in authority.rsplit("@", 1)[-1]):
        raise _refuse(where, part, "its host holds a space", hint)
    try:
        parsed = urlsplit(part)
        parsed.port  # noqa: B018  # the property is the check: it raises on a bad port
    except ValueError as exc:  # never quoted: urllib's text repeats what it could not read
        reason = ("an IPv6 host needs brackets, e.g. amqp://[::1]:5672//" if "IPv6" in str(exc)
                  else "its port is not a number from 0 to 65535")
        # Not even redacted: with no '@' what urllib calls the port may be a password ("u:pw").
        raise InputError(E_URL_NOT_A_URL.format(where=where, reason=reason), hint) from None


def _setting(conf: Any, name: str) -> Any:
    try:
        return conf.get(name) if conf is not None else None
    except Exception:  # a conf that cannot be read completes nothing
        return None


def _check_redis(part: str, where: str, tls_setting: Any, tls_name: str, hint: str) -> None:
    """A Redis database is a number (kombu and Celery int() it at connect time); rediss:// needs
    ssl_cert_reqs: Celery refuses a result backend without it, and kombu's broker falls back to
    CERT_NONE, an unverified certificate, with only a log line."""
    scheme = part.split("://", 1)[0].lower()
    if family_of(scheme) is not Family.REDIS or "socket" in scheme:
        return
    parts = urlsplit(part)
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise _refuse(where, part, "the Redis database after the host must be a number, e.g. "
                      "redis://HOST:6379/0", hint)
    if scheme == "rediss" and "ssl_cert_reqs" not in parse_qs(parts.query) and not tls_setting:
        raise _refuse(where, part, "a rediss:// URL needs ssl_cert_reqs (without it the server's "
                      "certificate is not checked, or Celery refuses the result backend)",
                      H_REDIS_TLS.format(setting=tls_name))


def _check_transport(part: str, where: str) -> None:
    """The kombu transport exists and its library imports (no connection is made)."""
    from kombu import Connection
    from kombu.transport import resolve_transport

    try:
        resolve_transport(Connection(part).transport_cls)
    except KeyError:
        raise _refuse(where, part, f"unsupported broker: kombu has no transport {scheme_of(part)!r}",
                      H_BROKER_FORM) from None
    except ImportError as exc:
        raise _refuse(where, part, f"unsupported broker: the {scheme_of(part)!r} transport needs a "
                      f"library that is not installed ({one_line(exc)})", H_BROKER_FORM) from None
    except ValueError:  # what urlsplit accepted and kombu did not
        raise _refuse(where, part, "kombu cannot parse it", H_BROKER_FORM) from None


def _check_sqlalchemy(url: str, where: str) -> None:
    """db+DIALECT[+DRIVER]://: a dialect SQLAlchemy has and a driver that is installed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url.split("+", 1)[1])
    except (ArgumentError, ValueError):
        raise _refuse(where, url, "SQLAlchemy cannot parse it", H_BACKEND_FORM) from None
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise _refuse(where, url, f"unsupported result backend: SQLAlchemy has no dialect {parsed.drivername!r}",
                      H_BACKEND_FORM) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise _refuse(where, url, f"unsupported result backend: the driver of {parsed.drivername!r} is not "
                      f"installed ({one_line(exc)})",
                      H_BACKEND_FORM) from None


# Backends whose constructor opens no connection: building one runs Celery's own URL checks.
# DatabaseBackend is not one of them (database_create_tables_at_setup connects, unbounded): its
# URL is SQLAlchemy's and _check_sqlalchemy reads it; other schemes only get their class resolved.
BUILT_TO_CHECK = frozenset({Family.REDIS, Family.RPC, Family.DISABLED})


def _check_backend_class(url: str, where: str, app: Any) -> None:
    """What ``app.backend`` does (celery.app.base._get_backend), with this URL and not the
    CELERY_RESULT_BACKEND a conf would read first: resolve the class (an unknown scheme, a missing
    library) and, where that is free of network (BUILT_TO_CHECK), build it, so Celery's own checks
    of the URL run (rediss:// settings, a Redis database)."""
    from celery.app.backends import by_url

    try:
        backend_cls, backend_url = by_url(url, app.loader)
        if family_of(url) in BUILT_TO_CHECK:
            backend_cls(app=app, url=backend_url)
    except Exception as exc:  # ImproperlyConfigured, ValueError, ImportError of a missing driver
        raise _refuse(where, url, f"unsupported result backend: Celery cannot use it ({one_line(exc, limit=160)})",
                      H_BACKEND_FORM) from None
