"""Tiny dependency-free SVG charts for the HTML report.

Every chart function returns one ``<svg>`` string meant to be inlined into HTML. All text that can come
from user or model data (titles, labels, persona names, tooltips) is escaped here, so callers may wrap the
result in :class:`markupsafe.Markup`. ``None``/NaN/inf values are skipped (lines break around them) rather
than crashing a chart.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

# Okabe–Ito: distinguishable under the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
FAIL_COLOR = "#D55E00"
BAND_COLOR = "#0072B2"
MUTED = "#6b7280"
GRID = "#e5e7eb"
# Diverging blue–white–red (ColorBrewer RdBu); blue/red stays distinguishable for red-green deficiencies.
_DIVERGING = [(33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130), (178, 24, 43)]
# One meaning in every plot: red = above the reference (e.g. more accessible), blue = below it.
ABOVE_COLOR, ABOVE_LIGHT = "#b2182b", "#f4a582"
BELOW_COLOR, BELOW_LIGHT = "#2166ac", "#92c5de"
_CHAR_W = 6.6  # approximate width of one 12px sans-serif character, for layout without font metrics
_ids = itertools.count()


@dataclass
class Series:
    """One line of points. ``x=None`` uses the chart's shared x values.

    ``flags`` marks points to ring in the failure colour; ``tips`` gives per-point hover text.
    """

    label: str
    y: Sequence[Any]
    x: Sequence[Any] | None = None
    color: str | None = None
    dash: bool = False
    markers: bool = True
    width: float = 2.0
    flags: Sequence[bool] | None = None
    tips: Sequence[str] | None = None


def _esc(text: Any) -> str:
    return escape(str(text), quote=True)


def num(value: Any) -> float | None:
    """``value`` as a finite float, or None for None/NaN/inf/non-numbers."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def fmt_num(value: Any, digits: int = 3) -> str:
    """Compact number text (``digits`` significant digits); "–" for missing values."""
    v = num(value)
    if v is None:
        return "–"
    if v == 0:
        return "0"
    text = f"{v:.{digits}g}"
    if "e" in text and 1e-3 <= abs(v) < 1e6:
        text = f"{v:.{max(digits - 1, 0)}f}"
    return "0" if text in ("-0", "-0.0") else text


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 × 10^k) covering ``[lo, hi]``."""
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    i = first
    while i * step <= hi + step * 1e-9:
        ticks.append(round(i * step, 12))
        i += 1
    return ticks


def _extent(values: Sequence[Any], include: Sequence[float] = (), pad: float = 0.06) -> tuple[float, float]:
    """Padded (lo, hi) over the finite values, snapped out to a round tick when one is close."""
    finite = [v for v in (num(x) for x in list(values) + list(include)) if v is not None]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    span = hi - lo or (abs(hi) * 0.2 or 1.0)
    lo, hi = lo - span * pad, hi + span * pad
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else span
    # Snapping to the next tick looks tidy, but not when it would waste a large part of the plot.
    if lo - (ticks[0] - step) < 0.12 * span and ticks[0] > lo:
        lo = ticks[0] - step
    if (ticks[-1] + step) - hi < 0.12 * span and ticks[-1] < hi:
        hi = ticks[-1] + step
    return lo, hi


class _Frame:
    """Maps data to pixels inside a plot area and draws axes, grid and labels."""

    def __init__(self, width: int, height: int, xlim: tuple[float, float], ylim: tuple[float, float],
                 margin: tuple[int, int, int, int] = (58, 20, 44, 46)) -> None:
        self.w, self.h = width, height
        self.left, self.right, self.top, self.bottom = margin
        self.xlim, self.ylim = xlim, ylim

    def x(self, v: float) -> float:
        lo, hi = self.xlim
        return self.left + (v - lo) / ((hi - lo) or 1) * (self.w - self.left - self.right)

    def y(self, v: float) -> float:
        lo, hi = self.ylim
        return self.h - self.bottom - (v - lo) / ((hi - lo) or 1) * (self.h - self.top - self.bottom)

    def axes(self, xlabel: str = "", ylabel: str = "", xticks: Sequence[float] | None = None,
             xtick_text: dict[float, str] | None = None, grid: bool = True, yticks: bool = True) -> list[str]:
        out: list[str] = []
        x0, x1, y0, y1 = self.left, self.w - self.right, self.top, self.h - self.bottom
        for t in nice_ticks(*self.ylim) if yticks else []:
            if self.ylim[0] - 1e-9 <= t <= self.ylim[1] + 1e-9:
                py = self.y(t)
                if grid:
                    out.append(f'<line x1="{x0}" x2="{x1}" y1="{py:.1f}" y2="{py:.1f}" stroke="{GRID}"/>')
                out.append(f'<text x="{x0 - 6}" y="{py + 4:.1f}" text-anchor="end" class="tick">{fmt_num(t)}</text>')
        for t in xticks if xticks is not None else nice_ticks(*self.xlim, target=8):
            if self.xlim[0] - 1e-9 <= t <= self.xlim[1] + 1e-9:
                px = self.x(t)
                label = (xtick_text or {}).get(t, fmt_num(t))
                out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y1}" y2="{y1 + 4}" stroke="{MUTED}"/>')
                out.append(f'<text x="{px:.1f}" y="{y1 + 16}" text-anchor="middle" class="tick">{_esc(label)}</text>')
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{y1}" y2="{y1}" stroke="{MUTED}"/>')
        out.append(f'<line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" stroke="{MUTED}"/>')
        if xlabel:
            out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{self.h - 8}" text-anchor="middle" class="axis">{_esc(xlabel)}</text>')
        if ylabel:
            cy = (y0 + y1) / 2
            out.append(f'<text x="14" y="{cy:.1f}" transform="rotate(-90 14 {cy:.1f})" text-anchor="middle" class="axis">{_esc(ylabel)}</text>')
        return out


def _svg(width: int, height: int, body: Sequence[str], title: str = "", legend: Sequence[tuple[str, str, str]] = ()) -> str:
    """Wrap chart elements in an ``<svg>`` with styles, title and a one-row legend under the title.

    ``legend`` items are ``(label, colour, kind)`` with kind ``line``, ``thin``, ``thick``, ``dash``, ``band``,
    ``dot`` or ``ring``.
    """
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" class="chart" font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif">',
        f"<title>{_esc(title)}</title>" if title else "",
        "<style>.tick{font-size:11px;fill:#4b5563}.axis{font-size:12px;fill:#374151}"
        ".ttl{font-size:14px;font-weight:600;fill:#111827}.lab{font-size:11px;fill:#374151}"
        ".lg{font-size:11.5px;fill:#374151}.plab{fill:#374151}</style>",
    ]
    if title:
        head.append(f'<text x="12" y="19" class="ttl">{_esc(title)}</text>')
    x = 12.0
    for label, color, kind in legend:
        sym = {
            "band": f'<rect x="{x}" y="25" width="16" height="10" fill="{color}" fill-opacity="0.18" stroke="{color}" stroke-opacity="0.4"/>',
            "dot": f'<circle cx="{x + 8}" cy="30" r="4" fill="{color}"/>',
            "ring": f'<circle cx="{x + 8}" cy="30" r="5" fill="none" stroke="{color}" stroke-width="2"/>',
            "dash": f'<line x1="{x}" x2="{x + 16}" y1="30" y2="30" stroke="{color}" stroke-width="2" stroke-dasharray="4 3"/>',
            "thin": f'<line x1="{x}" x2="{x + 16}" y1="30" y2="30" stroke="{color}" stroke-width="1.2"/>',
            "thick": f'<line x1="{x}" x2="{x + 16}" y1="30" y2="30" stroke="{color}" stroke-width="4"/>',
        }.get(kind, f'<line x1="{x}" x2="{x + 16}" y1="30" y2="30" stroke="{color}" stroke-width="2.5"/>')
        head.append(sym + f'<text x="{x + 21}" y="34" class="lg">{_esc(label)}</text>')
        x += 21 + len(str(label)) * _CHAR_W + 16
    return "".join(head) + "".join(body) + "</svg>"


def _legend_kind(s: Series) -> str:
    """The legend symbol that looks like the series: a dot, a dashed, thin, thick or plain line."""
    return "dot" if s.width <= 0 else "dash" if s.dash else "thick" if s.width >= 3 else "thin" if s.width < 1.5 else "line"


def _path(points: Sequence[tuple[float | None, float | None]], frame: _Frame) -> str:
    """SVG path data; a missing point starts a new segment instead of drawing through it."""
    parts, pen_down = [], False
    for px, py in points:
        if px is None or py is None:
            pen_down = False
            continue
        parts.append(f"{'L' if pen_down else 'M'}{frame.x(px):.1f},{frame.y(py):.1f}")
        pen_down = True
    return "".join(parts)


def _draw_series(s: Series, xs: Sequence[Any], frame: _Frame, color: str) -> list[str]:
    pts = [(num(a), num(b)) for a, b in zip(s.x if s.x is not None else xs, s.y)]
    out = []
    dash = ' stroke-dasharray="6 4"' if s.dash else ""
    d = _path(pts, frame) if s.width > 0 else ""
    if d:
        out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{s.width}"{dash} stroke-linejoin="round"/>')
    for i, (px, py) in enumerate(pts):
        if px is None or py is None:
            continue
        tip = s.tips[i] if s.tips is not None and i < len(s.tips) else f"{s.label}: x={fmt_num(px)}, y={fmt_num(py)}"
        cx, cy = frame.x(px), frame.y(py)
        if s.markers:
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{color}"><title>{_esc(tip)}</title></circle>')
        if s.flags is not None and i < len(s.flags) and s.flags[i]:
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="7" fill="none" stroke="{FAIL_COLOR}" stroke-width="2.2">'
                       f"<title>{_esc(tip)}</title></circle>")
    return out


def line_chart(x: Sequence[Any], series: Sequence[Series], *, title: str = "", xlabel: str = "", ylabel: str = "",
               band: tuple[Sequence[Any], Sequence[Any]] | None = None, band_label: str = "threshold band",
               inner_band: tuple[Sequence[Any], Sequence[Any]] | None = None, inner_label: str = "noise",
               hlines: Sequence[tuple[float, str]] = (), highlight_x: Sequence[Any] = (),
               highlight_label: str = "asserted", xticks: Sequence[float] | None = None,
               width: int = 600, height: int = 320) -> str:
    """Several series over a shared x axis, with optional shaded bands (lower, upper), reference lines
    ``(y, label)`` and highlighted x positions (drawn as faint columns with a marker on the axis)."""
    ys = [v for s in series for v in s.y] + [v for b in (band, inner_band) if b for part in b for v in part]
    xs_all = list(x) + [v for s in series if s.x is not None for v in s.x]
    frame = _Frame(width, height, _extent(xs_all, pad=0.02), _extent(ys, include=[h for h, _ in hlines]))
    body: list[str] = []
    colw = max((frame.w - frame.left - frame.right) / max(len(x), 1) * 0.6, 4)
    for hx in highlight_x:
        if num(hx) is not None:
            px = frame.x(num(hx))
            body.append(f'<rect x="{px - colw / 2:.1f}" y="{frame.top}" width="{colw:.1f}" height="{frame.h - frame.top - frame.bottom}" '
                        f'fill="#111827" fill-opacity="0.05"><title>{_esc(highlight_label)} {fmt_num(hx)}</title></rect>')
            body.append(f'<path d="M{px:.1f},{frame.h - frame.bottom - 7} l-4,7 h8z" fill="#111827"/>')
    for b, opacity in ((band, 0.13), (inner_band, 0.22)):
        if b:
            lower, upper = b
            top = [(num(a), num(c)) for a, c in zip(x, upper)]
            bot = [(num(a), num(c)) for a, c in zip(x, lower)]
            ok = [(t, u) for t, u in zip(top, bot) if None not in (*t, *u)]
            if ok:
                d = "M" + " L".join(f"{frame.x(a):.1f},{frame.y(c):.1f}" for (a, c), _ in ok)
                d += " L" + " L".join(f"{frame.x(a):.1f},{frame.y(c):.1f}" for _, (a, c) in reversed(ok)) + "Z"
                body.append(f'<path d="{d}" fill="{BAND_COLOR}" fill-opacity="{opacity}" stroke="none"/>')
    body = frame.axes(xlabel, ylabel, xticks) + body
    for hy, label in hlines:
        if num(hy) is not None:
            py = frame.y(num(hy))
            body.append(f'<line x1="{frame.left}" x2="{frame.w - frame.right}" y1="{py:.1f}" y2="{py:.1f}" stroke="{MUTED}" stroke-dasharray="5 4"/>')
            if label:
                body.append(f'<text x="{frame.w - frame.right - 4}" y="{py - 5:.1f}" text-anchor="end" class="lab">{_esc(label)}</text>')
    legend: list[tuple[str, str, str]] = []
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        body += _draw_series(s, x, frame, color)
        legend.append((s.label, color, _legend_kind(s)))
    if band:
        legend.append((band_label, BAND_COLOR, "band"))
    if inner_band:
        legend.append((inner_label, BAND_COLOR, "band"))
    if any(s.flags and any(s.flags) for s in series):
        legend.append(("fails", FAIL_COLOR, "ring"))
    return _svg(width, height, body, title, legend)


def dual_axis_chart(left: Sequence[Series], right: Sequence[Series], *, title: str = "", xlabel: str = "",
                    left_label: str = "", right_label: str = "", note: str = "", width: int = 600, height: int = 320,
                    right_hlines: Sequence[tuple[float, str]] = (), vlines: Sequence[tuple[float, str]] = (),
                    right_include: Sequence[float] = ()) -> str:
    """Two groups of series on one x axis: ``left`` against the left y axis, ``right`` against the right one.
    Right-axis series are drawn dashed-free but in their own colours; ``note`` is printed bottom-right.
    ``right_hlines`` are dashed reference lines ``(y, label)`` on the right axis (a threshold), ``vlines``
    solid vertical lines ``(x, label)`` in the failure colour (an event such as a stop); ``right_include`` are
    values the right axis must show (0, say)."""
    xs = [v for s in [*left, *right] for v in (s.x or range(len(s.y)))] + [x for x, _ in vlines]
    xlim = _extent(xs, pad=0.02)
    lf = _Frame(width, height, xlim, _extent([v for s in left for v in s.y]), margin=(58, 62, 44, 46))
    rf = _Frame(width, height, xlim, _extent([v for s in right for v in s.y], include=[*(y for y, _ in right_hlines), *right_include]),
                margin=(58, 62, 44, 46))
    body = lf.axes(xlabel, left_label)
    for hy, label in right_hlines:
        if num(hy) is not None:
            py = rf.y(num(hy))
            body.append(f'<line x1="{rf.left}" x2="{width - rf.right}" y1="{py:.1f}" y2="{py:.1f}" stroke="{FAIL_COLOR}" '
                        f'stroke-opacity="0.6" stroke-dasharray="5 4"/>')
            if label:
                body.append(f'<text x="{width - rf.right - 4}" y="{py - 5:.1f}" text-anchor="end" class="lab">{_esc(label)}</text>')
    for vx, label in vlines:
        if num(vx) is not None:
            px = rf.x(num(vx))
            body.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{rf.top}" y2="{height - rf.bottom}" stroke="{FAIL_COLOR}" stroke-width="2"/>')
            if label:
                # Right of the line, or left of it in the last fifth of the plot (where the text would be cut off).
                left_side = px > rf.left + 0.8 * (width - rf.left - rf.right)
                tx, anchor = (px - 4, "end") if left_side else (px + 4, "start")
                body.append(f'<text x="{tx:.1f}" y="{rf.top + 12}" text-anchor="{anchor}" class="lab" style="fill:{FAIL_COLOR}">{_esc(label)}</text>')
    x1 = width - rf.right
    body.append(f'<line x1="{x1}" x2="{x1}" y1="{rf.top}" y2="{height - rf.bottom}" stroke="{MUTED}"/>')
    for t in nice_ticks(*rf.ylim):
        if rf.ylim[0] - 1e-9 <= t <= rf.ylim[1] + 1e-9:
            body.append(f'<text x="{x1 + 6}" y="{rf.y(t) + 4:.1f}" class="tick">{fmt_num(t)}</text>')
    if right_label:
        cy = (rf.top + height - rf.bottom) / 2
        body.append(f'<text x="{width - 12}" y="{cy:.1f}" transform="rotate(90 {width - 12} {cy:.1f})" text-anchor="middle" class="axis">{_esc(right_label)}</text>')
    legend = []
    for i, (s, frame) in enumerate([(s, lf) for s in left] + [(s, rf) for s in right]):
        color = s.color or PALETTE[i % len(PALETTE)]
        body += _draw_series(s, range(len(s.y)), frame, color)
        legend.append((s.label, color, _legend_kind(s)))
    if note:
        # In the title row: inside the plot area it would cover the data.
        body.append(f'<text x="{x1}" y="19" text-anchor="end" class="axis" font-weight="600">{_esc(note)}</text>')
    return _svg(width, height, body, title, legend)


def round_span(deviation: float) -> float:
    """The smallest round number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 × 10^k) at least ``deviation``: a symmetric
    scale ``center ± round_span`` then has round ends and a round midpoint on each side."""
    if not deviation or not math.isfinite(deviation) or deviation <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(deviation))
    return next(round(m * mag, 12) for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * mag >= deviation * (1 - 1e-9))


def bar_chart(labels: Sequence[str], values: Sequence[Any], *, tolerance: Sequence[Any] | float | None = None,
              ref: float = 1.0, flags: Sequence[bool] | None = None, title: str = "", xlabel: str = "",
              above_label: str = "above", below_label: str = "below",
              sort: bool = True, width: int = 600, row_height: int = 18) -> str:
    """Horizontal bars growing from ``ref`` to each value, sorted by ``|value - ref|`` (largest first), on an
    x axis symmetric around ``ref``, with a shaded per-row tolerance band ``ref ± tolerance``.

    Bars above ``ref`` are red, below it blue (as in :func:`heatmap`); flagged (failing) bars are saturated and
    outlined, the others light.
    """
    n = len(labels)
    tol = [tolerance] * n if not isinstance(tolerance, Sequence) else list(tolerance)
    rows = list(zip(labels, values, tol, flags if flags is not None else [False] * n))
    if sort:
        rows.sort(key=lambda r: -abs((num(r[1]) if num(r[1]) is not None else ref) - ref))
    label_w = min(max((len(str(r[0])) for r in rows), default=4) * _CHAR_W + 14, 200)
    height = 44 + 46 + row_height * max(n, 1)
    reach = max([abs(v - ref) for v in (num(r[1]) for r in rows) if v is not None]
                + [t for t in (num(r[2]) for r in rows) if t is not None], default=0.0)
    half = round_span(reach * 1.05)
    frame = _Frame(width, height, (ref - half, ref + half), (0.0, 1.0), (int(label_w), 50, 44, 46))
    xticks = [ref + half * k / 2 for k in range(-2, 3)]
    body = frame.axes(xlabel, "", xticks=xticks, grid=False, yticks=False)
    for t in xticks:
        body.insert(0, f'<line x1="{frame.x(t):.1f}" x2="{frame.x(t):.1f}" y1="{frame.top}" y2="{height - frame.bottom}" stroke="{GRID}"/>')
    for i, (label, value, t, flag) in enumerate(rows):
        y = frame.top + i * row_height
        t = num(t)
        if t is not None:
            body.append(f'<rect x="{frame.x(ref - t):.1f}" y="{y:.1f}" width="{frame.x(ref + t) - frame.x(ref - t):.1f}" '
                        f'height="{row_height}" fill="{MUTED}" fill-opacity="0.13"/>')
        weight = ' font-weight="700"' if flag else ""
        body.append(f'<text x="{label_w - 8}" y="{y + row_height / 2 + 4:.1f}" text-anchor="end" class="lab"{weight}>{_esc(label)}</text>')
        v = num(value)
        if v is None:
            body.append(f'<text x="{frame.x(ref) + 4:.1f}" y="{y + row_height / 2 + 4:.1f}" class="lab">–</text>')
            continue
        above = v >= ref
        color = (ABOVE_COLOR if flag else ABOVE_LIGHT) if above else (BELOW_COLOR if flag else BELOW_LIGHT)
        outline = ' stroke="#111827" stroke-width="1.2"' if flag else ""
        x0, x1 = sorted((frame.x(ref), frame.x(v)))
        direction = above_label if above else below_label
        tip = f"{label}: {fmt_num(v)}, {direction} (tolerance ±{fmt_num(t)})" + (" — fails" if flag else "")
        body.append(f'<rect x="{x0:.1f}" y="{y + 3:.1f}" width="{max(x1 - x0, 1):.1f}" height="{row_height - 6}" fill="{color}" rx="2"{outline}>'
                    f"<title>{_esc(tip)}</title></rect>")
        anchor, tx = ("start", x1 + 4) if above else ("end", x0 - 4)
        body.append(f'<text x="{tx:.1f}" y="{y + row_height / 2 + 4:.1f}" text-anchor="{anchor}" class="tick">{fmt_num(v)}</text>')
    px = frame.x(ref)
    body.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{frame.top - 4}" y2="{height - frame.bottom}" stroke="#111827" stroke-width="1.5"/>')
    failing = any(flag for *_, flag in rows)
    legend = [(f"{above_label}, fails", ABOVE_COLOR, "dot")] * failing + [(above_label, ABOVE_LIGHT, "dot")]
    legend += [(f"{below_label}, fails", BELOW_COLOR, "dot")] * failing + [(below_label, BELOW_LIGHT, "dot"), ("tolerance", MUTED, "band")]
    return _svg(width, height, body, title, legend)


def diverging_color(value: Any, center: float, span: float) -> str:
    """Colour for ``value`` on a blue (below ``center``) – white – red (above) scale saturating at ±``span``."""
    v = num(value)
    if v is None:
        return "#d1d5db"
    t = max(-1.0, min(1.0, (v - center) / (span or 1.0)))
    pos = (t + 1) / 2 * (len(_DIVERGING) - 1)
    i = min(int(pos), len(_DIVERGING) - 2)
    f = pos - i
    rgb = [round(a + (b - a) * f) for a, b in zip(_DIVERGING[i], _DIVERGING[i + 1])]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def heatmap(matrix: Sequence[Sequence[Any]], row_labels: Sequence[Any], col_labels: Sequence[Any], *, center: float = 0.0,
            span: float | None = None, title: str = "", xlabel: str = "", ylabel: str = "", legend_label: str = "",
            mark_abs_over: float | None = None, below_text: str = "", above_text: str = "",
            width: int = 1100, cell_height: int = 16) -> str:
    """Rows × columns of cells on a diverging scale symmetric around ``center``: blue below, red above,
    saturating at ``center ± span`` (default: the largest deviation, rounded up by :func:`round_span`).
    Cells with ``|value - center| > mark_abs_over`` get a dot; ``below_text``/``above_text`` name the two
    ends of the colour legend."""
    rows = [list(r) for r in matrix]
    devs = [abs(v - center) for r in rows for v in (num(c) for c in r) if v is not None]
    span = span or round_span(max(devs) if devs else 1.0)
    label_w = min(max((len(str(r)) for r in row_labels), default=3) * _CHAR_W + 14, 190)
    ncol = max((len(r) for r in rows), default=1)
    cell_w = (width - label_w - 20) / max(ncol, 1)
    top = 44
    height = int(top + cell_height * len(rows) + 96)
    body: list[str] = []
    every = max(1, math.ceil(ncol * 22 / (width - label_w)))  # skip column labels that would overlap
    for j, c in enumerate(col_labels):
        if j % every == 0:
            body.append(f'<text x="{label_w + (j + 0.5) * cell_w:.1f}" y="{top + cell_height * len(rows) + 14}" text-anchor="middle" class="tick">{_esc(c)}</text>')
    for i, (label, r) in enumerate(zip(row_labels, rows)):
        y = top + i * cell_height
        body.append(f'<text x="{label_w - 6}" y="{y + cell_height / 2 + 4:.1f}" text-anchor="end" class="lab">{_esc(label)}</text>')
        for j, value in enumerate(r):
            v = num(value)
            x = label_w + j * cell_w
            tip = f"{label} × {col_labels[j] if j < len(col_labels) else j}: {fmt_num(v)}"
            body.append(f'<rect x="{x:.1f}" y="{y}" width="{cell_w + 0.3:.1f}" height="{cell_height + 0.3}" fill="{diverging_color(v, center, span)}">'
                        f"<title>{_esc(tip)}</title></rect>")
            if mark_abs_over is not None and v is not None and abs(v - center) > mark_abs_over:
                body.append(f'<circle cx="{x + cell_w / 2:.1f}" cy="{y + cell_height / 2:.1f}" r="2.6" fill="#111827"/>')
    gy = top + cell_height * len(rows)
    if xlabel:
        body.append(f'<text x="{label_w + cell_w * ncol / 2:.1f}" y="{gy + 32}" text-anchor="middle" class="axis">{_esc(xlabel)}</text>')
    if ylabel:
        body.append(f'<text x="12" y="{top - 8}" class="axis">{_esc(ylabel)}</text>')
    # Legend: a gradient strip from center - span to center + span.
    gid = f"g{next(_ids)}"
    stops = "".join(f'<stop offset="{k / 10:.1f}" stop-color="{diverging_color(center - span + 2 * span * k / 10, center, span)}"/>' for k in range(11))
    lx, lw = label_w, min(260, width - label_w - 20)
    body.append(f'<defs><linearGradient id="{gid}">{stops}</linearGradient></defs>'
                f'<rect x="{lx}" y="{gy + 46}" width="{lw}" height="10" fill="url(#{gid})" stroke="{GRID}"/>')
    for k in range(5):
        v = center - span + span * k / 2
        body.append(f'<line x1="{lx + lw * k / 4:.1f}" x2="{lx + lw * k / 4:.1f}" y1="{gy + 56}" y2="{gy + 60}" stroke="{MUTED}"/>'
                    f'<text x="{lx + lw * k / 4:.1f}" y="{gy + 71}" text-anchor="middle" class="tick">{fmt_num(v)}</text>')
    if below_text:
        body.append(f'<text x="{lx}" y="{gy + 86}" class="lab" style="fill:{BELOW_COLOR}">← {_esc(below_text)}</text>')
    if above_text:
        body.append(f'<text x="{lx + lw}" y="{gy + 86}" text-anchor="end" class="lab" style="fill:{ABOVE_COLOR}">{_esc(above_text)} →</text>')
    note = _esc(legend_label) + (f" · ● |Δ| &gt; {fmt_num(mark_abs_over)}" if mark_abs_over is not None else "")
    body.append(f'<text x="{lx + lw + 14}" y="{gy + 55}" class="lab">{note}</text>')
    return _svg(width, height, body, title)


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in SVG pixels (y grows downward)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: "Box") -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def inside(self, other: "Box") -> bool:
        return other.x0 <= self.x0 and self.x1 <= other.x1 and other.y0 <= self.y0 and self.y1 <= other.y1

    def hits_segment(self, a: tuple[float, float], b: tuple[float, float]) -> bool:
        """Whether the segment a–b passes through the box (sampled every 2 px: exact enough for layout)."""
        steps = max(1, int(math.hypot(b[0] - a[0], b[1] - a[1]) / 2))
        return any(self.x0 <= a[0] + (b[0] - a[0]) * k / steps <= self.x1 and self.y0 <= a[1] + (b[1] - a[1]) * k / steps <= self.y1
                   for k in range(steps + 1))


def _em_table(groups: dict[float, str]) -> dict[str, float]:
    return {char: em for em, chars in groups.items() for char in chars}


# Advance widths in em, rounded up to 0.05, of DejaVu Sans (what Chromium draws "system-ui" with on Linux, and
# wider than Segoe UI, Roboto or Helvetica), measured with getComputedTextLength; bold is weight 600. Other
# characters count as the widest. Boxes estimated from these hold the rendered text (tests/test_report.py).
_CHAR_EM = {
    False: _em_table({0.3: "'IJijl", 0.35: " ,./:;\\f|", 0.4: "()-[]rt", 0.45: "!", 0.5: '"*_`', 0.55: "?csz",
                      0.6: "FLTkvxy", 0.65: "$0123456789EPSYabdeghnopqu{}", 0.7: "BCKRVXZ", 0.75: "ANU",
                      0.8: "&DGHOQ", 0.85: "#+<=>^w~", 0.9: "M", 1.0: "%@Wm"}),
    True: _em_table({0.35: " 'ijl", 0.4: ",./:;IJ\\|", 0.45: "-f", 0.5: "!()[]_`rt", 0.55: '"*', 0.6: "?csz",
                     0.65: "Lx", 0.7: "$0123456789EFSaekovy", 0.75: "CPTYZbdghnpqu{}", 0.8: "ABKRVX",
                     0.85: "#+<=>DGHNU^~", 0.9: "&OQ", 0.95: "w", 1.0: "@M", 1.05: "%m", 1.15: "W"}),
}
_WIDEST_EM = {False: 1.0, True: 1.15}


def text_width(text: str, font_size: float, bold: bool = False) -> float:
    """Estimated width in px of one line of sans-serif text, without font metrics (a slight overestimate)."""
    table = _CHAR_EM[bold]
    return sum(table.get(char, _WIDEST_EM[bold]) for char in text) * font_size


def text_box(x: float, y: float, text: str, font_size: float, anchor: str = "start", bold: bool = False) -> Box:
    """Estimated box of a one-line SVG ``<text>`` at baseline ``(x, y)``, with 0.1 em either side for glyphs
    that overhang their advance (an italic-like "f", a final "r")."""
    w = text_width(text, font_size, bold)
    x0 = x if anchor == "start" else x - w if anchor == "end" else x - w / 2
    pad = 0.1 * font_size
    return Box(x0 - pad, y - 0.8 * font_size, x0 + w + pad, y + 0.25 * font_size)


@dataclass(frozen=True)
class LabelSpot:
    """Where a point's label went: baseline position, text-anchor, its box and whether it needs a leader line."""

    x: float
    y: float
    anchor: str
    box: Box
    leader: bool


