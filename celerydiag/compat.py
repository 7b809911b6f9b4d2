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

import contextlib
import os
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


class HubWaker:
    """Wakes a kombu event loop (``worker.hub``) from another thread, so a worker told to stop
    (``state.should_terminate``) stops now rather than after its poll() times out.

    kombu 5.7's ``Hub.call_soon`` wakes the loop itself (its ``_waker``). Before 5.7 it only
    queues the callback: the loop sleeps in poll() for up to 10 s (``fire_timers``' max_delay),
    longer than the e2e probe waits for its worker, which then keeps consuming after we delete its
    queue and, reconnecting, declares the queue again. There a pipe of our own, registered as a
    reader on the hub, does what 5.7's waker does. Python 3.9 with Celery 5.3 resolves kombu
    5.6; Celery 5.5 pins kombu < 5.6."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.fds: tuple[int, int] | None = None
        if not hasattr(hub, "_waker"):
            read_fd, write_fd = os.pipe()
            os.set_blocking(read_fd, False)
            os.set_blocking(write_fd, False)
            self.fds = (read_fd, write_fd)
            hub.add_reader(read_fd, self._drain)

    def _drain(self) -> None:
        if self.fds is not None:
            with contextlib.suppress(OSError):
                os.read(self.fds[0], 512)

    def wake(self) -> None:
        self.hub.call_soon(lambda: None)  # kombu 5.7+: this alone wakes the loop
        if self.fds is not None:
            with contextlib.suppress(OSError):  # a full pipe has woken it already
                os.write(self.fds[1], b"\0")

    def close(self) -> None:
        """After the loop stopped: unregister and close our pipe (idempotent)."""
        if self.fds is None:
            return
        fds, self.fds = self.fds, None
        with contextlib.suppress(Exception):  # a hub the worker already closed
            self.hub.remove_reader(fds[0])
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def celery_version() -> tuple[int, ...]:
    import celery

    return version_tuple(celery.__version__)


def sqlalchemy_version() -> tuple[int, ...]:
    import sqlalchemy  # heavy-ish: only when a check needs it

    return version_tuple(sqlalchemy.__version__)


__all__ = ["HubWaker", "assert_never", "backend_reference", "celery_version", "forget_backend", "on_new_engine",
           "own_session_manager", "sqlalchemy_version", "version_tuple"]
