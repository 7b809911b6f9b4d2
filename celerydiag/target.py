"""Which Celery deployment we measure, where each of its URLs came from, and how to print it safely.

Each URL is chosen as Celery chooses it (celery/bin/celery.py, celery/app/utils.py), first match
wins, broker and backend independently: the flag (``--broker`` / ``--backend``, which `celery -b`
and `--result-backend` turn into the environment variables below), ``CELERY_BROKER_URL`` /
``CELERY_RESULT_BACKEND`` (``Settings.broker_url`` reads them before the app's own setting), the
``--app``'s ``broker_url`` / ``result_backend``, and Celery's defaults. With nothing named at all
we measure the embedded default (in-memory broker, SQLite results in a temp dir) so
``celerydiag doctor`` does real work on a machine with nothing installed. Every URL is checked
(celerydiag.access.urls) before any probe runs. Raw URLs hold passwords: they stay inside Target
and every string bound for output goes through :func:`redact` first.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import types
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

from celerydiag.errors import E_APP_IMPORT, H_APP_IMPORT, InputError, carrying, one_line

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


class Origin(str, Enum):
    """Where one URL came from (the report's ``broker_source`` / ``backend_source``)."""

    FLAG = "flag"  # --broker / --backend
    ENV = "env"  # CELERY_BROKER_URL / CELERY_RESULT_BACKEND
    APP = "app"  # the --app's broker_url / result_backend
    DEFAULT = "default"  # nothing set it: Celery's default (amqp://guest@localhost//, disabled://)
    EMBEDDED = "embedded"

    def __str__(self) -> str:
        return self.value


# What each whole-target source implies for a URL, for a Target built without origins.
_ORIGIN_OF_SOURCE = {"app": Origin.APP, "flags": Origin.FLAG, "env": Origin.ENV, "embedded": Origin.EMBEDDED}
DEFAULT_BROKER = "amqp://guest@localhost:5672//"
DEFAULT_BACKEND = "disabled://"
BROKER_ENV = "CELERY_BROKER_URL"
BACKEND_ENV = "CELERY_RESULT_BACKEND"


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
    broker_origin: Origin | None = None  # None: the one ``source`` implies
    backend_origin: Origin | None = None

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

    def origins(self) -> tuple[Origin, Origin]:
        """Where the broker URL and the backend URL came from."""
        implied = _ORIGIN_OF_SOURCE[str(self.source)]
        return self.broker_origin or implied, self.backend_origin or implied

    def to_dict(self) -> dict[str, str]:
        """The report's ``target``: ``source`` says how the target was named (app|flags|env|
        embedded, as in celerydiag.report/2 from the start); ``broker_source`` and
        ``backend_source`` where each URL came from (flag|env|app|default|embedded; reports
        written before they existed lack them, so readers must treat them as optional)."""
        broker_origin, backend_origin = self.origins()
        return {
            # redact() too: a password urllib cannot split ('#', '/') escapes the URL pattern
            "broker": self.redact(redact_url(self.broker_url)),
            "backend": self.redact(redact_url(self.backend_url)),
            "source": str(self.source),
            "broker_source": str(broker_origin),
            "backend_source": str(backend_origin),
        }

    def describe(self) -> str:
        """One line for humans: what we measured and where each URL came from."""
        if self.source is TargetSource.EMBEDDED:
            return (f"broker {self.broker_url}, backend {self.backend_url} (embedded default: in-memory "
                    "broker, SQLite results in a temp dir, in-process worker; nothing configured: pass "
                    "--app or --broker/--backend to measure your deployment)")
        broker_origin, backend_origin = self.origins()
        return (f"broker {redact_url(self.broker_url)} ({self._origin_words(broker_origin, 'broker')}), "
                f"backend {redact_url(self.backend_url)} ({self._origin_words(backend_origin, 'backend')})")

    def _origin_words(self, origin: Origin, role: str) -> str:
        return {
            Origin.FLAG: f"from --{role}",
            Origin.ENV: f"from {BROKER_ENV if role == 'broker' else BACKEND_ENV}",
            Origin.APP: f"from --app {self.app_name}",
            Origin.DEFAULT: "Celery's default",
            Origin.EMBEDDED: "embedded default",
        }[origin]


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
    """Every password in a URL or a ``;``-separated failover list: as typed, percent-decoded, and
    what urllib reads there. A password that does not parse (``pa#ss/word``: urlsplit stops the
    host at ``#``) is whole here, because it is the whole that must never reach an error line;
    :func:`redact` also scrubs its pieces."""
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
            found += [pw, unquote(pw)]
    return list(dict.fromkeys(s for s in found if s))  # each spelling once, in the order found


def _split_userinfo(url: str) -> tuple[str, str, str] | None:
    """(``scheme://``, userinfo, ``host...``) split at the last ``@`` (where kombu and redis-py
    split, and the only reading under which a password may hold ``/ ? #``), or None."""
    if "://" not in url:
        return None
    scheme, rest = url.split("://", 1)
    if "@" not in rest or rest.startswith("/"):
        return None
    userinfo, host = rest.rsplit("@", 1)
    return f"{scheme}://", userinfo, host


def _raw_password(url: str) -> list[str]:
    """What sits between ``user:`` and the last ``@``, as typed and percent-decoded."""
    split = _split_userinfo(url)
    if split is None or ":" not in split[1]:
        return []
    raw = split[1].split(":", 1)[1]
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


# In free text (an error message, a driver's line) a URL ends at whitespace; the password may
# hold '@' (kombu and redis-py split userinfo at the last '@') and '/', '?', '#' (what a user
# typed unencoded), so it runs greedily to the last '@' of the URL. A password holding a space is
# caught by the target's known secrets instead (redact's second step).
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>\S*)@")