def place_labels(points: Sequence[tuple[float, float, float]], texts: Sequence[str], font_size: float,
                 bold: Sequence[bool], bounds: Box, obstacles: Sequence[Box] = (),
                 segments: Sequence[tuple[tuple[float, float], tuple[float, float]]] = ()) -> list[LabelSpot | None]:
    """Greedy collision-free label placement for points ``(x, y, marker radius)``, in the given order.

    Each label tries eight spots around its point, then the same spots further out (with a leader line); a
    spot is taken only if its box stays inside ``bounds`` and overlaps no label placed before, no marker, no
    ``obstacles`` box and no ``segments`` (e.g. a path's arrows). None where no spot is free: the caller lists
    that label elsewhere, so labels never overlap anything.
    """
    markers = [Box(x - r - 1, y - r - 1, x + r + 1, y + r + 1) for x, y, r in points]
    taken: list[Box] = []
    out: list[LabelSpot | None] = []
    for i, ((px, py, r), text, heavy) in enumerate(zip(points, texts, bold)):
        spot = None
        for dist in (0.0, 10.0, 22.0, 36.0, 54.0):
            g = r + 3 + dist  # gap from the point's centre to the label
            d = g * 0.72  # diagonal spots sit a little closer in
            for dx, dy, anchor in ((g, 0.35 * font_size, "start"), (-g, 0.35 * font_size, "end"),
                                   (d, -d, "start"), (-d, -d, "end"), (d, d + 0.7 * font_size, "start"),
                                   (-d, d + 0.7 * font_size, "end"), (0, -g, "middle"), (0, g + 0.75 * font_size, "middle")):
                box = text_box(px + dx, py + dy, text, font_size, anchor, heavy)
                if not box.inside(bounds) or any(box.overlaps(b) for b in [*taken, *obstacles]):
                    continue
                if any(box.overlaps(m) for j, m in enumerate(markers) if j != i) or box.overlaps(markers[i]):
                    continue
                if any(box.hits_segment(a, b) for a, b in segments):
                    continue
                spot = LabelSpot(px + dx, py + dy, anchor, box, leader=dist > 0)
                break
            if spot:
                break
        if spot:
            taken.append(spot.box)
        out.append(spot)
    return out


