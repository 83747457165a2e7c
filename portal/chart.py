"""A line chart of hourly means as inline SVG, drawn on the server so it needs no JavaScript."""

from __future__ import annotations

from datetime import datetime
from html import escape

WIDTH, HEIGHT, PAD = 640, 240, 40
HOUR_S = 3600.0


def _runs(times: list[float]) -> list[range]:
    """Index ranges of consecutive hours: a line never bridges an hour with no reading."""
    runs, start = [], 0
    for i in range(1, len(times)):
        if times[i] - times[i - 1] > HOUR_S:
            runs.append(range(start, i))
            start = i
    runs.append(range(start, len(times)))
    return runs


def hourly_chart(points: list[tuple[datetime, float]], label: str, unit: str) -> str:
    """SVG lines of (hour, mean) points with the axes' extremes labelled; empty if no points.

    Each run of consecutive hours is its own line (a lone hour is a dot), so a night without
    readings shows as a gap rather than as a straight line through values nobody measured.
    """
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

    lines = []
    for run in _runs(times):
        coords = [xy(times[i], values[i]) for i in run]
        if len(coords) == 1:
            x, y = coords[0].split(",")
            lines.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="#0b4f8a"/>')
        else:
            lines.append(
                f'<polyline fill="none" stroke="#0b4f8a" stroke-width="2" points="{" ".join(coords)}"/>'
            )
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
        + "".join(lines)
        + f'<text x="4" y="{PAD}" font-size="12" fill="#222">{v1:.4g}</text>'
        f'<text x="4" y="{HEIGHT - PAD}" font-size="12" fill="#222">{v0:.4g}</text>'
        f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="12" fill="#222">{points[0][0]:%Y-%m-%d %H:%M}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="12" fill="#222" text-anchor="end">'
        f"{points[-1][0]:%Y-%m-%d %H:%M}</text></svg>"
    )
