"""``--format html``: one self-contained file to attach to a ticket.

The verdict, the charts (inline SVG from :mod:`celerydiag.render.charts`), the ranked findings
with their fixes, the config to paste and the probes, from the same Report every other format
renders. Nothing is fetched when it is opened: no script, no external style, font or image, and a
Content-Security-Policy that forbids them, so it reads the same offline years later.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any, TextIO

from celerydiag.findings import Finding, Report, Severity
from celerydiag.render.words import (
    evidence_lines,
    has_hosts,
    headline,
    host_of,
    impact_cell,
    impact_phrase,
    latency_line,
    ok_line,
    paste_block,
    probe_lines,
    verdict,
)

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:1.2em 1.5em;color:#1b1f24;background:#fff}
h1{font-size:1.5em;margin:.2em 0 .6em}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
.verdict{font-size:1.08em;background:#f4f6fa;border-left:5px solid #555;padding:.7em 1em;margin:.6em 0}
.verdict.critical{border-color:#c62828}.verdict.warning{border-color:#e0a800}.verdict.ok{border-color:#2e7d32}
.meta{color:#555;font-size:.92em;white-space:pre-wrap}
figure.chart{margin:1em 0;padding:.5em;border:1px solid #e3e3e3;border-radius:6px}
figure.chart svg{max-width:100%;height:auto;display:block}
figcaption{font-size:.9em;color:#555}
table{border-collapse:collapse;width:100%;font-size:.93em}th,td{border-bottom:1px solid #e5e5e5;
padding:.3em .5em;text-align:left;vertical-align:top}td.num{text-align:right;white-space:nowrap}
.sev{font-weight:600;border-radius:3px;padding:0 .35em;color:#fff;white-space:nowrap}
.sev.critical{background:#c62828}.sev.warning{background:#b88700}.sev.info{background:#0277bd}
.sev.ok{background:#2e7d32}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
pre{background:#f6f8fa;padding:.6em .8em;border-radius:4px;overflow-x:auto;white-space:pre}
.finding{border:1px solid #e3e3e3;border-radius:6px;padding:.4em 1em;margin:.8em 0}
.finding h3{font-size:1em;margin:.4em 0}.finding ul{margin:.3em 0;padding-left:1.3em}
.dim{color:#666}
"""


def render(report: Report, stream: TextIO, *, verbose: bool = False, charts: Sequence[Any] | None = None,
           **_: Any) -> None:
    """The report as one HTML page; ``charts`` replaces the ones drawn from the report (capture
    adds its connection timeline)."""
    drawn = list(charts) if charts is not None else report_charts(report)
    body = [f"<h1>celerydiag report</h1>{verdict_box(report)}",
            f'<p class="meta">{escape(headline(report))}</p>']
    line = latency_line(report)
    if line:
        body.append(f'<p class="meta">{escape(line)}</p>')
    if drawn:
        body.append("<h2>Charts</h2>" + "".join(figure(c) for c in drawn))
    body.append(findings_table(report, verbose))
    details = [finding_card(f) for f in report.findings if f.severity >= Severity.INFO]
    if details:
        body.append("<h2>Details and fixes</h2>" + "".join(details))
    body.append(config_section(paste_block(report)))
    body.append("<h2>Probes</h2><ul>" + "".join(f"<li>{escape(p)}</li>" for p in probe_lines(report)) + "</ul>")
    stream.write(page("celerydiag report", "".join(body), footer=_footer(report)))


def report_charts(report: Report) -> list[Any]:
    """The charts a report's findings carry data for, in reading order."""
    from celerydiag.render import charts as draw

    return [c for c in (draw.impact(report), draw.visibility(report.findings, report.budget_ms),
                        draw.lock_waits(report.findings)) if c is not None]


def page(title: str, body: str, footer: str = "") -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
            f'<footer class="dim"><p>{escape(footer)}</p></footer>\n</body></html>\n')


def verdict_box(report: Report) -> str:
    worst = max((f.severity for f in report.findings if f.severity != Severity.INFO), default=Severity.OK)
    level = "critical" if report.unreachable else str(worst)
    return f'<div class="verdict {level}">' + "<br>".join(escape(x) for x in verdict(report)) + "</div>"


def figure(chart: Any) -> str:
    return (f'<figure class="chart" data-chart="{escape(chart.name)}"><figcaption><b>{escape(chart.title)}</b>'
            f"</figcaption>{chart.svg}<figcaption>{escape(chart.caption)}</figcaption></figure>")


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], numeric: Iterable[int] = ()) -> str:
    """An HTML table of already-escaped cells; ``numeric``: right-aligned columns."""
    right = set(numeric)
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in right else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def findings_table(report: Report, verbose: bool) -> str:
    hosts = has_hosts(report)
    headers = ["severity", "impact ms", "cause", *(["host"] if hosts else []), "finding"]

    def row(f: Finding) -> list[str]:
        return [badge(f.severity), escape(impact_cell(f)), escape(str(f.cause)),
                *([escape(host_of(f) or "")] if hosts else []),
                f'{escape(f.title)}<br><code class="dim">{escape(f.id)}</code>']

    shown = [f for f in report.findings if verbose or f.severity != Severity.OK]
    html = "<h2>Findings, worst first</h2>"
    html += table(headers, [row(f) for f in shown], numeric=(1,)) if shown else "<p>No findings.</p>"
    folded = None if verbose else ok_line(report)
    if folded:
        ok = [f for f in report.findings if f.severity == Severity.OK]
        html += (f"<details><summary>{escape(folded)}</summary>"
                 + table(headers, [row(f) for f in ok], numeric=(1,)) + "</details>")
    return html


def badge(severity: Severity) -> str:
    return f'<span class="sev {severity}">{severity}</span>'


def finding_card(f: Finding) -> str:
    parts = [f'<section class="finding" id="{escape(f.id)}"><h3>{badge(f.severity)} {escape(f.title)}</h3>',
             f'<p class="dim"><code>{escape(f.id)}</code> · cause {escape(str(f.cause))} · '
             f"{escape(impact_phrase(f))}</p>"]
    if f.detail:
        parts.append(f"<p>{escape(f.detail)}</p>")
    lines = evidence_lines(f.evidence)
    if lines:
        parts.append("<ul>" + "".join(f"<li>{escape(x)}</li>" for x in lines) + "</ul>")
    if f.fix:
        parts.append(f"<p><b>Fix:</b> {escape(f.fix.summary)}</p>")
        if f.fix.config.strip():
            parts.append(f"<pre><code>{escape(f.fix.config.rstrip())}</code></pre>")
        if f.fix.docs:
            parts.append("<ul>" + "".join(f'<li><a href="{escape(d)}">{escape(d)}</a></li>'
                                          for d in f.fix.docs) + "</ul>")
    return "".join(parts) + "</section>"


def config_section(config: str) -> str:
    """The report's config block: the one place it goes in the page (issue 14 swaps in a merged one)."""
    if not config:
        return ""
    return ('<h2>Paste into your Celery config</h2><pre class="paste"><code>'
            f"{escape(config)}</code></pre>")


def _footer(report: Report) -> str:
    meta = report.meta
    made = ", ".join(f"{k} {meta[k]}" for k in ("hostname", "created", "python", "celery") if meta.get(k))
    return f"celerydiag {report.version}" + (f" · {made}" if made else "")