def redact_url(url: str | None) -> str:
    """A URL safe to print: the password, if any, becomes ``**``. Also handles ``;``-separated
    failover lists, which kombu accepts for brokers. Split by structure, not by a pattern, so a
    password holding a space or ``/ ? #`` is masked whole too."""
    if not url:
        return ""
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    split = _split_userinfo(url)
    if split is None or ":" not in split[1]:
        return url
    scheme, userinfo, host = split
    return f"{scheme}{userinfo.split(':', 1)[0]}:{MASK}@{host}"


MIN_LITERAL_SECRET = 4  # shorter passwords, and shorter pieces of one, are masked inside URLs only
# Where a password that did not parse was cut (urllib at / ? #, the userinfo at : and @) and what
# an encoder turns into something else (% + space): each piece between them may be printed alone.
_CUTS = re.compile(r"[#?/@:%+\s]+")


def spellings(secret: str) -> set[str]:
    """Every form in which ``secret`` could reach an output: as given, percent-decoded, quoted as
    urllib and SQLAlchemy quote it (also with ``+`` for a space), and each piece of those at least
    MIN_LITERAL_SECRET long ("Sup3rSecretPw" of "Sup3rSecretPw#x", in kombu's port error)."""
    whole = {secret, unquote(secret), quote(secret, safe=""), quote(secret), quote_plus(secret),
             quote(unquote(secret), safe=""), quote_plus(unquote(secret))}
    pieces = {piece for form in (secret, unquote(secret)) for piece in _CUTS.split(form)}
    return {s for s in whole | pieces if len(s) >= MIN_LITERAL_SECRET}


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Scrub URL passwords and each known secret (in every :func:`spellings` form) out of any text.

    A secret shorter than MIN_LITERAL_SECRET is masked in URLs but not as a bare substring:
    replacing every "y" in a report would make it unreadable and reveal the password anyway.
    """
    return scrub(_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text), secrets)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Only the known secrets (every :func:`spellings` form) out of ``text``: for our own words,
    such as a hint showing the form ``amqp://USER:PASSWORD@HOST``, which :func:`redact` would mask."""
    every = {form for secret in secrets if secret for form in spellings(secret)}
    for form in sorted(every, key=len, reverse=True):  # the whole before its pieces
        text = text.replace(form, MASK)
    return text