def _leader(px: float, py: float, r: float, box: Box) -> str:
    """A thin line from a point's marker edge to the nearest point of its label's box."""
    nx, ny = min(max(px, box.x0), box.x1), min(max(py, box.y0), box.y1)
    dist = math.hypot(nx - px, ny - py) or 1.0
    sx, sy = px + (nx - px) / dist * (r + 1), py + (ny - py) / dist * (r + 1)
    return f'<line x1="{sx:.1f}" y1="{sy:.1f}" x2="{nx:.1f}" y2="{ny:.1f}" stroke="{MUTED}" stroke-width="0.8"/>'


def trajectory_chart(path_xy: Sequence[Sequence[Any]], path_labels: Sequence[Any], ref_xy: Sequence[Sequence[Any]],
                     ref_labels: Sequence[Any], *, title: str = "", xlabel: str = "", ylabel: str = "",
                     path_name: str = "default persona", width: int = 600, height: int = 440) -> str:
    """Labelled reference points (blue) plus a path through ``path_xy`` in order, with arrows between
    consecutive points and each point labelled (e.g. by training step).

    Labels never overlap each other, a marker or an arrow (:func:`place_labels`): path labels are placed
    first, then reference labels; a label with no free spot is listed under the plot instead.
    """
    pts = [(num(p[0]), num(p[1])) if len(p) >= 2 else (None, None) for p in path_xy]
    refs = [(num(p[0]), num(p[1])) if len(p) >= 2 else (None, None) for p in ref_xy]
    all_pts = [p for p in pts + refs if None not in p]
    frame = _Frame(width, height, _extent([p[0] for p in all_pts]), _extent([p[1] for p in all_pts]))
    body = frame.axes(xlabel, ylabel)
    mid = f"a{next(_ids)}"
    body.append(f'<defs><marker id="{mid}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
                f'<path d="M0,0 L10,5 L0,10 z" fill="{PALETTE[5]}"/></marker></defs>')
    path_px = [(frame.x(x), frame.y(y), str(label)) for (x, y), label in zip(pts, list(path_labels) + [""] * len(pts))
               if x is not None and y is not None]
    ref_px = [(frame.x(x), frame.y(y), str(label)) for (x, y), label in zip(refs, ref_labels) if x is not None and y is not None]
    segments = []
    for (x0, y0, _), (x1, y1, _) in zip(path_px, path_px[1:]):
        # Stop short of the next dot so the arrow head stays visible.
        dist = math.hypot(x1 - x0, y1 - y0) or 1
        segments.append(((x0, y0), (x1 - (x1 - x0) / dist * 7, y1 - (y1 - y0) / dist * 7)))
    for cx, cy, label in ref_px:
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{PALETTE[4]}" fill-opacity="0.8"><title>{_esc(label)}</title></circle>')
    for (a, b) in segments:
        body.append(f'<line x1="{a[0]:.1f}" y1="{a[1]:.1f}" x2="{b[0]:.1f}" y2="{b[1]:.1f}" stroke="{PALETTE[5]}" stroke-width="2" marker-end="url(#{mid})"/>')
    for cx, cy, label in path_px:
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{PALETTE[5]}" stroke="#fff"><title>{_esc(path_name)} {_esc(label)}</title></circle>')
    font_size = 11.0
    points = [(cx, cy, 5.0) for cx, cy, _ in path_px] + [(cx, cy, 3.5) for cx, cy, _ in ref_px]
    texts = [label for *_, label in path_px] + [label for *_, label in ref_px]
    heavy = [True] * len(path_px) + [False] * len(ref_px)
    bounds = Box(frame.left + 2, frame.top, frame.w - frame.right, frame.h - frame.bottom - 2)
    spots = place_labels(points, texts, font_size, heavy, bounds, segments=segments)
    unplaced = []
    for (px, py, r), text, bold, spot in zip(points, texts, heavy, spots):
        if not text:
            continue
        if spot is None:
            unplaced.append(text)
            continue
        if spot.leader:
            body.append(_leader(px, py, r, spot.box))
        weight = ' font-weight="600"' if bold else ""
        body.append(f'<text x="{spot.x:.1f}" y="{spot.y:.1f}" text-anchor="{spot.anchor}" class="plab" '
                    f'font-size="{font_size:g}"{weight}>{_esc(text)}</text>')
    legend = [("personas (baseline)", PALETTE[4], "dot"), (path_name, PALETTE[5], "line")]
    if unplaced:
        body.append(f'<text x="{frame.left}" y="{height + 14}" class="lab">No room to label: {_esc(", ".join(unplaced))} '
                    "(hover the dots)</text>")
        height += 22
    return _svg(width, height, body, title, legend)
