"""A map of devices as inline SVG, drawn on the server: no tile server, no JavaScript.

The devices' positions are projected with Web Mercator onto their bounding box (with a margin, and
at least MIN_SPAN_DEG across so that one device or a tight cluster is not blown up to the frame),
each drawn as a circle linking to its device page, with a <title> tooltip; devices so close that
their circles would overlap (several sensors in one car park, say) are spread on a ring around their
shared position, with leader lines, so that none hides another. A scale bar (metres or
kilometres at the map's central latitude) and a north arrow stand in for the outlines and streets
a tile server would give; the devices table beside the map is its text alternative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT, MARGIN = 640, 400, 30
RADIUS = 6
"""A device's circle, in pixels."""
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


@dataclass
class _Group:
    spots: list[tuple[float, float]]
    members: list[Point]

    @property
    def centre(self) -> tuple[float, float]:
        return (
            sum(x for x, _ in self.spots) / len(self.spots),
            sum(y for _, y in self.spots) / len(self.spots),
        )

    @property
    def extent(self) -> float:
        """How far from its centre the group's circles reach, once spread."""
        return _ring(len(self.members)) + RADIUS


def _clusters(
    placed: Sequence[tuple[tuple[float, float], Point]],
) -> list[tuple[tuple[float, float], list[Point]]]:
    """Devices grouped so that no circle covers another once each group is spread: groups whose
    spread circles would touch are merged, again until none does (a lone device's circle is its
    own). Each group is at the mean position of its members, in the order their first member came."""
    groups = [_Group([xy], [p]) for xy, p in placed]
    merged = True
    while merged:
        merged = False
        # Sweep by x: only groups closer in x than their two extents can touch.
        order = sorted(range(len(groups)), key=lambda i: groups[i].centre[0])
        widest = max(g.extent for g in groups) if groups else 0.0
        for a_pos, a in enumerate(order):
            ga = groups[a]
            (ax, ay), reach = ga.centre, ga.extent
            for b in order[a_pos + 1 :]:
                gb = groups[b]
                (bx, by) = gb.centre
                if bx - ax >= reach + widest:
                    break
                if math.hypot(bx - ax, by - ay) < reach + gb.extent:
                    first, second = (ga, gb) if a < b else (gb, ga)
                    first.spots += second.spots
                    first.members += second.members
                    groups.remove(second)
                    merged = True
                    break
            if merged:
                break
    return [(g.centre, g.members) for g in groups]


def _spread(x: float, y: float, n: int) -> list[tuple[float, float]]:
    """Where n co-located devices are drawn: the point itself for one, else evenly on a ring around
    it (clockwise from north), moved inwards where the ring would leave the frame."""
    if n == 1:
        return [(x, y)]
    ring = _ring(n)
    reach = ring + RADIUS
    x = min(max(x, reach), WIDTH - reach) if 2 * reach <= WIDTH else WIDTH / 2
    y = min(max(y, reach), HEIGHT - reach) if 2 * reach <= HEIGHT else HEIGHT / 2
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
