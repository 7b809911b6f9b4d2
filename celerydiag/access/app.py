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
