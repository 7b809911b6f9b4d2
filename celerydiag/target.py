"""Which Celery deployment we measure, how it was chosen, and how to print it safely.

Resolution order, first match wins: ``--app`` (imported like ``celery -A``), ``--broker`` /
``--backend`` flags, ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``, and the embedded default
(in-memory broker, SQLite results in a temp dir) so ``celerydiag doctor`` does real work on a
machine with nothing installed. Raw URLs hold passwords: they stay inside Target and every string
bound for output goes through :func:`redact` first.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from celerydiag.errors import (
    E_APP_IMPORT,
    E_BACKEND_SCHEME,
    E_BROKER_SCHEME,
    H_APP_IMPORT,
    H_BACKEND_SCHEME,
    H_BROKER_SCHEME,
    InputError,
    carrying,
    one_line,
)

MASK = "**"


class TargetSource(str, Enum):
    APP = "app"
    FLAGS = "flags"
    ENV = "env"
    EMBEDDED = "embedded"

    def __str__(self) -> str:
        return self.value


class Side(str, Enum):
    """The two things a target names and a probe may need reachable (``Probe.needs``)."""

    BROKER = "broker"
    BACKEND = "backend"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Target:
    """The deployment under test. ``app`` is the Celery app whose conf we read (the user's own
    for --app, else one we built); ``conf`` is never printed whole."""

    broker_url: str
    backend_url: str
    source: TargetSource
    app: Any = field(default=None, compare=False, repr=False)
    app_name: str | None = None
    scratch_dir: str | None = None  # embedded default: where the SQLite file lives

    @property
    def conf(self) -> Any:
        return self.app.conf

    @property
    def broker_scheme(self) -> str:
        return scheme_of(self.broker_url)

    @property
    def backend_scheme(self) -> str:
        return scheme_of(self.backend_url)

    def secrets(self) -> tuple[str, ...]:
        """Every password this target knows, so any text can be scrubbed of them."""
        found = [*passwords_of(self.broker_url), *passwords_of(self.backend_url)]
        if self.app is not None:
            found += hidden_values(user_settings(self.conf))
        return tuple(sorted({s for s in found if s}, key=len, reverse=True))

    def redact(self, text: str) -> str:
        return redact(text, self.secrets())

    def to_dict(self) -> dict[str, str]:
        return {
            # redact() too: a password urllib cannot split ('#', '/') escapes the URL pattern
            "broker": self.redact(redact_url(self.broker_url)),
            "backend": self.redact(redact_url(self.backend_url)),
            "source": str(self.source),
        }

    def describe(self) -> str:
        """One line for humans: what we measured and why it was chosen."""
        origin = {
            TargetSource.APP: f"from --app {self.app_name}",
            TargetSource.FLAGS: "from --broker/--backend",
            TargetSource.ENV: "from CELERY_BROKER_URL/CELERY_RESULT_BACKEND",
            TargetSource.EMBEDDED: "embedded default: in-memory broker, SQLite results in a temp dir,"
            " in-process worker (nothing configured; pass --app or --broker/--backend to measure"
            " your deployment)",
        }[self.source]
        return f"broker {redact_url(self.broker_url)}, backend {redact_url(self.backend_url)} ({origin})"


def scheme_of(url: str) -> str:
    """``db+postgresql+psycopg://…`` → ``db``; ``rediss://`` → ``rediss``; '' for none."""
    head = url.split("://", 1)[0] if "://" in url else ""
    return head.split("+", 1)[0].lower()


class Family(str, Enum):
    """What a URL scheme speaks, for every module that branches on it (probes, reach, capture).

    The one table of schemes, because the copies drifted: kombu's transport aliases
    (``kombu.transport.TRANSPORT_ALIASES``: amqp/amqps/pyamqp/librabbitmq are AMQP 0-9-1,
    redis/rediss/sentinel are Redis) and Celery's backend schemes (``db+...``, ``rpc``,
    ``disabled``). A scheme outside the table is OTHER, never guessed."""

    AMQP = "amqp"
    REDIS = "redis"
    SQS = "sqs"
    MEMORY = "memory"
    DATABASE = "db"
    RPC = "rpc"
    DISABLED = "disabled"
    OTHER = "other"

    def __str__(self) -> str:
        return self.value


