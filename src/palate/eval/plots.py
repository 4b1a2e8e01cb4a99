"""Dependency-free SVG charts: reliability diagram, histograms, lines, scatter.

Each builder returns one standalone ``<svg>`` string (valid XML with a viewBox) that a browser shows as a
file and that the HTML report inlines. Degenerate input (no data, constant values) gives a framed chart
saying "no data" instead of an exception.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

import numpy as np

# Okabe–Ito colour-blind-safe palette
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
W, H = 560, 360
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 36, 48
FONT = "font-family=\"Helvetica, Arial, sans-serif\""


class _Frame:
    """Axes mapping data coordinates to the plot area, with ticks and labels."""

    def __init__(self, xlim: tuple[float, float], ylim: tuple[float, float]):
        self.x0, self.x1 = _widen(*xlim)
        self.y0, self.y1 = _widen(*ylim)

    @classmethod
    def fitting(cls, series: dict[str, Sequence[tuple[float, float]]]) -> "_Frame | None":
        """The frame spanning every finite (x, y) point of the series; None when there is none."""
        finite = [(x, y) for pts in series.values() for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        if not finite:
            return None
        return cls((min(x for x, _ in finite), max(x for x, _ in finite)),
                   (min(y for _, y in finite), max(y for _, y in finite)))

    def x(self, v: float) -> float:
        return LEFT + (v - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def y(self, v: float) -> float:
        return H - BOTTOM - (v - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)

    def axes(self, xlabel: str, ylabel: str) -> list[str]:
        out = [f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
               'fill="white" stroke="#888"/>']
        for t in _ticks(self.x0, self.x1):
            px = self.x(t)
            out.append(f'<line x1="{px:.1f}" y1="{H - BOTTOM}" x2="{px:.1f}" y2="{H - BOTTOM + 4}" stroke="#888"/>')
            out.append(f'<text x="{px:.1f}" y="{H - BOTTOM + 16}" font-size="11" text-anchor="middle" {FONT}>'
                       f'{_fmt(t)}</text>')
        for t in _ticks(self.y0, self.y1):
            py = self.y(t)
            out.append(f'<line x1="{LEFT - 4}" y1="{py:.1f}" x2="{LEFT}" y2="{py:.1f}" stroke="#888"/>')
            out.append(f'<line x1="{LEFT}" y1="{py:.1f}" x2="{W - RIGHT}" y2="{py:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{LEFT - 7}" y="{py + 4:.1f}" font-size="11" text-anchor="end" {FONT}>{_fmt(t)}</text>')
        out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 10}" font-size="12" text-anchor="middle" {FONT}>'
                   f'{escape(xlabel)}</text>')
        out.append(f'<text x="14" y="{(TOP + H - BOTTOM) / 2}" font-size="12" text-anchor="middle" {FONT} '
                   f'transform="rotate(-90 14 {(TOP + H - BOTTOM) / 2})">{escape(ylabel)}</text>')
        return out


def _widen(lo: float, hi: float) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi <= lo:
        pad = abs(lo) * 0.1 or 0.5
        return lo - pad, hi + pad
    return lo, hi


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values within [lo, hi]."""
    span = hi - lo
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def _svg(title: str, body: list[str], legend: Sequence[str] = (), height: int = H) -> str:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}">',
             f'<title>{escape(title)}</title>',
             f'<rect width="{W}" height="{height}" fill="white"/>',
             f'<text x="{W / 2}" y="22" font-size="14" font-weight="bold" text-anchor="middle" {FONT}>{escape(title)}</text>',
             *body]
    if len(legend) > 1:
        for i, name in enumerate(legend):
            y = TOP + 14 + 16 * i
            parts.append(f'<rect class="legend" x="{W - RIGHT - 130}" y="{y - 9}" width="10" height="10" '
                         f'fill="{PALETTE[i % len(PALETTE)]}"/>')
            parts.append(f'<text x="{W - RIGHT - 115}" y="{y}" font-size="11" {FONT}>{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _no_data(title: str) -> str:
    frame = _Frame((0, 1), (0, 1))
    return _svg(title, frame.axes("", "") + [
        f'<text x="{W / 2}" y="{H / 2}" font-size="14" fill="#888" text-anchor="middle" {FONT}>no data</text>'])


def reliability_svg(bins: list[dict], title: str = "Calibration") -> str:
    """Reliability diagram from :func:`palate.eval.stats.calibration`'s bins: observed frequency against
    mean predicted probability per bin (point area ~ count), the diagonal is perfect calibration, and
    the bin counts are drawn as faint bars along the bottom."""
    filled = [b for b in bins if b.get("n")]
    if not filled:
        return _no_data(title)
    f = _Frame((0, 1), (0, 1))
    body = f.axes("predicted probability that the first response wins", "observed frequency")
    top = max(b["n"] for b in filled)
    for b in filled:
        x0, x1 = f.x(b["low"]), f.x(b["high"])
        height = 0.25 * (H - TOP - BOTTOM) * b["n"] / top
        body.append(f'<rect class="count" x="{x0 + 1:.1f}" y="{H - BOTTOM - height:.1f}" width="{x1 - x0 - 2:.1f}" '
                    f'height="{height:.1f}" fill="#ccc" opacity="0.6"/>')
    body.append(f'<line x1="{f.x(0)}" y1="{f.y(0)}" x2="{f.x(1)}" y2="{f.y(1)}" stroke="#999" stroke-dasharray="4 3"/>')
    pts = " ".join(f"{f.x(b['mean_prob']):.1f},{f.y(b['frequency']):.1f}" for b in filled)
    body.append(f'<polyline points="{pts}" fill="none" stroke="{PALETTE[0]}" stroke-width="2"/>')
    for b in filled:
        r = 3 + 5 * math.sqrt(b["n"] / top)
        body.append(f'<circle cx="{f.x(b["mean_prob"]):.1f}" cy="{f.y(b["frequency"]):.1f}" r="{r:.1f}" '
                    f'fill="{PALETTE[0]}"><title>n={b["n"]}</title></circle>')
    return _svg(title, body)


def histogram_svg(series: dict[str, Sequence[float]], bins: int = 30, title: str = "Distribution",
                  xlabel: str = "value") -> str:
    """Overlapping semi-transparent histograms of several series on common bins."""
    data = {k: np.asarray(v, dtype=float) for k, v in series.items() if len(v)}
    if not data:
        return _no_data(title)
    lo = min(float(v.min()) for v in data.values())
    hi = max(float(v.max()) for v in data.values())
    lo, hi = _widen(lo, hi)
    edges = np.linspace(lo, hi, bins + 1)
    counts = {k: np.histogram(v, bins=edges)[0] for k, v in data.items()}
    f = _Frame((lo, hi), (0, max(int(c.max()) for c in counts.values()) * 1.05))
    body = f.axes(xlabel, "count")
    for i, (name, c) in enumerate(counts.items()):
        colour = PALETTE[i % len(PALETTE)]
        body.append(f'<g class="series" fill="{colour}" opacity="0.5">')
        for left, right, n in zip(edges[:-1], edges[1:], c):
            if n:
                body.append(f'<rect x="{f.x(left):.1f}" y="{f.y(n):.1f}" width="{f.x(right) - f.x(left):.1f}" '
                            f'height="{f.y(0) - f.y(n):.1f}"/>')
        body.append("</g>")
    return _svg(title, body, legend=list(counts))


def line_svg(series: dict[str, Sequence[tuple[float, float]]], title: str = "", xlabel: str = "step",
             ylabel: str = "value", markers: bool = False) -> str:
    """Line chart of several (x, y) series; a NaN y breaks the line. A lone point (a one-point segment) is
    drawn as a dot; ``markers`` draws a dot at every point."""
    f = _Frame.fitting(series)
    if f is None:
        return _no_data(title)
    body = f.axes(xlabel, ylabel)
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        segments, current = [], []
        for x, y in pts:
            if math.isfinite(x) and math.isfinite(y):
                current.append(f"{f.x(x):.1f},{f.y(y):.1f}")
            elif current:
                segments.append(current)
                current = []
        if current:
            segments.append(current)
        for seg in segments:
            body.append(f'<polyline class="series" points="{" ".join(seg)}" fill="none" stroke="{colour}" '
                        'stroke-width="2"/>')
            if markers or len(seg) == 1:
                body.extend(f'<circle class="point" cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="3.5" '
                            f'fill="{colour}"/>' for p in seg)
    return _svg(title, body, legend=list(series))


def scatter_svg(points: dict[str, Sequence[tuple[float, float]]], title: str = "", xlabel: str = "x",
                ylabel: str = "y") -> str:
    """Scatter plot of several (x, y) point sets."""
    f = _Frame.fitting(points)
    if f is None:
        return _no_data(title)
    body = f.axes(xlabel, ylabel)
    for i, (name, pts) in enumerate(points.items()):
        colour = PALETTE[i % len(PALETTE)]
        body.append(f'<g class="series" fill="{colour}" opacity="0.6">')
        body.extend(f'<circle cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="3"/>' for x, y in pts
                    if math.isfinite(x) and math.isfinite(y))
        body.append("</g>")
    return _svg(title, body, legend=list(points))


def interval_svg(rows: Sequence[tuple[str, float, float, float]], title: str = "", xlabel: str = "value",
                 reference: float | None = 0.5, xlim: tuple[float, float] = (0.0, 1.0)) -> str:
    """Horizontal confidence intervals: one row per ``(label, estimate, low, high)``, a dot at the estimate
    and a bar from low to high, with a dashed reference line (e.g. 0.5: no better than the baseline)."""
    rows = [r for r in rows if all(math.isfinite(v) for v in r[1:])]
    if not rows:
        return _no_data(title)
    height = TOP + BOTTOM + 28 * len(rows) + 8
    f = _Frame(xlim, (0, 1))
    left = 170

    def px(v: float) -> float:
        return left + (min(max(v, f.x0), f.x1) - f.x0) / (f.x1 - f.x0) * (W - left - RIGHT)
    body = [f'<rect x="{left}" y="{TOP}" width="{W - left - RIGHT}" height="{height - TOP - BOTTOM}" fill="white" '
            'stroke="#888"/>']
    for t in _ticks(f.x0, f.x1):
        body.append(f'<line x1="{px(t):.1f}" y1="{TOP}" x2="{px(t):.1f}" y2="{height - BOTTOM}" stroke="#eee"/>')
        body.append(f'<text x="{px(t):.1f}" y="{height - BOTTOM + 16}" font-size="11" text-anchor="middle" {FONT}>'
                    f'{_fmt(t)}</text>')
    if reference is not None:
        body.append(f'<line x1="{px(reference):.1f}" y1="{TOP}" x2="{px(reference):.1f}" y2="{height - BOTTOM}" '
                    'stroke="#999" stroke-dasharray="4 3"/>')
    for i, (label, est, low, high) in enumerate(rows):
        y = TOP + 22 + 28 * i
        colour = PALETTE[i % len(PALETTE)]
        body.append(f'<text x="{left - 8}" y="{y + 4}" font-size="12" text-anchor="end" {FONT}>{escape(label[:28])}</text>')
        body.append(f'<line class="interval" x1="{px(low):.1f}" y1="{y}" x2="{px(high):.1f}" y2="{y}" '
                    f'stroke="{colour}" stroke-width="3"/>')
        body.append(f'<circle cx="{px(est):.1f}" cy="{y}" r="5" fill="{colour}"><title>{escape(label)}: {est:.3f} '
                    f'[{low:.3f}, {high:.3f}]</title></circle>')
    body.append(f'<text x="{(left + W - RIGHT) / 2}" y="{height - 12}" font-size="12" text-anchor="middle" {FONT}>'
                f'{escape(xlabel)}</text>')
    return _svg(title, body, height=height)


def radar_svg(series: dict[str, dict[str, float]], lo: float = 0.0, hi: float = 10.0,
              title: str = "Score by category") -> str:
    """A radar (spider) chart: one axis per category (in first-seen order), one polygon per series; values
    are clipped to [lo, hi] and a missing category sits at the centre (lo)."""
    axes: list[str] = []
    for values in series.values():
        axes += [c for c in values if c not in axes]
    if not axes or hi <= lo:
        return _no_data(title)
    cx, cy, radius = W / 2 - (60 if len(series) > 1 else 0), TOP + (H - TOP) / 2, min(W, H - TOP) / 2 - 46
    n = len(axes)

    def point(i: int, v: float) -> tuple[float, float]:
        frac = (min(max(v, lo), hi) - lo) / (hi - lo)
        angle = -math.pi / 2 + 2 * math.pi * i / n
        return cx + radius * frac * math.cos(angle), cy + radius * frac * math.sin(angle)

    body = []
    for level in range(1, 6):  # rings at 20% .. 100% of the range
        v = lo + (hi - lo) * level / 5
        ring = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, v) for i in range(n)))
        body.append(f'<polygon class="ring" points="{ring}" fill="none" stroke="#ddd"/>')
        x, y = point(0, v)
        body.append(f'<text x="{x + 3:.1f}" y="{y + 3:.1f}" font-size="9" fill="#888" {FONT}>{_fmt(v)}</text>')
    for i, name in enumerate(axes):
        x, y = point(i, hi)
        body.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{x:.1f}" y2="{y:.1f}" stroke="#ccc"/>')
        angle = -math.pi / 2 + 2 * math.pi * i / n
        lx, ly = cx + (radius + 14) * math.cos(angle), cy + (radius + 14) * math.sin(angle)
        anchor = "middle" if abs(math.cos(angle)) < 0.3 else "start" if math.cos(angle) > 0 else "end"
        body.append(f'<text class="axis-label" x="{lx:.1f}" y="{ly + 4:.1f}" font-size="11" text-anchor="{anchor}" '
                    f'{FONT}>{escape(name)}</text>')
    for k, (label, values) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, values.get(c, lo)) for i, c in enumerate(axes)))
        body.append(f'<polygon class="series" points="{pts}" fill="{colour}" fill-opacity="0.15" stroke="{colour}" '
                    f'stroke-width="2"><title>{escape(label)}</title></polygon>')
    return _svg(title, body, legend=list(series))
