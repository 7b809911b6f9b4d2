"""What differs between the versions celerydiag supports, in one place, with no extra dependency.

``assert_never`` (a newer Python's, for 3.9 and 3.10) closes an exhaustive dispatch over an Enum:
mypy reports a member the ``if`` chain forgot, and at run time a forgotten member is our bug, not
the user's (exit 4). ``version_tuple`` and friends compare the installed Celery and SQLAlchemy
releases for the facts that changed between them; here so that the config, backend and e2e code
need not import another probe (or the probe registry) to do it. ``backend_reference`` and
``own_session_manager`` let the probes plug their own result backend into every Celery from 5.3
(each says what the older ones lack).
"""

from __future__ import annotations

import re
import sys
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

if sys.version_info >= (3, 11):
    from typing import assert_never
else:
    def assert_never(value: NoReturn) -> NoReturn:  # typing.assert_never's own behaviour
        raise AssertionError(f"Expected code to be unreachable, but got: {value!r}")


def version_tuple(text: str) -> tuple[int, ...]:
    """``"5.7.0rc1"`` → ``(5, 7)``, ``"2.1.9+local"`` → ``(2, 1, 9)``: the leading numbers only,
    so a pre-release never compares as newer than its release."""
    parts = []
    for piece in re.split(r"[.+-]", text):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def backend_reference(cls: type) -> str:
    """What to assign to ``app.backend_cls`` so that ``app.backend`` is an instance of ``cls``, on
    every Celery: ``"celerydiag.compat:<name>"``. A class itself works only from Celery 5.7: before,
    ``celery.app.backends.by_url`` tests ``'://' in backend`` first (TypeError: argument of type
    'type' is not iterable); a ``module:attribute`` string goes to ``symbol_by_name`` in all of them.
    :func:`forget_backend` undoes it (the caller's cleanup)."""
    name = f"_backend_{cls.__name__}_{id(cls):x}"
    globals()[name] = cls
    return f"{__name__}:{name}"


def forget_backend(reference: str) -> None:
    """Drop what :func:`backend_reference` registered (idempotent)."""
    globals().pop(reference.rpartition(":")[2], None)


def own_session_manager(backend: Any) -> Any:
    """``backend``'s own SessionManager, made if its Celery gives it none.

    Celery 5.5+ sets ``DatabaseBackend.session_manager`` in ``__init__`` and ``ResultSession()``
    uses it. 5.3 and 5.4 have no such attribute: ``ResultSession``'s default argument is *one*
    SessionManager shared by every DatabaseBackend of the process (the user's too), so a backend
    that needs its own ``forked``/``prepared`` flags must pass its own manager to ``ResultSession``
    (see ``backend/scratch.py``)."""
    manager = getattr(backend, "session_manager", None)
    if manager is None:
        from celery.backends.database.session import SessionManager

        manager = backend.session_manager = SessionManager()
    return manager


def on_new_engine(manager: Any, callback: Callable[[Any], None]) -> None:
    """Call ``callback(engine)`` on each engine Celery's SessionManager ``manager`` creates.

    Celery 5.7 has this built in (``SessionManager.engine_callback``, the
    ``database_engine_callback`` setting). Before 5.7 neither exists, so the manager's
    ``get_engine`` is wrapped on this one instance: the callback runs once per engine (the forked
    path caches its engine; the NullPool path makes one per call), as 5.7's does."""
    if hasattr(manager, "engine_callback"):
        manager.engine_callback = callback
        return
    original = manager.get_engine
    seen: weakref.WeakSet[Any] = weakref.WeakSet()

    def get_engine(dburi: str, **kwargs: Any) -> Any:
        engine = original(dburi, **kwargs)
        if engine not in seen:
            seen.add(engine)
            callback(engine)
        return engine

    manager.get_engine = get_engine


def celery_version() -> tuple[int, ...]:
    import celery

    return version_tuple(celery.__version__)


def sqlalchemy_version() -> tuple[int, ...]:
    import sqlalchemy  # heavy-ish: only when a check needs it

    return version_tuple(sqlalchemy.__version__)


__all__ = ["assert_never", "backend_reference", "celery_version", "forget_backend", "on_new_engine",
           "own_session_manager", "sqlalchemy_version", "version_tuple"]