SCHEME_FAMILIES: Mapping[str, Family] = {
    "amqp": Family.AMQP, "amqps": Family.AMQP, "pyamqp": Family.AMQP, "librabbitmq": Family.AMQP,
    "redis": Family.REDIS, "rediss": Family.REDIS, "sentinel": Family.REDIS,
    "sqs": Family.SQS, "memory": Family.MEMORY, "db": Family.DATABASE, "rpc": Family.RPC,
    "disabled": Family.DISABLED,
}
AMQP_SCHEMES = frozenset(s for s, f in SCHEME_FAMILIES.items() if f is Family.AMQP)
REDIS_SCHEMES = frozenset(s for s, f in SCHEME_FAMILIES.items() if f is Family.REDIS)


def family_of(scheme_or_url: str) -> Family:
    """The family of a scheme (``rediss``) or of a whole URL (``db+postgresql://…``)."""
    scheme = scheme_of(scheme_or_url) if "://" in scheme_or_url else scheme_or_url.split("+", 1)[0].lower()
    return SCHEME_FAMILIES.get(scheme, Family.OTHER)


def passwords_of(url: str | None) -> list[str]:
    """Every password in a URL or a ``;``-separated failover list, percent-decoded, plus the raw
    spelling of one that does not parse: urlsplit cuts ``pa#ss/word`` at ``#`` and returns ``pa``,
    and it is the whole that must never reach an error line."""
    found = []
    for part in (url or "").split(";"):
        if "://" not in part:
            continue
        found += _raw_password(part.strip())
        try:
            pw = urlsplit(part.strip()).password
        except ValueError:
            continue
        if pw:
            found.append(unquote(pw))
    return list(dict.fromkeys(found))  # each spelling once, in the order found


def _raw_password(url: str) -> list[str]:
    """What sits between ``user:`` and the last ``@`` (where kombu and redis-py split), as typed."""
    rest = url.split("://", 1)[1]
    if "@" not in rest:
        return []
    userinfo = rest.rsplit("@", 1)[0]
    if ":" not in userinfo:
        return []
    raw = userinfo.split(":", 1)[1]
    return [raw, unquote(raw)] if raw else []
# Names Celery's HIDDEN_SETTINGS matches (by "KEY") that hold no secret: their values are common
# words ("celery", "tasks", "myapp:") that must not be masked everywhere a report says them.
NOT_SECRET_SUFFIXES = ("routing_key", "keyprefix", "key_prefix")


def hidden_setting(key: Any) -> bool:
    """A setting (or nested option) whose value is secret: one Celery itself hides when it prints
    the config (``celery.app.utils.HIDDEN_SETTINGS``: API, TOKEN, KEY, SECRET, PASS, DATABASE, …,
    the list ``app.conf.table(censored=True)`` uses), less NOT_SECRET_SUFFIXES."""
    from celery.app.utils import HIDDEN_SETTINGS

    name = str(key)
    return bool(HIDDEN_SETTINGS.search(name)) and not name.lower().endswith(NOT_SECRET_SUFFIXES)


def user_settings(conf: Any) -> dict[Any, Any]:
    """The settings whose value is not Celery's default (``celery.app.defaults.DEFAULTS``): a
    default holds no secret, and some defaults look like one to HIDDEN_SETTINGS
    (``cosmosdbsql_database_name = 'celerydb'``)."""
    from celery.app.defaults import DEFAULTS

    return {k: v for k, v in conf.items() if k not in DEFAULTS or DEFAULTS[k] != v}


def hidden_values(settings: Mapping[Any, Any]) -> list[str]:
    """Every secret in the settings the user set: the values of :func:`hidden_setting` names at
    any depth of nested options, and the password of every URL anywhere in them (broker_read_url,
    database_url, a Sentinel URL in transport options...). A URL contributes only its password."""
    found: list[str] = []
    for key, value in settings.items():
        if isinstance(value, Mapping):
            found += hidden_values(value)
        elif isinstance(value, (list, tuple)):  # a failover list of broker URLs
            found += [pw for item in value if isinstance(item, str) for pw in passwords_of(item)]
        elif isinstance(value, str) and value:
            if "://" in value:
                found += passwords_of(value)
            elif hidden_setting(key):
                found.append(value)
    return found


# The password may hold an unencoded '@' (kombu and redis-py split userinfo at the last '@'), so
# it runs greedily to the last '@' before the host.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^\s/]*)@")


def redact_url(url: str | None) -> str:
    """A URL safe to print: the password, if any, becomes ``**``. Also handles ``;``-separated
    failover lists, which kombu accepts for brokers."""
    if not url:
        return ""
    return ";".join(
        _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", part) for part in url.split(";")
    )


