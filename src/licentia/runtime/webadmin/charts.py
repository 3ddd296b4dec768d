"""Charts drawn on the server as inline SVG: no script, no library, nothing fetched.

`line_chart` draws a step line of values over time with an optional horizontal line (the
item's quantity); `bar_chart` draws labelled bars (denials per day, reservations)."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence

W, H = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 16, 40
COLOURS = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280")


def _frame(title: str, body: list[str], y_max: float, ident: str) -> str:
    e = html.escape
    out = [f"<figure class='chart' id='{e(ident)}'><figcaption>{e(title)}</figcaption>",
           f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' viewBox='0 0 {W} {H}' "
           f"role='img' aria-label='{e(title)}'>",
           f"<rect x='0' y='0' width='{W}' height='{H}' fill='#ffffff'/>",
           f"<line x1='{LEFT}' y1='{H - BOTTOM}' x2='{W - RIGHT}' y2='{H - BOTTOM}' stroke='#444'/>",
           f"<line x1='{LEFT}' y1='{TOP}' x2='{LEFT}' y2='{H - BOTTOM}' stroke='#444'/>"]
    for i in range(5):
        v = y_max * i / 4
        y = _y(v, y_max)
        out.append(f"<line x1='{LEFT}' y1='{y:.1f}' x2='{W - RIGHT}' y2='{y:.1f}' stroke='#e2e2e2'/>")
        label = f"{v:g}" if v == int(v) else f"{v:.1f}"
        out.append(f"<text x='{LEFT - 6}' y='{y + 4:.1f}' font-size='11' text-anchor='end'>{label}</text>")
    out += body
    out.append("</svg></figure>")
    return "".join(out)


def _y(v: float, y_max: float) -> float:
    return H - BOTTOM - (v / y_max if y_max else 0) * (H - TOP - BOTTOM)


def _day(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%m-%d %H:%M")


def line_chart(title: str, points: Sequence[tuple[float, float]], *, limit: float | None = None,
               limit_label: str = "quantity", ident: str = "chart") -> str:
    """A step line of (time, value); `limit` as a dashed horizontal line."""
    e = html.escape
    if not points:
        return f"<p class='empty'>{e(title)}: nothing in this period</p>"
    y_max = max([v for _, v in points] + ([limit] if limit is not None else [])) or 1.0
    y_max = float(y_max) * 1.1
    t0, t1 = points[0][0], points[-1][0]
    span = (t1 - t0) or 1.0

    def x(t: float) -> float:
        return LEFT + (t - t0) / span * (W - LEFT - RIGHT)

    path = []
    prev: float | None = None
    for t, v in points:
        if prev is None:
            path.append(f"M{x(t):.1f},{_y(v, y_max):.1f}")
        else:
            path.append(f"L{x(t):.1f},{_y(prev, y_max):.1f}L{x(t):.1f},{_y(v, y_max):.1f}")
        prev = v
    if len(points) == 1:
        path.append(f"L{W - RIGHT:.1f},{_y(points[0][1], y_max):.1f}")
    body = [f"<path d='{''.join(path)}' fill='none' stroke='{COLOURS[0]}' stroke-width='2.5' class='series'/>"]
    if limit is not None:
        ly = _y(limit, y_max)
        body.append(f"<line x1='{LEFT}' y1='{ly:.1f}' x2='{W - RIGHT}' y2='{ly:.1f}' stroke='#c53030' "
                    f"stroke-width='2' stroke-dasharray='6 4' class='limit'/>")
        body.append(f"<text x='{W - RIGHT}' y='{ly - 4:.1f}' font-size='11' text-anchor='end' "
                    f"fill='#c53030'>{e(limit_label)} {limit:g}</text>")
    for frac in (0.0, 0.5, 1.0):
        t = t0 + span * frac
        anchor = "start" if frac == 0 else "end" if frac == 1 else "middle"
        body.append(f"<text x='{x(t):.1f}' y='{H - BOTTOM + 16}' font-size='11' text-anchor='{anchor}'>"
                    f"{e(_day(t))}</text>")
    return _frame(title, body, y_max, ident)


def bar_chart(title: str, bars: Sequence[tuple[str, Sequence[float]]], *, series: Sequence[str] = ("",),
              ident: str = "bars") -> str:
    """Bars per label; several values per label are stacked side by side (`series` names them)."""
    e = html.escape
    if not bars:
        return f"<p class='empty'>{e(title)}: nothing in this period</p>"
    y_max = max((v for _, vs in bars for v in vs), default=0) or 1.0
    y_max = float(y_max) * 1.1
    slot = (W - LEFT - RIGHT) / len(bars)
    n = max(len(vs) for _, vs in bars)
    width = max(slot * 0.8 / n, 1.0)
    body = []
    for i, (label, values) in enumerate(bars):
        for j, v in enumerate(values):
            x = LEFT + i * slot + slot * 0.1 + j * width
            y = _y(v, y_max)
            body.append(f"<rect x='{x:.1f}' y='{y:.1f}' width='{width:.1f}' height='{H - BOTTOM - y:.1f}' "
                        f"fill='{COLOURS[j % len(COLOURS)]}' class='bar'><title>{e(label)}: {v:g}</title></rect>")
        if len(bars) <= 16 or i % max(len(bars) // 8, 1) == 0:
            body.append(f"<text x='{LEFT + i * slot + slot / 2:.1f}' y='{H - BOTTOM + 16}' font-size='11' "
                        f"text-anchor='middle'>{e(label[:14])}</text>")
    if len(series) > 1:
        for j, name in enumerate(series):
            body.append(f"<rect x='{W - RIGHT - 150}' y='{TOP + j * 16}' width='10' height='10' "
                        f"fill='{COLOURS[j % len(COLOURS)]}'/><text x='{W - RIGHT - 135}' y='{TOP + 9 + j * 16}' "
                        f"font-size='11'>{e(name)}</text>")
    return _frame(title, body, y_max, ident)
