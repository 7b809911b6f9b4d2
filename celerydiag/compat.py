"""What a newer Python has that celerydiag, supporting 3.9, needs: one place, no extra dependency.

``assert_never`` closes an exhaustive dispatch over an Enum: mypy reports a member the ``if``
chain forgot, and at run time a forgotten member is our bug, not the user's (exit 4).
"""

from __future__ import annotations

import sys
from typing import NoReturn

if sys.version_info >= (3, 11):
    from typing import assert_never
else:
    def assert_never(value: NoReturn) -> NoReturn:  # typing.assert_never's own behaviour
        raise AssertionError(f"Expected code to be unreachable, but got: {value!r}")

__all__ = ["assert_never"]
