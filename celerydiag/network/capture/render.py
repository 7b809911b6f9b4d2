"""Text for a person: the file, one row per connection, the event timeline, then the findings.

JSON is ``CaptureReport.to_dict()``; markdown and junit reuse the report renderers on the findings
(see :func:`as_report`), so CI gets the same shapes as from ``doctor``.
"""

from __future__ import annotations

from typing import Any, TextIO

from celerydiag.findings import Finding, Report, Severity
from celerydiag.network.capture.report import CaptureReport
from celerydiag.render.words import evidence_lines, impact_brief, ok_line, verdict

STYLE = {Severity.CRITICAL: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan",
         Severity.OK: "green"}
TIMELINE_ROWS = 40


def _pair(d: dict[str, Any]) -> str:
    return f"{d['client']}/{d['server']}"


def render_text(report: CaptureReport, stream: TextIO, *, color: bool = False, verbose: bool = False) -> None:
    from rich.console import Console

    # markup off: addresses ("[fd00::2]:40000") and broker close texts are data, never style tags
    console = Console(file=stream, force_terminal=color, no_color=not color, width=140, highlight=False,
                      soft_wrap=False, markup=False)
    for line in verdict(as_report(report)):
        console.print(line, style="bold")
    f = report.file
    console.print(f"Capture {f.get('path', '')}: {f['packets']} packets, {f['format']}, link {f['link_type']}, "
                  f"{f.get('duration_s', 0):.1f} s. Budget {report.budget_ms:g} ms.")
    live = report.extra.get("live")
    if live:
        console.print(f"Live on {live['iface']} ({live['filter']}): {live['seconds']:.1f} s, "
                      f"kernel drops {live['kernel_drops'] if live['kernel_drops'] is not None else 'unknown'}"
                      f"{', stopped by Ctrl-C' if live['interrupted'] else ''}.")
    if report.connections:
        console.print(_connections_table(report))
        if any(c.amqp for c in report.connections):
            console.print(_amqp_table(report))
    else:
        console.print("No TCP connections on the captured ports.")
    if report.timeline:
        console.print(_timeline_table(report))
    for finding in report.findings:  # ranked by analyse()
        if verbose or finding.severity != Severity.OK:
            _print_finding(console, finding)
    folded = None if verbose else ok_line(as_report(report))
    if folded:
        console.print(folded)


def render_html(report: CaptureReport, stream: TextIO, *, verbose: bool = False) -> None:
    """The findings as every HTML report shows them, with the per-connection timeline first."""
    from celerydiag.render import charts, html

    as_doc = as_report(report)
    drawn = [c for c in (charts.capture_timeline(report), *html.report_charts(as_doc)) if c is not None]
    html.render(as_doc, stream, verbose=verbose, charts=drawn)


def _connections_table(report: CaptureReport) -> Any:
    """TCP counts per connection; the AMQP columns are a table of their own (:func:`_amqp_table`),
    so no cell is squeezed or cut at the console width."""
    from rich.table import Table

    table = Table(title="Connections (client/server counts; tshark's tcp.analysis definitions)")
    for col in ("#", "client -> server", "proto", "pkts", "zero win", "win full", "retrans", "fast rtx",
                "dup ack", "RST", "RTT ms"):
        table.add_column(col, justify="left" if col in ("client -> server", "proto") else "right",
                         no_wrap=True)
    for c in report.connections:
        t = c.tcp
        rtt = [v for v in (t["rtt_ms"]["client"], t["rtt_ms"]["server"]) if v is not None]
        table.add_row(
            str(c.stream), f"{c.client} -> {c.server}", str(c.protocol), str(c.packets), _pair(t["zero_window"]),
            _pair(t["window_full"]), _pair(t["retransmission"]), _pair(t["fast_retransmission"]),
            _pair(t["duplicate_ack"]), _pair(t["reset"]), f"{max(rtt):.2f}" if rtt else "-")
    return table


def _amqp_table(report: CaptureReport) -> Any:
    """Heartbeat, the longest silence per side and how each AMQP connection ended; the close
    column wraps (never cut) when a broker's reason is long."""
    from rich.table import Table

    table = Table(title="AMQP connections (client/server)")
    for col in ("#", "client -> server", "heartbeat", "max silence s", "close"):
        table.add_column(col, justify="right" if col in ("#", "heartbeat", "max silence s") else "left",
                         no_wrap=col != "close", overflow="fold")
    for c in report.connections:
        a = c.amqp
        if not a:
            continue
        close = f"{a['close']} by {a['closed_by']}" if a.get("closed_by") else str(a.get("close", ""))
        table.add_row(str(c.stream), f"{c.client} -> {c.server}",
                      f"{a['heartbeat_s']} s" if a.get("heartbeat_s") is not None else "-",
                      f"{a['max_silence_s']['client']:.1f}/{a['max_silence_s']['server']:.1f}", close)
    return table


def _timeline_table(report: CaptureReport) -> Any:
    from rich.table import Table

    tl = Table(title="Timeline (seconds from the first packet)")
    for col in ("t s", "connection", "side", "event"):
        tl.add_column(col)
    for e in report.timeline[:TIMELINE_ROWS]:
        tl.add_row("" if e["t_s"] is None else f"{e['t_s']:.3f}", e["connection"], e["side"], e["event"])
    if len(report.timeline) > TIMELINE_ROWS:
        tl.add_row("", "", "", f"... {len(report.timeline) - TIMELINE_ROWS} more (see --format json)")
    return tl


def _print_finding(console: Any, finding: Finding) -> None:
    """One line per finding; below it, for what is not ok, its detail, evidence and fix."""
    from rich.text import Text

    console.print(Text.assemble((str(finding.severity), STYLE[finding.severity]),
                                f" {impact_brief(finding)}  {finding.title}  ", (finding.id, "dim")))
    if finding.severity == Severity.OK:
        return
    for line in [finding.detail, *evidence_lines(finding.evidence)]:
        if line:
            console.print(f"    {line}")
    if finding.fix:
        console.print(f"    Fix: {finding.fix.summary}")
        for line in finding.fix.config.rstrip().splitlines():
            console.print(f"      {line}")
        for doc in finding.fix.docs:
            console.print(f"    docs: {doc}")


def as_report(report: CaptureReport) -> Report:
    """The findings as a report (for markdown and junit output)."""
    from celerydiag import __version__
    from celerydiag.findings import ProbeResult, ProbeStatus

    result = ProbeResult("network", ProbeStatus.RAN, "", 0.0, tuple(report.findings))
    target = {"broker": "", "backend": "", "source": f"capture {report.file.get('path', '')}"}
    return Report.build(target, report.budget_ms, [result], {}, __version__)
