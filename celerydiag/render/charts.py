"""The HTML report's charts (and ``poll-model --plot``'s PNG), drawn with matplotlib.

Why matplotlib: it is the well-kept plotting library every Python user already trusts, it writes
SVG without a browser or a JavaScript runtime, and SVG inlines into one self-contained HTML file
that opens offline when attached to a ticket (nothing is fetched at view time). It is an optional
extra (``pip install 'celerydiag[html]'``): text, JSON, markdown and JUnit never import it.

Every function takes what a finding's evidence carries (its ``series``, capped by the probe) and
returns a :class:`Chart`, or None when the report holds nothing to draw. The Figure API is used
directly (no pyplot): no global state, no GUI backend.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celerydiag.errors import InputError
from celerydiag.measure import downsampled

INSTALL = "pip install 'celerydiag[html]'"
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
BUDGET_COLOR = "#d62728"


@dataclass(frozen=True)
class Chart:
    name: str  # the figure's data-chart attribute: what the browser test looks for
    title: str
    svg: str
    caption: str = ""


def require(what: str = "--format html") -> None:
    """Refuse now, before any work (exit 2, one line with the install command), when matplotlib
    is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(f"{what} needs matplotlib, which is not installed", f"install it: {INSTALL}") from None


def _figure(width: float = 7.5, height: float = 3.4) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def svg(fig: Any, prefix: str) -> str:
    """The figure as an inline ``<svg>`` element: text kept as text (small, searchable), stable ids
    prefixed so several charts in one page never share one."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "celerydiag"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF boilerplate: bytes, no picture
    return re.sub(r'(id="|url\(#|href="#)', rf"\g<1>{prefix}-", text)


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _budget_line(ax: Any, budget_ms: float, vertical: bool = True) -> None:
    draw = ax.axvline if vertical else ax.axhline
    draw(budget_ms, color=BUDGET_COLOR, linestyle="--", linewidth=1.2, label=f"budget {budget_ms:g} ms")


# ---- e2e: state visibility ---------------------------------------------------------------------

def visibility(findings: Sequence[Any], budget_ms: float) -> Chart | None:
    """CDF of update_state() returned -> client saw it, poll and push, P50/P99 and the budget."""
    curves = [(f.id.rsplit("-", 1)[-1], f) for f in findings
              if f.id.startswith("e2e.visibility-") and _series(f, "latencies_ms")]
    if not curves:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    top = budget_ms
    for i, (mode, f) in enumerate(curves):
        values = downsampled(_series(f, "latencies_ms"))
        n = len(values)
        color = COLORS[i % len(COLORS)]
        ax.step(values, [(k + 1) / n for k in range(n)], where="post", color=color,
                label=f"{mode} ({f.evidence.get('samples', n)} updates)")
        for q, style in (("p50_ms", ":"), ("p99_ms", "-.")):
            value = f.evidence.get(q)
            if isinstance(value, (int, float)):
                ax.axvline(value, color=color, linestyle=style, linewidth=1,
                           label=f"{mode} {q[:3].upper()} {value:.1f} ms")
                top = max(top, value)
        top = max(top, values[-1])
    _budget_line(ax, budget_ms)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(0, top * 1.2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("update_state() returned → client saw the state (ms, log scale above 1 ms)")
    ax.set_ylabel("share of updates seen")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return Chart("e2e-visibility", "State visibility, end to end (CDF)", svg(fig, "e2e"),
                 "Each line is the share of state updates a client saw within x ms; dotted P50, dash-dot P99.")


def _series(f: Any, key: str) -> list[float]:
    series = f.evidence.get("series") if isinstance(f.evidence, Mapping) else None
    values = series.get(key) if isinstance(series, Mapping) else None
    return [float(v) for v in values if isinstance(v, (int, float))] if isinstance(values, list) else []


# ---- impact per cause ----------------------------------------------------------------------------

def impact(report: Any) -> Chart | None:
    """A bar per cause: its measured and modelled milliseconds stacked, against the budget; the
    observed e2e P99 as its own bar, for comparison with the sum."""
    from celerydiag.findings import Kind, Severity

    by_cause: dict[str, dict[str, float]] = {}
    for f in report.findings:  # what latency_block sums per cause, split by kind
        if f.kind is Kind.HAZARD or f.impact_ms <= 0 or str(f.cause) in ("e2e", "config") or f.severity == Severity.OK:
            continue
        slot = by_cause.setdefault(str(f.cause), {"measured": 0.0, "modelled": 0.0})
        slot[str(f.kind)] += f.impact_ms
    observed = report.latency.get("observed_p99_ms")
    if not by_cause and observed is None:
        return None
    names = sorted(by_cause, key=lambda c: -sum(by_cause[c].values()))
    measured = [by_cause[c]["measured"] for c in names]
    modelled = [by_cause[c]["modelled"] for c in names]
    if observed is not None:
        names.append("e2e (observed P99)")
        measured.append(float(observed))
        modelled.append(0.0)
    fig = _figure(height=max(2.2, 0.45 * len(names) + 1.2))
    ax = fig.add_subplot()
    rows = list(range(len(names)))[::-1]
    ax.barh(rows, measured, color=COLORS[0], label="measured")
    ax.barh(rows, modelled, left=measured, color="white", edgecolor=COLORS[1], hatch="//", label="modelled")
    for y, a, b in zip(rows, measured, modelled):
        ax.text(a + b, y, f" {a + b:.1f} ms", va="center", fontsize=8)
    _budget_line(ax, report.budget_ms)
    ax.axvline(0.2 * report.budget_ms, color="#bcbd22", linestyle=":", linewidth=1,
               label=f"warning from {0.2 * report.budget_ms:g} ms")
    ax.set_yticks(rows, names)
    ax.set_xlim(0, max([report.budget_ms, *[a + b for a, b in zip(measured, modelled)]]) * 1.25)
    ax.set_xlabel("milliseconds added to the P99 of state visibility")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    return Chart("impact", "Impact per cause against the budget", svg(fig, "impact"),
                 "Solid: measured on this system; hatched: modelled from an assumption (e.g. the poll interval).")


# ---- backend: lock waits over the sampling window ------------------------------------------------

def lock_waits(findings: Sequence[Any]) -> Chart | None:
    """One row per blocker → blocked pair: when, within the sampling window, the write waited."""
    f = next((f for f in findings if f.id == "backend.lock-wait"), None)
    episodes = f.evidence.get("episodes") if f is not None else None
    if not isinstance(episodes, list):
        return None
    spans = [e for e in episodes if isinstance(e, Mapping) and isinstance(e.get("last_seen_s"), (int, float))]
    window = f.evidence.get("sampled_s") if f is not None else None
    if not isinstance(window, (int, float)) or window <= 0:
        return None
    fig = _figure(height=max(2.0, 0.5 * len(spans) + 1.2))
    ax = fig.add_subplot()
    labels = []
    for row, e in enumerate(spans):
        end = float(e["last_seen_s"])
        start = max(0.0, end - float(e.get("wait_ms", 0)) / 1000)
        color = COLORS[3] if e.get("on_task_table") else COLORS[7]
        ax.broken_barh([(start, max(end - start, window / 200))], (row - 0.35, 0.7), color=color)
        ax.text(end, row, f" {float(e.get('wait_ms', 0)):.0f} ms", va="center", fontsize=8)
        labels.append(f"blocker {e.get('blocker_id')} → blocked {e.get('waiter_id')}")
    ax.set_yticks(range(len(spans)), labels)
    ax.set_ylim(-0.8, max(len(spans), 1) - 0.2)
    ax.set_xlim(0, float(window) * 1.1)
    ax.set_xlabel(f"seconds into the {float(window):g} s sampling window")
    if not spans:
        ax.text(window / 2, 0, "no lock waits seen", ha="center", va="center")
        ax.set_yticks([])
    return Chart("lock-waits", "Backend lock waits over the sampling window", svg(fig, "locks"),
                 "Red: a write to the task table waiting for its blocker; grey: waits on other tables.")


# ---- capture: a timeline per connection ----------------------------------------------------------

MARKS = (("heartbeat_ts_s", "|", COLORS[2], "heartbeat"), ("retransmission_ts_s", "x", COLORS[1], "retransmission"))


def capture_timeline(report: Any) -> Chart | None:
    """One row per connection: its life, zero-window episodes, the longest silence of each side,
    heartbeats, retransmissions and resets, in seconds from the first packet."""
    conns = list(report.connections)[:30]
    if not conns:
        return None
    fig = _figure(height=max(2.2, 0.55 * len(conns) + 1.4))
    ax = fig.add_subplot()
    end_all = float(report.file.get("duration_s") or 0) or max((c.end_s or c.start_s) for c in conns) or 1.0
    seen: set[str] = set()
    for row, c in enumerate(conns):
        _connection_row(ax, c, len(conns) - 1 - row, end_all, seen)
    ax.set_yticks(range(len(conns)), [f"#{c.stream} {c.client} → {c.server}" for c in conns][::-1], fontsize=8)
    ax.set_xlim(0, end_all * 1.02)
    ax.set_ylim(-0.6, len(conns) - 0.4)
    ax.set_xlabel("seconds from the first packet (upper marks: client, lower: server)")
    if seen:
        ax.legend(fontsize=8, loc="upper right")
    return Chart("capture-timeline", "Capture: a timeline per connection", svg(fig, "capture"),
                 "Heartbeats, the longest silence per side, zero-window episodes, retransmissions and resets.")


def _connection_row(ax: Any, c: Any, y: int, end_all: float, seen: set[str]) -> None:
    """One connection's row; each kind of mark named in the legend once (``seen``)."""
    def label(name: str) -> str | None:
        if name in seen:
            return None
        seen.add(name)
        return name

    end = c.end_s if c.end_s is not None else end_all
    ax.hlines(y, c.start_s, end, color="#999999", linewidth=1)
    for ep in c.tcp.get("zero_window_episodes", []):
        ax.broken_barh([(ep["start_s"], max(ep["duration_s"], end_all / 300))], (y - 0.3, 0.6),
                       color=COLORS[3], label=label("zero window"))
    amqp = c.amqp or {}
    for side, offset in (("client", 0.15), ("server", -0.15)):
        silence = (amqp.get("silence_s") or {}).get(side)
        if silence and silence[1] > 0:
            ax.broken_barh([(silence[0], silence[1])], (y + offset - 0.07, 0.14), color="#bbbbbb",
                           label=label("longest silence"))
        for key, marker, color, name in MARKS:
            ts = ((c.tcp.get(key) or amqp.get(key)) or {}).get(side) or []
            if ts:
                ax.scatter(ts, [y + offset] * len(ts), marker=marker, color=color, s=18, linewidths=1,
                           label=label(name))
    for side, t_rst in (c.tcp.get("reset_ts_s") or {}).items():
        if t_rst is not None:
            ax.scatter([t_rst], [y], marker="X", color="black", s=40, label=label(f"reset ({side} sent)"))


