"""``--format markdown``: a summary table, then one section per finding with its fix."""

from __future__ import annotations

from typing import Any, TextIO

from celerydiag.findings import Report, Severity
from celerydiag.render.words import (
    evidence_lines,
    has_hosts,
    headline,
    host_of,
    impact_cell,
    impact_phrase,
    probe_lines,
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(report: Report, stream: TextIO, **_: Any) -> None:
    w = stream.write
    w("# celerydiag report\n\n")
    w(f"{headline(report)}\n\n")
    if has_hosts(report):  # a merged report: say where each finding was measured
        w("| severity | id | host | impact ms | title |\n|---|---|---|---:|---|\n")
        for f in report.findings:
            w(f"| {f.severity} | `{f.id}` | {_cell(host_of(f) or '')} | {impact_cell(f)} | {_cell(f.title)} |\n")
    else:
        w("| severity | id | impact ms | title |\n|---|---|---:|---|\n")
        for f in report.findings:
            w(f"| {f.severity} | `{f.id}` | {impact_cell(f)} | {_cell(f.title)} |\n")
    w("\n")
    for f in report.findings:
        if f.severity == Severity.OK:
            continue
        w(f"## {f.severity}: {f.title}\n\n`{f.id}` · cause {f.cause} · "
          f"{impact_phrase(f)}\n\n")
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
    w("## Probes\n\n")
    for line in probe_lines(report):
        w(f"- {line}\n")
