"""Delay CDFs as block characters for the terminal (``poll-model``'s text output), standard library only.

Each CDF is one row of block characters (height = probability), so several strategies compare at a
glance. The pictures (HTML, ``--plot FILE.png``) are matplotlib's: :mod:`celerydiag.render.charts`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

Curve = tuple[str, Sequence[tuple[float, float]]]  # (label, [(x, P(X <= x)), ...] ascending)

BLOCKS = " ▁▂▃▄▅▆▇█"


def cdf_at(points: Sequence[tuple[float, float]], x: float) -> float:
    """P(X <= x) from ascending (x, p) points (a step function)."""
    xs = [p[0] for p in points]
    i = bisect.bisect_right(xs, x)
    return points[i - 1][1] if i else 0.0


def nice_max(value: float) -> float:
    """Round an axis end up to a round number (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if value <= m * exp + 1e-12:
            return m * exp
    return 10 * exp


def _label(ms: float) -> str:
    if ms == 0:
        return "0"
    return f"{ms / 1000:g}s" if ms >= 1000 else f"{ms:g}ms"


def terminal_chart(curves: Sequence[Curve], width: int = 48, x_max_ms: float | None = None) -> str:
    """One row per curve: block height is P(delay <= x) at each column, x from 0 to x_max."""
    if not curves:
        return ""
    top = x_max_ms or nice_max(max((pts[-1][0] for _, pts in curves if pts), default=1.0))
    name_w = max(len(name) for name, _ in curves)
    lines = []
    for name, pts in curves:
        cells = []
        for col in range(width):
            x = top * (col + 1) / width
            p = cdf_at(pts, x) if pts else 0.0
            cells.append(BLOCKS[min(len(BLOCKS) - 1, int(round(p * (len(BLOCKS) - 1))))])
        lines.append(f"{name:>{name_w}} |{''.join(cells)}|")
    axis = f"{'':>{name_w}} 0{'':{width - 1 - len(_label(top))}}{_label(top)}"
    lines.append(axis)
    lines.append(f"{'':>{name_w}}  delay CDF: a full block means every state change was seen by then")
    return "\n".join(lines)

