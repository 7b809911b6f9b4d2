"""Output formats: one function each, each of a Report. Renderers know nothing of Celery.

Signature: ``render(report, stream, *, fail_on, color) -> None``. Adding a format is one module
and one line in ``FORMATS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from celerydiag.findings import Report, Severity
from celerydiag.render import json as _json
from celerydiag.render import junit as _junit
from celerydiag.render import markdown as _markdown
from celerydiag.render import text as _text

Renderer = Callable[..., None]

FORMATS: dict[str, Renderer] = {
    "text": _text.render,
    "json": _json.render,
    "markdown": _markdown.render,
    "junit": _junit.render,
}


def render(report: Report, fmt: str, stream: TextIO, *, fail_on: Severity = Severity.CRITICAL,
           color: bool = False) -> None:
    FORMATS[fmt](report, stream, fail_on=fail_on, color=color)
