"""Celery apps of our own that talk to the target's services exactly as the target's processes do.

Why: the backend probes and the e2e probe each need a fresh app (never the user's: we set
timeouts, scratch tables and queues on it) carrying the target's transport, serializer and
backend settings, and nothing else (no routes, imports, beat schedule). The three hand copies
of that filter differed in whether they skipped old-style UPPERCASE names, which Celery refuses
to mix with new-style ones in one ``conf.update``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celerydiag.target import Target

ALWAYS_SKIPPED = frozenset({"broker_url", "result_backend"})  # given to the app explicitly


def copied_settings(target: Target, prefixes: tuple[str, ...], skip: Iterable[str] = ()) -> dict[str, Any]:
    """The target's (new-style, lowercase) settings whose names start with ``prefixes``."""
    conf = target.conf
    skipped = ALWAYS_SKIPPED | set(skip)
    return {k: conf.get(k) for k in conf.keys()
            if isinstance(k, str) and k.islower() and k.startswith(prefixes) and k not in skipped}


def fresh_app(target: Target, name: str, prefixes: tuple[str, ...], skip: Iterable[str] = (),
              broker: bool = False) -> Any:
    """A new Celery app on the target's result backend (and broker, if asked) with the settings
    :func:`copied_settings` selects. Never the current app: the user's stays untouched."""
    from celery import Celery

    app = Celery(name, broker=target.broker_url if broker else None, backend=target.backend_url,
                 set_as_current=False)
    app.conf.update(copied_settings(target, prefixes, skip))
    return app


REDIS_COPIED = ("result_", "redis_", "accept_content")
NO_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0, "interval_max": 0}


def redis_backend_app(target: Target, timeout_s: float) -> Any:
    """An app on the target's Redis result backend with its result settings (key prefix, TLS,
    serializers) and our bounds: ``timeout_s`` socket timeouts instead of Celery's 120 s, one
    retry, no always-retry. Celery's own backend code then reads and writes as the user's does."""
    app = fresh_app(target, "celerydiag-backend", REDIS_COPIED)
    options = dict(target.conf.get("result_backend_transport_options") or {})
    options["retry_policy"] = dict(NO_RETRY)
    app.conf.update(redis_socket_timeout=timeout_s, redis_socket_connect_timeout=timeout_s,
                    result_backend_transport_options=options, result_backend_always_retry=False)
    return app