MIN_LITERAL_SECRET = 4  # shorter passwords are masked inside URLs only (see redact)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Scrub URL passwords and each known secret (also URL-quoted) out of any text.

    A password shorter than MIN_LITERAL_SECRET is masked in URLs but not as a bare substring:
    replacing every "y" in a report would make it unreadable and reveal the password anyway.
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    for secret in secrets:
        if len(secret) < MIN_LITERAL_SECRET:
            continue
        for spelling in sorted({secret, quote(secret, safe=""), quote(secret)}, key=len, reverse=True):
            if spelling:
                text = text.replace(spelling, MASK)
    return text


def resolve_target(
    app: str | None = None,
    broker: str | None = None,
    backend: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """Pick the target by the documented order and build the Celery app we read settings from.
    An error raised on the way carries the passwords of every URL given (errors.carrying), so the
    error line is scrubbed of them even when a URL did not parse."""
    env = os.environ if environ is None else environ
    given = [broker, backend, env.get("CELERY_BROKER_URL"), env.get("CELERY_RESULT_BACKEND")]
    with carrying(p for url in given for p in passwords_of(url)):
        return _resolve(app, broker, backend, env)


def _resolve(app: str | None, broker: str | None, backend: str | None, env: Mapping[str, str]) -> Target:
    if app:
        celery_app = import_app(app)
        if broker:
            celery_app.conf.broker_url = broker
        if backend:
            celery_app.conf.result_backend = backend
        return _checked(Target(
            broker_url=str(celery_app.conf.broker_url or "amqp://guest@localhost:5672//"),
            backend_url=str(celery_app.conf.result_backend or "disabled://"),
            source=TargetSource.APP, app=celery_app, app_name=app,
        ))
    if broker or backend:
        return _checked(_built(broker or "amqp://guest@localhost:5672//",
                               backend or "disabled://", TargetSource.FLAGS))
    if env.get("CELERY_BROKER_URL") or env.get("CELERY_RESULT_BACKEND"):
        return _checked(_built(env.get("CELERY_BROKER_URL") or "amqp://guest@localhost:5672//",
                               env.get("CELERY_RESULT_BACKEND") or "disabled://",
                               TargetSource.ENV))
    scratch = tempfile.mkdtemp(prefix="celerydiag-embedded-")
    target = _built("memory://", f"db+sqlite:///{scratch}/results.sqlite", TargetSource.EMBEDDED)
    # The memory transport polls once a second by default; our own broker should not add that.
    target.conf.broker_transport_options = {"polling_interval": 0.01}
    return Target(target.broker_url, target.backend_url, target.source, target.app,
                  scratch_dir=scratch)


def _built(broker: str, backend: str, source: TargetSource) -> Target:
    from celery import Celery  # heavy: only when a command needs a target

    celery_app = Celery("celerydiag-target", broker=broker, backend=backend,
                        set_as_current=False)
    return Target(broker_url=broker, backend_url=backend, source=source, app=celery_app)


def _checked(target: Target) -> Target:
    """Fail early, as usage, on a broker or backend scheme Celery does not know."""
    with carrying(target.secrets()):  # the app's own password settings too
        return _known_schemes(target)


def _known_schemes(target: Target) -> Target:
    from celery.app.backends import by_url
    from kombu import Connection

    try:
        Connection(target.broker_url)  # resolves the transport class; no network
    except Exception as exc:  # KeyError 'No such transport', ImportError of a missing library
        raise InputError(
            E_BROKER_SCHEME.format(url=redact_url(target.broker_url), error=one_line(exc)),
            H_BROKER_SCHEME,
        ) from None
    try:
        by_url(target.backend_url, target.app.loader)
    except Exception as exc:  # ImproperlyConfigured, ValueError, ImportError of a missing driver
        raise InputError(
            E_BACKEND_SCHEME.format(url=redact_url(target.backend_url), error=one_line(exc)),
            H_BACKEND_SCHEME,
        ) from None
    return target


def import_app(spec: str) -> Any:
    """Import the user's app the way ``celery -A`` does (module, module:attr, package)."""
    from celery.app.utils import find_app

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = find_app(spec)
    except BaseException as exc:  # the user's module may raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise InputError(E_APP_IMPORT.format(app=spec, error=one_line(exc)), H_APP_IMPORT) from None
    return _celery_app(spec, found)


def _celery_app(spec: str, found: Any) -> Any:
    """``found`` if it is a Celery app. ``find_app`` returns whatever ``module:attr`` names (a
    string, a module, a function), and the first ``.conf`` read would be our AttributeError."""
    from celery import Celery

    if not isinstance(found, Celery):
        what = "module" if isinstance(found, types.ModuleType) else type(found).__name__
        kind = "None" if found is None else f"{'an' if what[0] in 'aeiou' else 'a'} {what}"
        raise InputError(f"--app {spec!r} is {kind}, not a Celery app", H_APP_IMPORT)
    return found

