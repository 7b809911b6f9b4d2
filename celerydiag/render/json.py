"""``--format json``: the report's own ``to_dict()``, strict JSON (no NaN), stable key order."""

from __future__ import annotations

import json
from typing import Any, TextIO


def render(report: Any, stream: TextIO, **_: Any) -> None:
    from celerydiag.config.paste import paste_block

    data = {**report.to_dict(), "paste_block": paste_block(report)}  # issue 17: every fix at once
    json.dump(data, stream, indent=2, ensure_ascii=False, allow_nan=False)
    stream.write("\n")
