"""Where the sensors are: devices.geojson in the release, the devices API, the map and device pages."""

from __future__ import annotations

import hashlib
import html
import json
import math
import re

from conftest import P1_AT, P1_REFUSED, P2_AT, S1_AT

from civicflow.publish.devices import DEVICES_FILE


def released_geojson(released, dataset: str) -> tuple[bytes, dict]:
    data = (released.latest / dataset / DEVICES_FILE).read_bytes()
    return data, json.loads(data)


def test_the_release_lists_each_dataset_s_devices_as_geojson_with_lon_lat(released):
    _, parking = released_geojson(released, "parking")
    assert parking["type"] == "FeatureCollection"
    by_id = {f["id"]: f for f in parking["features"]}
    assert sorted(by_id) == ["testtown/p1", "testtown/p2"]
    for feature in parking["features"]:
        assert feature["type"] == "Feature" and set(feature) == {"type", "id", "geometry", "properties"}
    # [lon, lat] (RFC 7946): p1 as its readings say, exactly; p2 from the registry.
    assert by_id["testtown/p1"]["geometry"] == {"type": "Point", "coordinates": [P1_AT[1], P1_AT[0]]}
    assert by_id["testtown/p2"]["geometry"] == {"type": "Point", "coordinates": [P2_AT[1], P2_AT[0]]}
    p1 = by_id["testtown/p1"]["properties"]
    assert p1 == {
        "dataset": "parking",
        "council": "testtown",
        "device_id": "p1",
        "model": None,
        "citizen_hosted": False,
        "position_decimals": None,
        "reporting_interval_s": 1800,
        "reporting_interval_from": "registry",
        "total_spots": 100,
        "first_reading": "2016-10-04T08:00:00Z",
        "last_reading": "2016-10-05T11:30:00Z",
        "readings": 16,
        "days": 2,
        "coverage": round(8 / 48, 4),  # 8 of 48 half-hours on each of its 2 days
    }
    p2 = by_id["testtown/p2"]["properties"]
    assert (p2["reporting_interval_s"], p2["reporting_interval_from"]) == (3600, "readings")
    # 4 hours of 24 on the first day, nothing on the second: the missing day counts.
    assert (p2["total_spots"], p2["coverage"], p2["days"]) == (80, round(4 / 24 / 2, 4), 2)


def test_a_citizen_hosted_device_is_rounded_to_the_registry_s_precision(released):
    _, air = released_geojson(released, "air_quality")
    (s1,) = air["features"]
    assert s1["geometry"]["coordinates"] == [round(S1_AT[1], 3), round(S1_AT[0], 3)] == [-2.077, 57.138]
    assert (s1["properties"]["citizen_hosted"], s1["properties"]["position_decimals"]) == (True, 3)
    assert "total_spots" not in s1["properties"]


def test_the_data_package_lists_the_file_with_its_bytes_and_hash(released):
    data, _ = released_geojson(released, "parking")
    package = json.loads((released.latest / "parking" / "datapackage.json").read_text())
    (listed,) = [r for r in package["resources"] if r["path"] == DEVICES_FILE]
    assert (listed["bytes"], listed["mediatype"], listed["civicflow"]) == (
        len(data),
        "application/geo+json",
        {"devices": 2, "positioned": 2},
    )

    assert listed["hash"] == "sha256:" + hashlib.sha256(data).hexdigest()


def test_the_api_answers_what_the_release_file_says(client, released):
    data, parking = released_geojson(released, "parking")
    geo = client.get("/api/datasets/parking/devices", params={"format": "geojson"})
    assert geo.status_code == 200 and geo.headers["content-type"] == "application/geo+json"
    assert geo.content == data
    answer = client.get("/api/datasets/parking/devices").json()
    assert answer["count"] == 2 and answer["geojson"].endswith("/parking/devices.geojson")
    for record, feature in zip(answer["devices"], parking["features"], strict=True):
        lon, lat = feature["geometry"]["coordinates"]
        assert record == {**feature["properties"], "lat": lat, "lon": lon}
    assert client.get("/api/datasets/parking/devices", params={"council": "elsewhere"}).json()["count"] == 0
    download = client.get(answer["geojson"])
    assert (download.status_code, download.content) == (200, data)


def test_the_device_page_shows_its_latest_readings_and_chart(client):
    page = client.get("/datasets/parking/devices/testtown/p1")
    assert page.status_code == 200
    table = page.text.split('id="latest-readings"')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", table)
    # Newest first: p1's last readings on 2016-10-05, 11:30 then 11:00, occupied 21 then 21.
    assert rows[:2] == [("2016-10-05 11:30:00+00:00", "21"), ("2016-10-05 11:00:00+00:00", "21")]
    assert len(rows) == 8  # its last day's readings (at most 10)
    assert "<svg" in page.text and "Hourly mean of occupied_spots" in page.text
    assert f"{P1_AT[0]}, {P1_AT[1]}" in page.text
    assert client.get("/datasets/parking/devices/testtown/p9").status_code == 404


def test_the_dataset_map_draws_one_linked_point_per_positioned_device_and_nothing_external(client):
    page = client.get("/datasets/parking").text
    svg = page.split('class="device-map"')[1].split("</svg>")[0]
    points = re.findall(r'<a href="([^"]+)"><circle class="device"', svg)
    assert points == ["/datasets/parking/devices/testtown/p1", "/datasets/parking/devices/testtown/p2"]
    assert "<title>p1 (" in svg and re.search(r">\d+ k?m</text>", svg)  # tooltips, a scale bar
    assert "http" not in svg and "<image" not in svg  # no tile server, nothing fetched
    assert '<a href="/datasets/parking/devices/testtown/p2">p2</a>' in page  # the table beside it


