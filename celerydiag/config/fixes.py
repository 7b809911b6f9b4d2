"""Fix builders that more than one probe prints: pasteable Python, and the one recommendation
for each setting that several findings change.

Why here and not in a probe: the config, backend and broker probes all print
``database_engine_options`` or ``broker_transport_options``; if each built its own, pasting two
fixes would leave two different dicts, the second silently overwriting the first. Every probe
imports these; none imports another probe for them.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from celerydiag.access.backend import TableRef, database_url, dialect
from celerydiag.target import AMQP_SCHEMES, Family, Target, family_of, hidden_setting

NULLPOOL_FILTER_FROM = (5, 6, 3)  # A.2 / G.5: max_overflow/echo_pool crashed the NullPool path before
CONNECT_TIMEOUT_S = 5


# ---- pasteable Python -------------------------------------------------------------------------

def _literal(value: Any) -> str | None:
    """Python source for a value that round-trips through ast.literal_eval, else None."""
    text = repr(value)
    try:
        return text if ast.literal_eval(text) == value else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _source(value: Any, indent: int = 0) -> str:
    """Source for a (possibly nested) dict; values we must not (a :func:`hidden_setting`, as Celery
    would hide it) or cannot print become comments telling the user to keep their own, so the
    text stays valid Python and leaks no secret."""
    if not isinstance(value, Mapping):
        return _literal(value) or "None"
    if not value:
        return "{}"
    pad = " " * (indent + 4)
    lines = ["{"]
    for key, item in value.items():
        text = None if hidden_setting(key) else (
            _source(item, indent + 4) if isinstance(item, Mapping) else _literal(item))
        if text is None or _literal(key) is None:
            lines.append(f"{pad}# {str(key)!r}: keep your existing value")
        else:
            lines.append(f"{pad}{_literal(key)}: {text},")
    lines.append(" " * indent + "}")
    return "\n".join(lines)


def assignments(**settings: Any) -> str:
    """``name = value`` lines, one per setting, in the order given."""
    return "".join(f"{name} = {_source(value)}\n" for name, value in settings.items())


# ---- the database backend -----------------------------------------------------------------------

def db_dialect(target: Target) -> str:
    """``postgresql``, ``mysql``, ``mariadb``, ``sqlite`` for a database backend, else ''. Never
    raises: the static probe must describe a URL it cannot parse, not crash on it."""
    if family_of(target.backend_scheme) is not Family.DATABASE:
        return ""
    try:
        return dialect(database_url(target))
    except Exception:  # sqlalchemy.exc.ArgumentError: a URL SQLAlchemy cannot parse
        return ""


def engine_options(conf: Any) -> dict[str, Any]:
    return dict(conf.get("database_engine_options") or {})


def has_connect_timeout(options: Mapping[str, Any]) -> bool:
    return "connect_timeout" in dict(options.get("connect_args") or {})


def recommended_engine_options(conf: Any, target: Target, celery: tuple[int, ...]) -> dict[str, Any]:
    """The one database_engine_options every database fix shows: the user's options (Celery's
    defaults when unset) minus what crashes on ``celery``, plus READ COMMITTED on MySQL and a
    connect timeout."""
    options = engine_options(conf)
    options.pop("autocommit", None)
    if celery < NULLPOOL_FILTER_FROM:
        options.pop("max_overflow", None)
        options.pop("echo_pool", None)
    name = db_dialect(target)
    if name in ("mysql", "mariadb"):
        options["isolation_level"] = "READ COMMITTED"
    if name in ("mysql", "mariadb", "postgresql") and not has_connect_timeout(options):
        options["connect_args"] = dict(options.get("connect_args") or {},
                                       connect_timeout=CONNECT_TIMEOUT_S)
    return options


def index_ddl(conf: Any) -> str:
    """The DDL for the indexes SQLAlchemy's index=True creates on fresh tables (ix_<table>_<col>)."""
    lines = []
    for kind in ("task", "group"):
        table = TableRef.from_conf(conf, kind)
        lines.append(f"CREATE INDEX ix_{table.name}_date_done ON {table.qualified} (date_done);")
    return "\n".join(lines)


# ---- the broker ---------------------------------------------------------------------------------

def transport_options(conf: Any) -> dict[str, Any]:
    return dict(conf.get("broker_transport_options") or {})


def recommended_transport_options(conf: Any, target: Target) -> dict[str, Any]:
    """The one broker_transport_options the confirm fixes show: no ignored or unknown keys."""
    options = transport_options(conf)
    amqp = target.broker_scheme in AMQP_SCHEMES
    if "confirm_delivery" in options:
        wanted = options.pop("confirm_delivery")
        if amqp and "confirm_publish" not in options:
            options["confirm_publish"] = bool(wanted)
    if not amqp:
        options.pop("confirm_publish", None)
    return options