def resolve_target(
    app: str | None = None,
    broker: str | None = None,
    backend: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """Pick each URL by Celery's order (module docstring), build the Celery app we read settings
    from, and check both URLs. An error raised on the way carries the passwords of every URL
    given (errors.carrying), so the error line is scrubbed of them even when a URL did not parse."""
    env = os.environ if environ is None else environ
    given = [broker, backend, env.get(BROKER_ENV), env.get(BACKEND_ENV)]
    with carrying(p for url in given for p in passwords_of(url)):
        return _resolve(app, broker, backend, env)


def _pick(flag: str | None, env_value: str | None, app_value: Any, default: str) -> tuple[str, Origin]:
    """One URL by Celery's order. An empty environment variable counts as unset, as in Celery
    (``os.environ.get(...) or ...``); an empty flag was refused by the CLI already."""
    if flag is not None:
        return flag, Origin.FLAG
    if env_value:
        return env_value, Origin.ENV
    if app_value:
        return str(app_value), Origin.APP
    return default, Origin.DEFAULT


def _resolve(app: str | None, broker: str | None, backend: str | None, env: Mapping[str, str]) -> Target:
    if app is not None:
        celery_app = import_app(app)
        conf = celery_app.conf  # read without Settings' properties, which read os.environ first
        broker_url, broker_origin = _pick(broker, env.get(BROKER_ENV), conf.first("broker_url", "broker_host"),
                                          DEFAULT_BROKER)
        backend_url, backend_origin = _pick(backend, env.get(BACKEND_ENV),
                                            conf.first("result_backend", "CELERY_RESULT_BACKEND"), DEFAULT_BACKEND)
        # What the probes read from the conf (config checks) is what we measure.
        if broker_origin in (Origin.FLAG, Origin.ENV):
            conf.broker_url = broker_url
        if backend_origin in (Origin.FLAG, Origin.ENV):
            conf.result_backend = backend_url
        return _checked(Target(broker_url=broker_url, backend_url=backend_url, source=TargetSource.APP,
                               app=celery_app, app_name=app, broker_origin=broker_origin,
                               backend_origin=backend_origin))
    if broker is not None or backend is not None or env.get(BROKER_ENV) or env.get(BACKEND_ENV):
        broker_url, broker_origin = _pick(broker, env.get(BROKER_ENV), None, DEFAULT_BROKER)
        backend_url, backend_origin = _pick(backend, env.get(BACKEND_ENV), None, DEFAULT_BACKEND)
        source = TargetSource.FLAGS if broker is not None or backend is not None else TargetSource.ENV
        built = _built(broker_url, backend_url, source)
        return _checked(Target(broker_url, backend_url, source, built.app, broker_origin=broker_origin,
                               backend_origin=backend_origin))
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


def where_from(target: Target, role: str) -> str:
    """How an error names the origin of the broker (``role`` "broker") or backend URL."""
    origin = target.origins()[0 if role == "broker" else 1]
    return {
        Origin.FLAG: f"--{role}",
        Origin.ENV: BROKER_ENV if role == "broker" else BACKEND_ENV,
        Origin.APP: f"{'broker_url' if role == 'broker' else 'result_backend'} of --app {target.app_name}",
        Origin.DEFAULT: f"Celery's default {role}",
        Origin.EMBEDDED: f"the embedded {role}",
    }[origin]


def _checked(target: Target) -> Target:
    """Fail early, as usage, on a URL Celery would misread or cannot use (access.urls)."""
    from celerydiag.access.urls import check_backend_url, check_broker_url

    with carrying(target.secrets()):  # the app's own password settings too
        check_broker_url(target.broker_url, where_from(target, "broker"), target.conf)
        check_backend_url(target.backend_url, where_from(target, "backend"), target.app)
        return target


def pin_environment(target: Target, environ: MutableMapping[str, str] | None = None) -> None:
    """Make every Celery app of this process use the target's URLs, as `celery -b URL` does
    (it sets CELERY_BROKER_URL): Celery's ``conf.broker_url`` and ``conf.result_backend`` read
    the environment first, so an app built with ``broker=X`` would otherwise connect to the
    shell's CELERY_BROKER_URL while the report says X. The CLI restores the variables after."""
    env = os.environ if environ is None else environ
    if target.source is not TargetSource.EMBEDDED:
        env[BROKER_ENV], env[BACKEND_ENV] = target.broker_url, target.backend_url


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

