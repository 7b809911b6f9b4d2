"""Output formats: one function each, each of a Report. Renderers know nothing of Celery.

Signature: ``render(report, stream, *, fail_on, color, verbose) -> None``. Adding a format touches two
files: its module here (``render/<name>.py``) and this one (a member of :class:`OutputFormat`
and its branch in :func:`renderer`; mypy and the enum-iterating test name any branch forgotten).
The CLI's ``--format`` choices come from the enum, so they cannot drift from the renderers.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TextIO

from celerydiag.compat import assert_never
from celerydiag.findings import Report, Severity
from celerydiag.render import html as _html
from celerydiag.render import json as _json
from celerydiag.render import junit as _junit
from celerydiag.render import markdown as _markdown
from celerydiag.render import text as _text

Renderer = Callable[..., None]


class OutputFormat(str, Enum):
    """Every ``--format``: the one list the CLI's choices and the dispatch come from."""

    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"
    JUNIT = "junit"
    HTML = "html"

    def __str__(self) -> str:
        return self.value


def renderer(fmt: OutputFormat) -> Renderer:
    """The function that writes ``fmt``; exhaustive, so a new member without one fails mypy."""
    if fmt is OutputFormat.TEXT:
        return _text.render
    if fmt is OutputFormat.JSON:
        return _json.render
    if fmt is OutputFormat.MARKDOWN:
        return _markdown.render
    if fmt is OutputFormat.JUNIT:
        return _junit.render
    if fmt is OutputFormat.HTML:
        return _html.render
    assert_never(fmt)


def render(report: Report, fmt: OutputFormat | str, stream: TextIO, *, fail_on: Severity = Severity.CRITICAL,
           color: bool = False, verbose: bool = False) -> None:
    renderer(OutputFormat(fmt))(report, stream, fail_on=fail_on, color=color, verbose=verbose)
