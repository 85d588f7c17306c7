"""Inline SVG charts, drawn on the server: no chart library, nothing fetched at run time.

Every text that reaches the SVG goes through :func:`html.escape` (device ids and rule names come
from vendors and configuration)."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from html import escape
from typing import Any, Sequence

from markupsafe import Markup


def _fmt_time(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%H:%M")


def readings_svg(ts: Sequence[int], values: Sequence[float], *, thresholds: Sequence[tuple[str, float]] = (),
                 raised_ts: int | None = None, cleared_ts: int | None = None, unit: str = "",
                 width: int = 760, height: int = 260) -> Markup:
    """Value over time, the rule's thresholds as dashed lines, the raise (and clear) moment as bars."""
    left, right, top, bottom = 56, 16, 24, 30
    pw, ph = width - left - right, height - top - bottom
    if len(ts) == 0:
        return Markup(f'<svg class="chart" viewBox="0 0 {width} 60" role="img" aria-label="no readings">'
                      f'<text x="10" y="34">No readings stored for this source around the warning.</text></svg>')
    t0, t1 = float(min(ts)), float(max(ts))
    for m in (raised_ts, cleared_ts):
        if m is not None:
            t0, t1 = min(t0, m), max(t1, m)
    if t1 <= t0:
        t1 = t0 + 60_000
    t1 += (t1 - t0) * 0.08  # room after the last point for the raise/clear labels
    vals = [float(v) for v in values] + [v for _, v in thresholds]
    v0, v1 = min(vals), max(vals)
    if v1 <= v0:
        v0, v1 = v0 - 1, v1 + 1
    pad = (v1 - v0) * 0.08
    v0, v1 = v0 - pad, v1 + pad
    x = lambda t: left + (t - t0) / (t1 - t0) * pw  # noqa: E731
    y = lambda v: top + (1 - (v - v0) / (v1 - v0)) * ph  # noqa: E731
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="readings chart">',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plot"/>']
    for i in range(5):  # value grid
        v = v0 + (v1 - v0) * i / 4
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">{v:.3g}</text>')
    for i in range(5):  # time ticks
        t = t0 + (t1 - t0) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(f'<text x="{x(t):.1f}" y="{height - 8}" class="axis" text-anchor="{anchor}">{_fmt_time(t)}</text>')
    for label, v in thresholds:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="threshold"/>'
                   f'<text x="{left + pw - 4}" y="{y(v) - 4:.1f}" class="threshold-label" text-anchor="end">{escape(label)} {v:.4g}</text>')
    if raised_ts is not None:
        out.append(f'<line x1="{x(raised_ts):.1f}" x2="{x(raised_ts):.1f}" y1="{top}" y2="{top + ph}" class="raised"/>'
                   f'<text x="{x(raised_ts) - 4:.1f}" y="{top + 12}" class="raised-label" text-anchor="end">raised</text>')
    if cleared_ts is not None:
        out.append(f'<line x1="{x(cleared_ts):.1f}" x2="{x(cleared_ts):.1f}" y1="{top}" y2="{top + ph}" class="cleared"/>'
                   f'<text x="{x(cleared_ts) - 4:.1f}" y="{top + 26}" class="cleared-label" text-anchor="end">cleared</text>')
    step = max(1, len(ts) // 1500)  # at most ~1,500 points in the path
    pts = " ".join(f"{x(float(t)):.1f},{y(float(v)):.1f}" for t, v in zip(ts[::step], values[::step]))
    out.append(f'<polyline points="{pts}" class="series"/>')
    if len(ts) <= 120:  # few readings: show each one
        out.extend(f'<circle cx="{x(float(t)):.1f}" cy="{y(float(v)):.1f}" r="2.2" class="point"/>' for t, v in zip(ts, values))
    if unit:
        out.append(f'<text x="{left}" y="{top - 8}" class="axis">{escape(unit)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def map_svg(features: list[dict[str, Any]], highlight: str, point: tuple[float, float] | None = None,
            width: int = 420, height: int = 300) -> Markup:
    """The configured GeoJSON grid cells; the warning's cell filled, its device (if placed) a dot."""
    rings: list[tuple[str, list[list[float]]]] = []
    for f in features:
        g = f.get("geometry") or {}
        p = f.get("properties") or {}
        path = "/".join(str(p.get(k, "")) for k in ("city", "county", "town") if p.get(k)) + "/" + str(p.get("grid", p.get("name", "")))
        polys = [g.get("coordinates", [])] if g.get("type") == "Polygon" else g.get("coordinates", []) if g.get("type") == "MultiPolygon" else []
        for poly in polys:
            if poly:
                rings.append((path.strip("/"), poly[0]))
    if not rings:
        return Markup("")
    lons = [c[0] for _, r in rings for c in r] + ([point[1]] if point else [])
    lats = [c[1] for _, r in rings for c in r] + ([point[0]] if point else [])
    lon0, lon1, lat0, lat1 = min(lons), max(lons), min(lats), max(lats)
    k = math.cos(math.radians((lat0 + lat1) / 2))
    sx = (width - 20) / max((lon1 - lon0) * k, 1e-9)
    sy = (height - 20) / max(lat1 - lat0, 1e-9)
    s = min(sx, sy)
    X = lambda lon: 10 + (lon - lon0) * k * s  # noqa: E731
    Y = lambda lat: height - 10 - (lat - lat0) * s  # noqa: E731
    out = [f'<svg class="map" viewBox="0 0 {width} {height}" role="img" aria-label="grid map">']
    for path, ring in rings:
        cls = "cell hit" if highlight and (path == highlight or path.startswith(highlight + "/")) and highlight.count("/") >= 3 else "cell"
        pts = " ".join(f"{X(c[0]):.1f},{Y(c[1]):.1f}" for c in ring)
        cx = sum(c[0] for c in ring[:-1]) / max(1, len(ring) - 1)
        cy = sum(c[1] for c in ring[:-1]) / max(1, len(ring) - 1)
        out.append(f'<polygon points="{pts}" class="{cls}"><title>{escape(path)}</title></polygon>'
                   f'<text x="{X(cx):.1f}" y="{Y(cy) + 4:.1f}" class="cell-label" text-anchor="middle">{escape(path.rsplit("/", 1)[-1])}</text>')
    if point:
        out.append(f'<circle cx="{X(point[1]):.1f}" cy="{Y(point[0]):.1f}" r="6" class="device"/>')
    out.append("</svg>")
    return Markup("".join(out))


def funnel_svg(funnel: dict[str, int], width: int = 640) -> Markup:
    steps = [("raised", "Raised"), ("acknowledged", "Acknowledged"), ("dispatched", "Dispatched"),
             ("handled", "Handled"), ("closed", "Closed"), ("false_alarm", "False alarms")]
    top = max(1, max(funnel.get(k, 0) for k, _ in steps))
    row, lw = 30, 130
    out = [f'<svg class="funnel" viewBox="0 0 {width} {row * len(steps) + 6}" role="img" aria-label="case funnel">']
    for i, (k, label) in enumerate(steps):
        n = funnel.get(k, 0)
        w = max(2.0, (width - lw - 70) * n / top) if n else 0
        y = 4 + i * row
        cls = "bar fa" if k == "false_alarm" else "bar"
        out.append(f'<text x="0" y="{y + 18}" class="axis">{label}</text>'
                   f'<rect x="{lw}" y="{y}" width="{w:.1f}" height="{row - 8}" class="{cls}"/>'
                   f'<text x="{lw + w + 6:.1f}" y="{y + 18}" class="count" data-step="{k}">{n}</text>')
    out.append("</svg>")
    return Markup("".join(out))
