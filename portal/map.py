"""A map of devices as inline SVG, drawn on the server: no tile server, no JavaScript.

The devices' positions are projected with Web Mercator onto their bounding box (with a margin, and
at least MIN_SPAN_DEG across so that one device or a tight cluster is not blown up to the frame),
each drawn as a circle linking to its device page, with a <title> tooltip. Devices at one spot
(several sensors of one station or car park) are spread on a ring around it with leader lines, so
that none hides another; more than SPREAD_MAX there are one marker with their number (the table
lists them). A scale bar (metres or kilometres at the map's central latitude) and a north arrow
stand in for the outlines and streets a tile server would give; the devices table beside the map
is its text alternative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT, MARGIN = 640, 400, 30
RADIUS = 6
"""A device's circle, in pixels."""
SAME_SPOT = 2
"""Devices whose positions on the map are this close (pixels) are drawn as being at one spot."""
SPREAD_MAX = 12
"""Most devices at one spot spread on a ring; more are drawn as one marker with their number."""
BUNDLE_RADIUS = 12
MIN_SPAN_DEG = 0.01
"""Smallest extent drawn, in degrees of latitude and longitude (about 1 km)."""
EARTH_M_PER_DEG = 111_320.0
"""Metres per degree of longitude at the equator (WGS84, rounded)."""


@dataclass(frozen=True)
class Point:
    lat: float
    lon: float
    label: str
    href: str


def _mercator_y(lat: float) -> float:
    """Web Mercator's northing in degrees of longitude at the equator (y grows northwards)."""
    return math.degrees(math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)))


def _nice(metres: float) -> float:
    """The largest of 1, 2 and 5 times a power of ten at or below `metres`."""
    power = 10 ** math.floor(math.log10(metres))
    return max(step * power for step in (1, 2, 5) if step * power <= metres)


def _ring(n: int) -> float:
    """Radius of the ring n co-located devices are spread on (0 for one): wide enough that
    neighbours on it do not touch."""
    return 0.0 if n == 1 else max(3 * RADIUS, n * (2 * RADIUS + 4) / (2 * math.pi))


def _reach(n: int) -> float:
    """How far from its centre a group's drawing reaches: a ring of circles, or one bundle."""
    return BUNDLE_RADIUS if n > SPREAD_MAX else _ring(n) + RADIUS


def _inside(x: float, y: float, n: int) -> tuple[float, float]:
    """Where a group of n is drawn: its position, moved inwards where its drawing would leave the frame."""
    reach = _reach(n)
    return min(max(x, reach), WIDTH - reach), min(max(y, reach), HEIGHT - reach)


def _clusters(
    placed: Sequence[tuple[tuple[float, float], Point]],
) -> list[tuple[tuple[float, float], list[Point]]]:
    """Devices drawn at one spot (within SAME_SPOT pixels: one position in the registry, or
    positions rounded alike), grouped, each group at the mean position of its members, in the
    order their first member came. Devices merely near one another stay apart, as on any map of
    points: their circles may overlap, but none hides another whole."""
    groups: dict[tuple[int, int], tuple[list[tuple[float, float]], list[Point]]] = {}
    for (x, y), p in placed:
        spots, members = groups.setdefault((round(x / SAME_SPOT), round(y / SAME_SPOT)), ([], []))
        spots.append((x, y))
        members.append(p)
    return [
        ((sum(x for x, _ in spots) / len(spots), sum(y for _, y in spots) / len(spots)), members)
        for spots, members in groups.values()
    ]


def _spread(x: float, y: float, n: int) -> list[tuple[float, float]]:
    """Where n co-located devices are drawn: the point itself for one, else evenly on a ring around
    it (clockwise from north), moved inwards where the ring would leave the frame."""
    if n == 1:
        return [(x, y)]
    ring = _ring(n)
    x, y = _inside(x, y, n)
    return [
        (x + ring * math.sin(2 * math.pi * i / n), y - ring * math.cos(2 * math.pi * i / n)) for i in range(n)
    ]


