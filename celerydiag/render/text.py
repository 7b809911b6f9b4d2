"""``--format text``: rich tables for a person at a terminal; the only renderer that imports rich.

Order (issue 15): the verdict, the target, the observed latency, the findings that are not ok
(the passed checks folded into one line unless ``verbose``), each finding's detail, the probes,
and last the config to paste, in one block (:func:`words.paste_block`)."""

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
    ok_line,
    paste_block,
    probe_lines,
    verdict,
)

STYLE = {Severity.CRITICAL: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan",
         Severity.OK: "green"}
WIDTH = 110


def render(report: Report, stream: TextIO, *, color: bool = False, verbose: bool = False, **_: Any) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(file=stream, force_terminal=color, no_color=not color, width=WIDTH,
                      highlight=False, soft_wrap=False)
    # Every string from a report is data, never rich markup: `celery[redis]` or a stray `[/]` in a
    # title, detail, reason or URL must print as written (and must not raise MarkupError).
    for sentence in verdict(report):
        console.print(f"[bold]{escape(sentence)}[/]")
    console.print(escape(headline(report)))
    line = latency_line(report)
    if line:
        console.print(escape(line))
    _findings_table(console, report, verbose)
    for f in report.findings:
        if f.severity >= Severity.INFO:
            _details(console, f)
    console.print("Probes:")
    for line in probe_lines(report):
        console.print(f"  {escape(line)}")
    _config_block(console, paste_block(report))


def _findings_table(console: Any, report: Report, verbose: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    rows = [f for f in report.findings if verbose or f.severity != Severity.OK]
    table = Table(title="Findings, worst first", show_lines=False, expand=False)
    table.add_column("severity")
    table.add_column("impact ms", justify="right")
    table.add_column("cause")
    hosts = has_hosts(report)
    if hosts:
        table.add_column("host")
    table.add_column("finding")
    for f in rows:
        host = [escape(host_of(f) or "")] if hosts else []
        table.add_row(f"[{STYLE[f.severity]}]{f.severity}[/]", impact_cell(f),
                      str(f.cause), *host, f"{escape(f.title)}\n[dim]{f.id}[/]")
    if rows:
        console.print(table)
    elif not report.findings:
        console.print("No findings.")
    folded = None if verbose else ok_line(report)
    if folded:
        console.print(f"[{STYLE[Severity.OK]}]{escape(folded)}[/]")


def _details(console: Any, f: Any) -> None:
    from rich.markup import escape
    from rich.panel import Panel

    body = [f.detail] if f.detail else []
    body += evidence_lines(f.evidence)
    if f.fix:
        body.append(f"Fix: {f.fix.summary}" + (" (config below)" if f.fix.config.strip() else ""))
    console.print(Panel(escape("\n".join(body)), title=f"[{STYLE[f.severity]}]{f.severity}[/] {f.id}",
                        title_align="left"))
    for doc in (f.fix.docs if f.fix else ()):
        console.print(f"  docs: {escape(doc)}", soft_wrap=True)


def _config_block(console: Any, config: str) -> None:
    """The report's config block: the one place it is printed (issue 14 swaps in a merged one)."""
    from rich.syntax import Syntax

    if not config:
        return
    console.print("Paste into your Celery config (every fix at once):")
    # Config is pasted into a celeryconfig: never wrap or crop it at the console width.
    console.print(Syntax(config, "python", theme="ansi_dark", background_color="default",
                         code_width=max(len(x) for x in config.splitlines())),
                  crop=False, soft_wrap=True)
