"""What differs between the versions celerydiag supports, in one place, with no extra dependency.

``assert_never`` (a newer Python's, for 3.9 and 3.10) closes an exhaustive dispatch over an Enum:
mypy reports a member the ``if`` chain forgot, and at run time a forgotten member is our bug, not
the user's (exit 4). ``version_tuple`` and friends compare the installed Celery and SQLAlchemy
releases for the facts that changed between them; here so that the config, backend and e2e code
need not import another probe (or the probe registry) to do it.
"""

from __future__ import annotations

import re
import sys
from typing import NoReturn

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


def celery_version() -> tuple[int, ...]:
    import celery

    return version_tuple(celery.__version__)


def sqlalchemy_version() -> tuple[int, ...]:
    import sqlalchemy  # heavy-ish: only when a check needs it

    return version_tuple(sqlalchemy.__version__)


__all__ = ["assert_never", "celery_version", "sqlalchemy_version", "version_tuple"]