def device_map(points: Sequence[Point], title: str, map_id: str = "map") -> str:
    """SVG of the points (one circle each, linked, titled) with a scale bar and a north arrow;
    empty if there are none."""
    if not points:
        return ""
    lats, lons = [p.lat for p in points], [p.lon for p in points]
    mid_lat, mid_lon = (min(lats) + max(lats)) / 2, (min(lons) + max(lons)) / 2
    half_lat = max(max(lats) - min(lats), MIN_SPAN_DEG) / 2
    half_lon = max(max(lons) - min(lons), MIN_SPAN_DEG) / 2
    x0, x1 = mid_lon - half_lon, mid_lon + half_lon
    y0 = _mercator_y(max(-85.0, mid_lat - half_lat))
    y1 = _mercator_y(min(85.0, mid_lat + half_lat))
    # One scale for both axes (Mercator is conformal): whichever extent fills the frame first.
    k = min((WIDTH - 2 * MARGIN) / (x1 - x0), (HEIGHT - 2 * MARGIN) / (y1 - y0))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return WIDTH / 2 + (lon - cx) * k, HEIGHT / 2 - (_mercator_y(lat) - cy) * k

    circles = []
    for (x, y), members in _clusters([(xy(p.lat, p.lon), p) for p in points]):
        if len(members) > SPREAD_MAX:
            # Too many in one place to spread: one marker with their number; the table lists them.
            bx, by = _inside(x, y, len(members))
            circles.append(
                f'<g class="bundle"><circle cx="{bx:.1f}" cy="{by:.1f}" r="{BUNDLE_RADIUS}" fill="#0b4f8a" '
                f'fill-opacity="0.8" stroke="#fff" stroke-width="1.5"><title>{len(members)} devices here '
                f"(listed in the table)</title></circle>"
                f'<text x="{bx:.1f}" y="{by + 4:.1f}" font-size="11" fill="#fff" text-anchor="middle">'
                f"{len(members)}</text></g>"
            )
            continue
        placed = _spread(x, y, len(members))
        if len(members) > 1:
            # Devices that would hide one another: a dot where they are, each spread on a ring
            # around it with a leader line, so every one can be seen and followed.
            circles.append(
                f'<g class="cluster"><circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#222">'
                f"<title>{len(members)} devices here</title></circle>"
                + "".join(
                    f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{px:.1f}" y2="{py:.1f}" stroke="#555"/>'
                    for px, py in placed
                )
                + "</g>"
            )
        for p, (px, py) in zip(members, placed, strict=True):
            circles.append(
                f'<a href="{escape(p.href)}"><circle class="device" cx="{px:.1f}" cy="{py:.1f}" r="{RADIUS}" '
                f'fill="#0b4f8a" fill-opacity="0.8" stroke="#fff" stroke-width="1.5">'
                f"<title>{escape(p.label)}</title></circle></a>"
            )
    # Scale bar: pixels per metre at the central latitude (Mercator stretches by 1/cos(lat)).
    px_per_m = k / (EARTH_M_PER_DEG * math.cos(math.radians(mid_lat)))
    bar_m = _nice((WIDTH / 4) / px_per_m)
    bar_px = bar_m * px_per_m
    label = f"{bar_m / 1000:g} km" if bar_m >= 1000 else f"{bar_m:g} m"
    sx, sy = MARGIN / 2, HEIGHT - MARGIN / 2
    scale = (
        f'<g class="scale"><line x1="{sx}" y1="{sy}" x2="{sx + bar_px:.1f}" y2="{sy}" stroke="#222" '
        f'stroke-width="3"/><text x="{sx}" y="{sy - 6}" font-size="12" fill="#222">{label}</text></g>'
    )
    nx, ny = WIDTH - MARGIN / 2 - 8, MARGIN / 2
    north = (
        f'<g class="north"><path d="M{nx} {ny} l8 24 l-8 -6 l-8 6 z" fill="#222"/>'
        f'<text x="{nx}" y="{ny + 38}" font-size="12" fill="#222" text-anchor="middle">N</text></g>'
    )
    return (
        f'<svg role="group" aria-labelledby="{map_id}-title" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg" class="device-map">'
        f'<title id="{map_id}-title">{escape(title)}</title>'
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#f4f6f8" stroke="#bbb"/>'
        + "".join(circles)
        + scale
        + north
        + "</svg>"
    )