def test_the_device_page_shows_the_feedback_its_gateway_was_sent_and_no_payload_bytes(client, released):
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.feedback import published_summary

    con = connect(released.warehouse, read_only=True)
    sent = published_summary(con, "testtown", "parking", "p1")
    con.close()
    page = client.get("/datasets/parking/devices/testtown/p1").text
    table = page.split('id="device-feedback"')[1].split("</table>")[0]
    rows = {
        k: html.unescape(v)
        for k, v in re.findall(r"<tr><th scope=\"row\">([^<]*)</th><td>([^<]*)</td></tr>", table)
    }
    assert rows.pop("Published (UTC)") == sent["published_at"] == "2026-11-23T12:00:00Z"
    assert sent["window"]["by_reason"] == {"not_json": 2}
    assert rows == {
        "Refused over the 24 h before it (from 2026-11-22T12:00:00Z)": "2",
        "not_json": "2",
        "Last reason": "not_json",
        "Its detail (quoted values masked)": sent["last"]["detail"],
        "Last refused reading received (UTC)": sent["last"]["received_at"],
    }
    assert sent["last"]["detail"].startswith("payload is not JSON") and "'…'" in sent["last"]["detail"]
    for _, payload in P1_REFUSED:
        assert payload.decode() not in html.unescape(page)
    assert "secret-value" not in page and "not json at all" not in page
    # A device with nothing refused says so; p2 has no summary.
    other = client.get("/datasets/parking/devices/testtown/p2").text
    assert 'id="device-feedback"' not in other and "No rejection summary was published" in other


def test_co_located_devices_are_spread_around_their_position_so_none_hides_another():
    """Four sensors of one car park at one position would draw as one circle: they are spread on a
    ring around the spot (each its own link, with a leader line); a device elsewhere stays put."""
    from civicflow.portal.map import RADIUS, Point, device_map

    at = (52.4796, -1.9027)
    points = [
        *(Point(at[0], at[1], f"bay-{i}", f"/d/bay-{i}") for i in range(4)),
        Point(52.4896, -1.8927, "far", "/d/far"),
    ]
    svg = device_map(points, "test map")
    circles = {
        href: (float(x), float(y))
        for href, x, y in re.findall(
            r'<a href="([^"]+)"><circle class="device" cx="([\d.]+)" cy="([\d.]+)"', svg
        )
    }
    assert sorted(circles) == ["/d/bay-0", "/d/bay-1", "/d/bay-2", "/d/bay-3", "/d/far"]
    bays = [circles[f"/d/bay-{i}"] for i in range(4)]
    assert min(math.dist(a, b) for i, a in enumerate(bays) for b in bays[i + 1 :]) > 2 * RADIUS
    [(cx, cy, title)] = re.findall(
        r'<g class="cluster"><circle cx="([\d.]+)" cy="([\d.]+)" r="3"[^>]*><title>([^<]+)', svg
    )
    assert title == "4 devices here"
    leaders = re.findall(
        r'<line x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" y2="([\d.]+)" stroke="#555"/>', svg
    )
    assert sorted((float(x2), float(y2)) for _, _, x2, y2 in leaders) == sorted(bays)
    assert {(x1, y1) for x1, y1, _, _ in leaders} == {(cx, cy)}
    assert min(math.dist(circles["/d/far"], b) for b in bays) > 2 * RADIUS


def test_spots_are_spread_inside_the_frame_and_crowds_become_one_numbered_marker():
    """Pixel-level: devices at one spot are grouped, devices merely near each other are not (a
    dense map keeps a circle per device, as any map of points); a ring at the edge moves inwards;
    more than SPREAD_MAX at one spot are one marker with their number; no device is lost."""
    from civicflow.portal.map import HEIGHT, RADIUS, SPREAD_MAX, WIDTH, Point, _clusters, _spread, device_map

    def groups(spots: list[tuple[float, float]]) -> list[int]:
        placed = [(xy, Point(0.0, 0.0, str(i), f"/d/{i}")) for i, xy in enumerate(spots)]
        return [len(members) for _, members in _clusters(placed)]

    assert groups([(100.0, 100.0)] * 3 + [(100.4, 100.3)]) == [4]  # one spot, positions rounded alike
    assert groups([(100.0, 100.0), (108.0, 100.0), (116.0, 100.0)]) == [1, 1, 1]  # near, not one spot
    edge = _spread(2.0, 200.0, SPREAD_MAX)
    assert min(math.dist(a, b) for i, a in enumerate(edge) for b in edge[i + 1 :]) > 2 * RADIUS
    assert all(RADIUS <= x <= WIDTH - RADIUS and RADIUS <= y <= HEIGHT - RADIUS for x, y in edge)

    crowd = [Point(52.45, -1.85, f"s{i}", f"/s/{i}") for i in range(SPREAD_MAX + 3)]
    spread = [Point(52.40 + i * 0.0005, -1.90 + (i % 7) * 0.0007, f"d{i}", f"/d/{i}") for i in range(300)]
    svg = device_map(crowd + spread, "test map")
    assert re.findall(r'<g class="bundle">.*?<title>(\d+) devices here.*?>(\d+)</text></g>', svg) == [
        (str(SPREAD_MAX + 3), str(SPREAD_MAX + 3))
    ]
    drawn = re.findall(r'<a href="/d/(\d+)"><circle class="device" cx="([\d.]+)" cy="([\d.]+)"', svg)
    assert sorted(int(i) for i, _, _ in drawn) == list(range(300))
    assert all(0 <= float(x) <= WIDTH and 0 <= float(y) <= HEIGHT for _, x, y in drawn)
