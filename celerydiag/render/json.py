"""``--format json``: the report's own ``to_dict()``, strict JSON (no NaN), stable key order."""

from __future__ import annotations

import json
from typing import Any, TextIO


def render(report: Any, stream: TextIO, **_: Any) -> None:
    json.dump(report.to_dict(), stream, indent=2, ensure_ascii=False, allow_nan=False)
    stream.write("\n")
