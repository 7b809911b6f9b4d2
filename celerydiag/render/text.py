"""``--format text``: rich tables for a person at a terminal; the only renderer that imports rich."""

from __future__ import annotations

from typing import Any, TextIO

from celerydiag.findings import Report, Severity
from celerydiag.render.words import (
    evidence_lines,
    has_hosts,
    headline,
    host_of,
    impact_cell,
    latency_line,
    probe_lines,
)

STYLE = {Severity.CRITICAL: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan",
         Severity.OK: "green"}


def render(report: Report, stream: TextIO, *, color: bool = False, **_: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel
    from rich.syntax import Syntax
    from rich.table import Table

    console = Console(file=stream, force_terminal=color, no_color=not color, width=110,
                      highlight=False, soft_wrap=False)
    # Every string from a report is data, never rich markup: `celery[redis]` or a stray `[/]` in a
    # title, detail, reason or URL must print as written (and must not raise MarkupError).
    console.print(escape(headline(report)))
    line = latency_line(report)
    if line:
        console.print(escape(line))
    table = Table(title="Findings, worst first", show_lines=False, expand=False)
    table.add_column("severity")
    table.add_column("impact ms", justify="right")
    table.add_column("cause")
    hosts = has_hosts(report)
    if hosts:
        table.add_column("host")
    table.add_column("finding")
    for f in report.findings:
        host = [escape(host_of(f) or "")] if hosts else []
        table.add_row(f"[{STYLE[f.severity]}]{f.severity}[/]", impact_cell(f),
                      str(f.cause), *host, f"{escape(f.title)}\n[dim]{f.id}[/]")
    if report.findings:
        console.print(table)
    else:
        console.print("No findings.")
    for f in report.findings:
        if f.severity == Severity.OK:
            continue
        body = [f.detail] if f.detail else []
        body += evidence_lines(f.evidence)
        if f.fix:
            body.append(f"Fix: {f.fix.summary}")
        console.print(Panel(escape("\n".join(body)), title=f"[{STYLE[f.severity]}]{f.severity}[/] {f.id}",
                            title_align="left"))
        if f.fix and f.fix.config:
            # Config is pasted into a celeryconfig: never wrap or crop it at the console width.
            config = f.fix.config.rstrip()
            console.print(Syntax(config, "python", theme="ansi_dark", background_color="default",
                                 code_width=max(len(x) for x in config.splitlines())),
                          crop=False, soft_wrap=True)
        for doc in (f.fix.docs if f.fix else ()):
            console.print(f"  docs: {escape(doc)}", soft_wrap=True)
    console.print("Probes:")
    for line in probe_lines(report):
        console.print(f"  {escape(line)}")
    from celerydiag.config.paste import paste_block

    block = paste_block(report)
    if block:  # last: the one block to paste (issue 17)
        console.print("Paste block, every fix at once:")
        console.print(block.rstrip(), markup=False, highlight=False, crop=False, soft_wrap=True)
