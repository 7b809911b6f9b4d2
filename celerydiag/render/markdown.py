"""``--format markdown``: a summary table, then one section per finding with its fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

from celerydiag.findings import Finding, Report, Severity
from celerydiag.render.words import (
    evidence_lines,
    has_hosts,
    headline,
    host_of,
    impact_cell,
    impact_phrase,
    paste_block,
    probe_lines,
    verdict,
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(report: Report, stream: TextIO, **_: Any) -> None:
    w = stream.write
    w("# celerydiag report\n\n")
    w("**" + " ".join(verdict(report)) + "**\n\n")
    w(f"{headline(report)}\n\n")
    _summary_table(report, w)
    w("\n")
    for f in report.findings:
        if f.severity != Severity.OK:
            _section(f, w)
    w("## Probes\n\n")
    for line in probe_lines(report):
        w(f"- {line}\n")
    block = paste_block(report)
    if block:  # last: the one block to paste (issue 17)
        w(f"\n## Paste into your Celery config (every fix at once)\n\n```python\n{block}\n```\n")


def _summary_table(report: Report, w: Callable[[str], Any]) -> None:
    """One row per finding, ranked; a merged report also says where each was measured."""
    if has_hosts(report):
        w("| severity | id | host | impact ms | title |\n|---|---|---|---:|---|\n")
        for f in report.findings:
            w(f"| {f.severity} | `{f.id}` | {_cell(host_of(f) or '')} | {impact_cell(f)} | {_cell(f.title)} |\n")
    else:
        w("| severity | id | impact ms | title |\n|---|---|---:|---|\n")
        for f in report.findings:
            w(f"| {f.severity} | `{f.id}` | {impact_cell(f)} | {_cell(f.title)} |\n")


def _section(f: Finding, w: Callable[[str], Any]) -> None:
    """A finding's detail, evidence and fix, the fix's config in a fenced block to paste."""
    w(f"## {f.severity}: {f.title}\n\n`{f.id}` · cause {f.cause} · {impact_phrase(f)}\n\n")
    if f.detail:
        w(f"{f.detail}\n\n")
    for line in evidence_lines(f.evidence):
        w(f"- {line}\n")
    if f.evidence:
        w("\n")
    if f.fix:
        w(f"**Fix:** {f.fix.summary}\n\n")
        if f.fix.config:
            w(f"```python\n{f.fix.config.rstrip()}\n```\n\n")
        for doc in f.fix.docs:
            w(f"- <{doc}>\n")
        if f.fix.docs:
            w("\n")
