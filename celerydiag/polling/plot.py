"""Pictures of delay CDFs: a PNG file and a compact terminal chart, with the standard library only.

Why not matplotlib: it would be the heaviest dependency of the tool, for one line chart. A PNG is
a zlib-compressed RGB raster with three chunks; lines are Bresenham segments and labels use a
3x5 pixel font drawn at double size. The terminal chart draws each CDF as one row of block
characters (height = probability), so several strategies compare at a glance.
"""

from __future__ import annotations

import bisect
import math
import struct
import zlib
from collections.abc import Sequence

Curve = tuple[str, Sequence[tuple[float, float]]]  # (label, [(x, P(X <= x)), ...] ascending)

BLOCKS = " ▁▂▃▄▅▆▇█"
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))

_GLYPHS = {
    "0": "###,#.#,#.#,#.#,###", "1": ".#.,##.,.#.,.#.,###", "2": "###,..#,###,#..,###",
    "3": "###,..#,###,..#,###", "4": "#.#,#.#,###,..#,..#", "5": "###,#..,###,..#,###",
    "6": "###,#..,###,#.#,###", "7": "###,..#,.#.,.#.,.#.", "8": "###,#.#,###,#.#,###",
    "9": "###,#.#,###,..#,###", "a": ".#.,#.#,###,#.#,#.#", "b": "##.,#.#,##.,#.#,##.",
    "c": ".##,#..,#..,#..,.##", "d": "##.,#.#,#.#,#.#,##.", "e": "###,#..,##.,#..,###",
    "f": "###,#..,##.,#..,#..", "g": ".##,#..,#.#,#.#,.##", "h": "#.#,#.#,###,#.#,#.#",
    "i": "###,.#.,.#.,.#.,###", "j": "..#,..#,..#,#.#,.#.", "k": "#.#,#.#,##.,#.#,#.#",
    "l": "#..,#..,#..,#..,###", "m": "#.#,###,###,#.#,#.#", "n": "##.,#.#,#.#,#.#,#.#",
    "o": ".#.,#.#,#.#,#.#,.#.", "p": "##.,#.#,##.,#..,#..", "q": ".#.,#.#,#.#,##.,.##",
    "r": "##.,#.#,##.,#.#,#.#", "s": ".##,#..,.#.,..#,##.", "t": "###,.#.,.#.,.#.,.#.",
    "u": "#.#,#.#,#.#,#.#,###", "v": "#.#,#.#,#.#,#.#,.#.", "w": "#.#,#.#,###,###,#.#",
    "x": "#.#,#.#,.#.,#.#,#.#", "y": "#.#,#.#,.#.,.#.,.#.", "z": "###,..#,.#.,#..,###",
    ":": "...,.#.,...,.#.,...", ".": "...,...,...,...,.#.", ",": "...,...,...,.#.,#..",
    "%": "#.#,..#,.#.,#..,#.#", "-": "...,...,###,...,...", "+": "...,.#.,###,.#.,...",
    "(": ".#.,#..,#..,#..,.#.", ")": ".#.,..#,..#,..#,.#.", "=": "...,###,...,###,...",
    "<": "..#,.#.,#..,.#.,..#", ">": "#..,.#.,..#,.#.,#..", "/": "..#,..#,.#.,#..,#..",
    "_": "...,...,...,...,###", "*": "...,#.#,.#.,#.#,...", " ": "...,...,...,...,...",
    "?": "###,..#,.#.,...,.#.",
}


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


class Canvas:
    """An RGB raster with just enough drawing for a line chart."""

    def __init__(self, width: int, height: int, background: tuple[int, int, int] = (255, 255, 255)) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def set(self, x: int, y: int, color: tuple[int, int, int]) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i:i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
        for y in range(max(0, y0), min(self.height, y1 + 1)):
            for x in range(max(0, x0), min(self.width, x1 + 1)):
                self.set(x, y, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int], thick: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        for _ in range(dx - dy + 1):  # bounded: one pixel per step
            self.rect(x0, y0, x0 + thick - 1, y0 + thick - 1, color)
            if x0 == x1 and y0 == y1:
                break
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: tuple[int, int, int], scale: int = 2) -> int:
        """Draw ``text`` with its top-left at (x, y); return the x after it."""
        for ch in text.lower():
            rows = _GLYPHS.get(ch, _GLYPHS["?"]).split(",")
            for r, row in enumerate(rows):
                for c, bit in enumerate(row):
                    if bit == "#":
                        self.rect(x + c * scale, y + r * scale, x + (c + 1) * scale - 1,
                                  y + (r + 1) * scale - 1, color)
            x += 4 * scale
        return x

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.pixels[3 * y * self.width:3 * (y + 1) * self.width])
                       for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
                + chunk(b"IEND", b""))


def cdf_png(curves: Sequence[Curve], title: str = "detection delay cdf", width: int = 760,
            height: int = 440, x_max_ms: float | None = None) -> bytes:
    """A PNG line chart: x = delay (ms), y = P(delay <= x), one coloured line per curve."""
    canvas = Canvas(width, height)
    left, right, top_m, bottom = 70, 20, 40, 50
    x0, x1, y0, y1 = left, width - right, height - bottom, top_m
    ink, grid = (40, 40, 40), (225, 225, 225)
    top = x_max_ms or nice_max(max((pts[-1][0] for _, pts in curves if pts), default=1.0))

    def px(ms: float) -> int:
        return x0 + int(round((x1 - x0) * min(ms, top) / top))

    def py(p: float) -> int:
        return y0 - int(round((y0 - y1) * p))

    for i in range(5):
        p = i / 4
        canvas.line(x0, py(p), x1, py(p), grid)
        canvas.text(x0 - 44, py(p) - 5, f"{p:.2f}", ink)
        ms = top * i / 4
        canvas.line(px(ms), y0, px(ms), y1, grid)
        label = _label(ms)
        canvas.text(px(ms) - 4 * len(label), y0 + 8, label, ink)
    canvas.line(x0, y0, x1, y0, ink)
    canvas.line(x0, y0, x0, y1, ink)
    canvas.text(x0, 12, title, ink)
    canvas.text((x0 + x1) // 2 - 20, height - 20, "delay", ink)
    for n, (name, pts) in enumerate(curves):
        color = PALETTE[n % len(PALETTE)]
        prev = (x0, py(0.0))
        for x, p in pts:
            here = (px(x), py(p))
            canvas.line(prev[0], prev[1], here[0], prev[1], color, 2)  # step: across, then up
            canvas.line(here[0], prev[1], here[0], here[1], color, 2)
            prev = here
        canvas.line(prev[0], prev[1], x1, prev[1], color, 2)
        # Legend bottom right: CDFs rise to the left and top, so that corner stays empty.
        lx = x1 - 40 - 8 * max(len(c[0]) for c in curves)
        ly = y0 - 12 - 16 * (len(curves) - n)
        canvas.rect(lx, ly, lx + 12, ly + 9, color)
        canvas.text(lx + 18, ly, name, ink)
    return canvas.png()