# ---- poll-model: the delay CDF per strategy ------------------------------------------------------

def cdf_figure(curves: Sequence[tuple[str, Sequence[tuple[float, float]]]], x_max_ms: float,
               width: float = 7.5, height: float = 3.6) -> Any:
    fig = _figure(width, height)
    ax = fig.add_subplot()
    for i, (name, points) in enumerate(curves):
        xs = [x for x, _ in points]
        ps = [p for _, p in points]
        if len(xs) == 1:  # push: every state at once
            xs, ps = [0.0, xs[0], x_max_ms], [0.0, ps[0], ps[0]]
        ax.step(xs, ps, where="post", color=COLORS[i % len(COLORS)], label=name)
    ax.set_xlim(0, x_max_ms)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("delay: state written → client sees it (ms)")
    ax.set_ylabel("P(delay ≤ x)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def poll_cdf(curves: Sequence[tuple[str, Sequence[tuple[float, float]]]], x_max_ms: float) -> Chart:
    return Chart("poll-cdf", "Delay CDF per polling strategy", svg(cdf_figure(curves, x_max_ms), "poll"),
                 "The share of states a client sees within x ms of their write, per strategy.")


def cdf_png(curves: Sequence[tuple[str, Sequence[tuple[float, float]]]], x_max_ms: float) -> bytes:
    """``poll-model --plot FILE.png``: the same chart as the HTML report's, as a PNG."""
    return png(cdf_figure(curves, x_max_ms))
