"""The chart draws what was measured: a line per run of consecutive hours, a dot for a lone hour."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from civicflow.portal.chart import hourly_chart

pytestmark = pytest.mark.unit
H0 = datetime(2026, 3, 2, 8, tzinfo=UTC)


def hours(*offsets: int) -> list[tuple[datetime, float]]:
    return [(H0 + timedelta(hours=h), float(h)) for h in offsets]


def test_a_missing_hour_breaks_the_line_and_a_lone_hour_is_a_dot():
    svg = hourly_chart(hours(0, 1, 2, 4, 5, 9), "pm10", "ug/m3")
    lines = [line.split() for line in re.findall(r'<polyline [^>]*points="([^"]+)"', svg)]
    assert [len(line) for line in lines] == [3, 2]
    [dot] = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg)
    assert dot == ("600.0", "40.0")  # the last hour, the highest value: top right of the plot
    assert lines[0][0] == "40.0,200.0"  # the first hour, the lowest value: bottom left
    assert "pm10 (ug/m3), hourly means from 2026-03-02 08:00 to 2026-03-02 17:00 UTC" in svg


def test_consecutive_hours_are_one_line_and_no_points_no_chart():
    svg = hourly_chart(hours(*range(24)), "occupancy", "1")
    assert len(re.findall(r"<polyline ", svg)) == 1 and "<circle" not in svg
    assert hourly_chart([], "occupancy", "1") == ""
