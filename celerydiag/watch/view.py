"""The terminal view (rich Live: current values and a short history) and JSON lines.

The view knows nothing of Celery: it renders Samples. On a terminal it redraws one table in
place; elsewhere (a pipe, a log file) ``--format text`` prints one plain line per interval, and
``--format json`` one JSON object per line, for scripts and log shippers.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from celerydiag.measure import percentile
from celerydiag.watch.sample import Sample

HISTORY = 30  # intervals of history the view keeps (a fixed deque: memory does not grow)
BARS = "▁▂▃▄▅▆▇█"


def spark(values: list[float | None]) -> str:
    """A sparkline of the values; a gap (no reading) is a space."""
    present = [v for v in values if v is not None]
    if not present:
        return ""
    top = max(present) or 1.0
    return "".join(" " if v is None else BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1)))]
                   for v in values)


def _p99(values: list[float]) -> float | None:
    return round(percentile(values, 99), 1) if values else None


def rows(sample: Sample) -> dict[str, tuple[float | None, str]]:
    """Signal name -> (value for the history, text for now). One place that says what each row is."""
    out: dict[str, tuple[float | None, str]] = {}
    for path, values in sorted(sample.visibility_ms.items()):
        p = _p99(values)
        missed = sample.missed.get(path, 0)
        out[f"state visibility ({path}) P99"] = (p, "-" if p is None else
                                                 f"{p:.1f} ms  ({len(values)} seen, {missed} missed)")
    for name, values in (("dispatch P99", sample.dispatch_ms), ("backend write P99", sample.backend_write_ms),
                         ("queue wait P99 (events)", sample.queue_wait_ms)):
        if values or name != "queue wait P99 (events)":
            p = _p99(values)
            out[name] = (p, "-" if p is None else f"{p:.1f} ms  ({len(values)} samples)")
    total = sum(sample.backlog.values()) if sample.backlog else None
    out["backlog"] = (float(total) if total is not None else None,
                      ", ".join(f"{q}={n}" for q, n in sorted(sample.backlog.items())) or "-")
    if sample.broker_blocked is not None:
        out["broker blocked"] = (1.0 if sample.broker_blocked else 0.0,
                                 f"YES: {sample.blocked_reason}" if sample.broker_blocked else "no")
    if sample.backend_writes_per_s is not None or sample.backend_counter:
        rate = sample.backend_writes_per_s
        out["backend writes/s"] = (rate, "-" if rate is None else f"{rate:.1f}/s ({sample.backend_counter})")
    for peer, methods in sorted(sample.rtt_ms.items()):
        value = methods.get("tcp_info", methods.get("ping"))
        out[f"RTT {peer}"] = (value, "  ".join(f"{m} {v:.2f} ms" for m, v in sorted(methods.items())))
    return out


class LiveView:
    """A rich Live table on a terminal: each signal's value now and its last HISTORY intervals."""

    def __init__(self, console: Any, header: str) -> None:
        from rich.live import Live

        self.console = console
        self.header = header
        self.history: dict[str, deque[float | None]] = {}
        self.live = Live(console=console, auto_refresh=False, transient=False)
        self.live.start()

    def __call__(self, sample: Sample) -> None:
        from rich.table import Table

        now = rows(sample)
        for name in set(self.history) | set(now):
            self.history.setdefault(name, deque(maxlen=HISTORY)).append(now.get(name, (None, ""))[0])
        table = Table(title=self.header, title_justify="left", expand=False)
        table.add_column("signal")
        table.add_column("now")
        table.add_column(f"last {HISTORY}")
        for name, (_, text) in now.items():
            table.add_row(name, text, spark(list(self.history[name])))
        up = "  ".join(f"{side} {'up' if ok else '[bold red]DOWN[/]'}" for side, ok in sorted(sample.up.items()))
        table.caption = (f"round {sample.round}, canary {sample.canary or '-'}, {up}, {sample.elapsed_s:.1f} s"
                         + "".join(f"\n[red]{p.signal}: {p.reason}: {p.message}[/]" for p in sample.problems))
        table.caption_justify = "left"
        self.live.update(table, refresh=True)

    def close(self) -> None:
        self.live.stop()


def plain_line(sample: Sample) -> str:
    """One line per interval for a non-terminal --format text: ``name=value`` pairs."""
    parts = [f"round={sample.round}", f"canary={sample.canary or '-'}"]
    parts += [f"{side}={'up' if ok else 'DOWN'}" for side, ok in sorted(sample.up.items())]
    for name, (value, _) in rows(sample).items():
        if value is not None:
            parts.append(f"{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}={value:g}")
    parts += [f"error={p.signal}:{p.reason}" for p in sample.problems]
    return " ".join(parts)


def line_writer(out: IO[str], render: Callable[[Sample], str]) -> Callable[[Sample], None]:
    def write(sample: Sample) -> None:
        out.write(render(sample) + "\n")
        out.flush()
    return write


def json_line(sample: Sample) -> str:
    return json.dumps(sample.to_json(), separators=(",", ":"), default=str)
