"""Version numbers as tuples, for the facts that changed between Celery and SQLAlchemy releases.

Its own module because the config, backend and e2e code all compare versions, and none of them
should import another probe (or the probe registry) to do it.
"""

from __future__ import annotations

import re


def version_tuple(text: str) -> tuple[int, ...]:
    """``"5.7.0rc1"`` → ``(5, 7)``, ``"2.1.9+local"`` → ``(2, 1, 9)``: the leading numbers only,
    so a pre-release never compares as newer than its release."""
    parts = []
    for piece in re.split(r"[.+-]", text):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def celery_version() -> tuple[int, ...]:
    import celery

    return version_tuple(celery.__version__)


def sqlalchemy_version() -> tuple[int, ...]:
    import sqlalchemy  # heavy-ish: only when a check needs it

    return version_tuple(sqlalchemy.__version__)
