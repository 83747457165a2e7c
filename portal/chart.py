"""A line chart of hourly means as inline SVG, drawn on the server so it needs no JavaScript."""

from __future__ import annotations

from datetime import datetime
from html import escape

WIDTH, HEIGHT, PAD = 640, 240, 40


def hourly_chart(points: list[tuple[datetime, float]], label: str, unit: str) -> str:
    """An SVG line of (hour, mean) points with its axes' extremes labelled; empty if no points."""
    if not points:
        return ""
    times = [t.timestamp() for t, _ in points]
    values = [v for _, v in points]
    t0, t1 = min(times), max(times)
    v0, v1 = min(values), max(values)
    span_t, span_v = (t1 - t0) or 1.0, (v1 - v0) or 1.0

    def xy(t: float, v: float) -> str:
        x = PAD + (t - t0) / span_t * (WIDTH - 2 * PAD)
        y = HEIGHT - PAD - (v - v0) / span_v * (HEIGHT - 2 * PAD)
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(t, v) for t, v in zip(times, values, strict=True))
    title = escape(
        f"{label} ({unit}), hourly means from {points[0][0]:%Y-%m-%d %H:%M} "
        f"to {points[-1][0]:%Y-%m-%d %H:%M} UTC"
    )
    return (
        f'<svg role="img" aria-labelledby="chart-title" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="chart-title">{title}</title>'
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#222"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#222"/>'
        f'<polyline fill="none" stroke="#0b4f8a" stroke-width="2" points="{line}"/>'
        f'<text x="4" y="{PAD}" font-size="12" fill="#222">{v1:.4g}</text>'
        f'<text x="4" y="{HEIGHT - PAD}" font-size="12" fill="#222">{v0:.4g}</text>'
        f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="12" fill="#222">{points[0][0]:%Y-%m-%d %H:%M}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="12" fill="#222" text-anchor="end">'
        f"{points[-1][0]:%Y-%m-%d %H:%M}</text></svg>"
    )
