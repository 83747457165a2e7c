"""The portal's pages: catalogue, dataset page, downloads and the DCAT-AP catalogue."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from factories import car_park
from fastapi.testclient import TestClient

from civicflow.contract import Domain
from civicflow.portal.app import create_app, dataset_months, month_archives, month_days
from civicflow.portal.release import DatasetRelease, Resource
from civicflow.publish.release import latest_release

pytestmark = pytest.mark.integration


def test_catalogue_lists_datasets_by_council_with_licence(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert '<html lang="en">' in html
    assert re.search(
        r"<h3>citizens</h3>\s*<ul>\s*<li><a href=\"/datasets/air_quality\?council=citizens\">Air quality",
        html,
    )
    assert re.search(
        r"<h3>testtown</h3>\s*<ul>\s*<li><a href=\"/datasets/parking\?council=testtown\">Car park", html
    )
    assert "Open Data Commons Open Database License 1.0; 2016-10-04 to 2016-10-04" in html
    assert "Open Government Licence v3.0; 2016-10-04 to 2016-10-05" in html
    for control in ("q", "council", "domain"):
        assert f'<label for="{control}">' in html and f'id="{control}"' in html


@pytest.mark.parametrize(
    ("params", "shown"),
    [
        ({"q": "occupancy"}, ["parking"]),
        ({"q": "POLLUTANTS air"}, ["air_quality"]),
        ({"council": "citizens"}, ["air_quality"]),
        ({"domain": "parking"}, ["parking"]),
        ({"q": "no such thing"}, []),
    ],
)
def test_catalogue_search_filters_on_the_server(client, params, shown):
    html = client.get("/", params=params).text
    assert sorted(re.findall(r'href="/datasets/(\w+)\?', html)) == shown
    if not shown:
        assert "No dataset matches." in html


def test_dataset_page_has_schema_units_licence_coverage_quality_and_chart(client):
    html = client.get("/datasets/parking").text
    assert "<h1>Car park and parking bay occupancy</h1>" in html
    assert [h for h in re.findall(r"<h2>([^<]+)</h2>", html)] == [
        "Councils, licences and coverage",
        "Update frequency",
        "Schema",
        "Quality",
        "Recent values",
    ]
    assert '<h2 id="devices">Devices</h2>' in html and '<h2 id="downloads">Downloads</h2>' in html
    assert re.search(r"<code>occupied_spots</code></th><td>integer</td><td>spot</td>", html)
    assert re.search(r"<code>occupancy</code></th><td>number</td><td>1</td>", html)
    assert "Open Government Licence v3.0</a> (OGL-UK-3.0)" in html
    assert "<td>2016-10-04 to 2016-10-05</td>" in html
    assert "devices report about every 30 minutes" in html
    # quality.json of testtown: 2 days, 20 rows, none flagged
    assert '<th scope="row">testtown</th><td>2</td><td>20</td>' in html
    assert 'href="/datasets/parking/data-docs/testtown/2016-10-05"' in html
    # the chart: hourly means of p1's occupied spots, 8 hours over two days
    svg = re.search(r"<svg .*?</svg>", html).group(0)
    assert "occupied_spots (spot), hourly means from 2016-10-04 08:00 to 2016-10-05 11:00 UTC" in svg
    # one line per day: the night between has no reading, and no line is drawn through it
    assert [len(line.split()) for line in re.findall(r'points="([^"]+)"', svg)] == [4, 4]
    for label in ("council", "device", "measure"):
        assert f'<label for="{label}">' in html


def test_chart_follows_the_chosen_device_and_measurement(client):
    html = client.get(
        "/datasets/parking", params={"council": "testtown", "device": "p2", "measure": "occupancy"}
    ).text
    assert "occupancy (1), hourly means from 2016-10-04 08:00 to 2016-10-04 11:00 UTC" in html
    assert '<option value="p2" selected>' in html


def test_chart_lists_every_device_whatever_a_page_of_rows_holds(client, monkeypatch):
    """The chart reads the council's last days for one device: no page limit hides a device."""
    monkeypatch.setattr("civicflow.portal.app.MAX_LIMIT", 8)  # p1 alone has 8 hourly rows, p2 4 more
    html = client.get("/datasets/parking", params={"device": "p2"}).text
    assert re.findall(r'<option value="(p\d)"', html) == ["p1", "p2"]
    assert '<option value="p2" selected>' in html
    svg = re.search(r"<svg .*?</svg>", html).group(0)
    assert "hourly means from 2016-10-04 08:00 to 2016-10-04 11:00 UTC" in svg
    assert [len(line.split()) for line in re.findall(r'points="([^"]+)"', svg)] == [4]


def test_air_quality_page_shows_the_citizens_licence_and_attribution(client):
    html = client.get("/datasets/air_quality").text
    assert (
        "Open Data Commons Open Database License 1.0</a> (ODbL-1.0); "
        "attribution: Citizen sensor network contributors" in html
    )
    assert re.search(r"<code>pm10</code></th><td>number</td><td>ug/m3</td>", html)


def test_download_links_return_the_exact_published_bytes(client, released):
    html = client.get("/datasets/parking").text
    release = latest_release(released)
    package = json.loads((release / "parking" / "datapackage.json").read_text())
    links = re.findall(rf'href="(/releases/{release.name}/parking/[^"]+)"', html)
    by_path = {r["path"]: r for r in package["resources"]}
    checked = 0
    for link in links:
        relpath = link.split("/parking/", 1)[1]
        body = client.get(link)
        assert body.status_code == 200, link
        assert body.content == (release / "parking" / relpath).read_bytes()
        if relpath in by_path:
            assert "sha256:" + hashlib.sha256(body.content).hexdigest() == by_path[relpath]["hash"]
            checked += 1
    # 2 days x (readings, hourly, daily) x (Parquet, CSV), the month's and the year's archives
    # (Parquet, CSV.gz), devices.geojson
    assert checked == 12 + 4 + 1
    assert f"/releases/{release.name}/parking/datapackage.json" in links


def downloads_of(html: str) -> tuple[list[tuple[str, bool]], list[str], list[tuple[str, str, str]]]:
    """The Downloads section: (month, is current) of its navigation, its day rows, and its
    archive rows' (period, link text, href)."""
    section = html[html.index('<h2 id="downloads">') :]
    nav = re.search(r'<nav aria-label="Months">(.*?)</nav>', section, re.S).group(1)
    months = [
        (m, bool(cur)) for cur, m in re.findall(r'<a href="[^"]*"( aria-current="page")?>([^<]+)</a>', nav)
    ]
    days = re.findall(r'<tr><th scope="row">(\d{4}-\d{2}-\d{2})</th>', section)
    archives = [
        (period, text, href)
        for period, cells in re.findall(
            r'<tr class="archive"><th scope="row">([^<]+)</th>(.*?)</tr>', section, re.S
        )
        for href, text in re.findall(r'<a href="([^"]+)">([^<]+)</a>', cells)
    ]
    return months, days, archives


def test_downloads_are_paged_by_month_with_the_month_and_year_archives(client, released):
    release = latest_release(released).name
    html = client.get("/datasets/parking").text
    months, days, archives = downloads_of(html)
    assert months == [("2016-10", True)]  # the newest month is the default
    assert days == ["2016-10-05", "2016-10-04"]
    base = f"/releases/{release}/parking/archives/council=testtown"
    assert [(period, text, href) for period, text, href in archives] == [
        ("2016-10 (whole month)", "Parquet", f"{base}/parking-testtown-2016-10.parquet"),
        ("2016-10 (whole month)", "CSV.gz", f"{base}/parking-testtown-2016-10.csv.gz"),
        ("2016 (whole year)", "Parquet", f"{base}/parking-testtown-2016.parquet"),
        ("2016 (whole year)", "CSV.gz", f"{base}/parking-testtown-2016.csv.gz"),
    ]
    package = json.loads((latest_release(released) / "parking" / "datapackage.json").read_text())
    sizes = {r["path"]: r["bytes"] for r in package["resources"]}
    types = {"Parquet": "application/vnd.apache.parquet", "CSV.gz": "application/gzip"}
    for _, text, href in archives:
        answer = client.get(href)
        assert (answer.status_code, answer.headers["content-type"]) == (200, types[text]), href
        size = sizes[href.split("/parking/", 1)[1]]
        assert len(answer.content) == size
        assert f"{text}</a> ({size} bytes)" in html
    # The chosen month, the chart's choices kept in the month links, and months that are not there.
    chosen = client.get("/datasets/parking", params={"month": "2016-10", "device": "p2"}).text
    assert downloads_of(chosen)[:2] == (months, days)
    assert 'href="?device=p2&amp;month=2016-10#downloads" aria-current="page"' in chosen
    missing = client.get("/datasets/parking", params={"month": "2016-09"})
    assert missing.status_code == 404
    assert missing.json()["detail"] == "parking has no published day in 2016-09: pick one of 2016-10"
    assert client.get("/datasets/parking", params={"month": "2016-13"}).status_code == 422


def test_a_month_lists_only_its_own_days_and_archives():
    """Two months of a council, as a release lists them: each month its days, its archive and its year's."""
    days = [date(2016, 9, 29), date(2016, 9, 30), date(2016, 10, 1)]
    resources = [
        Resource(f"council=t/date={d}/x.parquet", "readings", "t", d, "parquet", 10, "", {}, None, {})
        for d in days
    ]
    archives = {
        f"archives/council=t/x-t-{period}.{suffix}": {
            "path": f"archives/council=t/x-t-{period}.{suffix}",
            "format": fmt,
            "bytes": size,
            "civicflow": {
                "archive": "year" if len(period) == 4 else "month",
                "council": "t",
                "period": period,
            },
        }
        for period, size in (("2016-09", 20), ("2016-10", 10), ("2016", 30))
        for fmt, suffix in (("csv", "csv.gz"), ("parquet", "parquet"))
    }
    ds = DatasetRelease(Domain.PARKING, Path("."), {}, {}, resources, archives)
    assert dataset_months(ds) == ["2016-10", "2016-09"]
    assert month_days(ds, "t", "2016-09") == days[:2]
    assert month_days(ds, "t", "2016-10") == days[2:]
    assert [
        (a["period"], [(f["label"], f["bytes"]) for f in a["files"]])
        for a in month_archives(ds, "t", "2016-09")
    ] == [
        ("2016-09", [("Parquet", 20), ("CSV.gz", 20)]),
        ("2016", [("Parquet", 30), ("CSV.gz", 30)]),
    ]
    assert [a["period"] for a in month_archives(ds, "other", "2016-09")] == []


@pytest.mark.parametrize(
    "path",
    [
        "/releases/{id}/parking/../../latest.json",
        "/releases/{id}/parking/%2e%2e/%2e%2e/latest.json",
        "/releases/{id}/traffic/datapackage.json",
        "/releases/000000-20000101T000000Z/parking/datapackage.json",
        "/datasets/traffic",
        "/datasets/parking/data-docs/testtown/2016-10-06",
    ],
)
def test_only_files_a_kept_release_lists_are_served(client, released, path):
    assert client.get(path.format(id=latest_release(released).name)).status_code == 404


def test_data_docs_of_a_published_partition_are_the_page_in_its_release(client, released):
    release = latest_release(released).name
    moved = client.get("/datasets/parking/data-docs/testtown/2016-10-04", follow_redirects=False)
    assert moved.status_code == 307
    page_url = f"/releases/{release}/parking/data-docs/council=testtown/date=2016-10-04/v1.html"
    assert moved.headers["location"] == page_url
    assert moved.headers["cache-control"] == "public, no-cache"  # follows latest
    page = client.get(page_url)
    assert page.status_code == 200
    assert page.headers["cache-control"].endswith("immutable")
    assert 'role="status">Status: Passed</p>' in page.text
    assert '<link rel="stylesheet" href="../../data-docs.css">' in page.text
    css = client.get(f"/releases/{release}/parking/data-docs/data-docs.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    # Only the pages the manifest names: not a version it does not hold, nor anything beside them.
    for other in ("v2.html", "../../datapackage.json.bak", "v1.json"):
        missing = client.get(
            f"/releases/{release}/parking/data-docs/council=testtown/date=2016-10-04/{other}"
        )
        assert missing.status_code == 404


def test_dcat_catalogue_at_stable_urls(client, released):
    jsonld = client.get("/catalog.jsonld")
    assert jsonld.headers["content-type"].startswith("application/ld+json")
    assert jsonld.content == released.catalog("jsonld").read_bytes()
    ttl = client.get("/catalog.ttl")
    assert ttl.headers["content-type"].startswith("text/turtle")
    assert ttl.content == released.catalog("ttl").read_bytes()


def test_api_reference_is_a_page_of_the_portal_with_nothing_from_elsewhere(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.text
    assert "<script" not in html and "cdn" not in html.lower()  # works on a closed network
    assert re.findall(r"<h3><code>(GET [^<]+)</code></h3>", html) == [
        "GET /api/datasets",
        "GET /api/datasets/{dataset}/devices",
        "GET /api/datasets/{dataset}/{kind}",
        "GET /api/releases",
    ]
    # every parameter of the OpenAPI description, with its bounds and default
    assert (
        '<tr><th scope="row"><code>limit</code></th><td>query</td><td>integer</td><td>1..10000</td>'
        "<td>1000</td><td>Rows per page</td></tr>"
    ) in html
    assert "one of readings, hourly, daily, council_daily" in html
    # the time window, the 422 and HEAD, as the API answers them
    assert (
        "<code>start</code> from 1970-01-01T00:00:00Z and before 3000-01-01T00:00:00Z, "
        "<code>end</code> (exclusive)\nafter <code>start</code> and at most 3000-01-01T00:00:00Z."
    ) in html
    assert re.search(
        r'<th scope="row">422</th><td>A parameter cannot be used as given: `detail` names it', html
    )
    assert "Every GET also answers HEAD, with the same status and headers and no body." in html
    assert "one of json, csv, parquet" in html
    # examples name a dataset, council and day the release holds
    assert (
        "/api/datasets/parking/hourly?council=testtown&amp;start=2016-10-04T00:00:00Z"
        "&amp;end=2016-10-05T00:00:00Z&amp;format=csv"
    ) in html
    assert client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["paths"].keys() == {
        "/api/datasets",
        "/api/datasets/{dataset}/devices",
        "/api/datasets/{dataset}/{kind}",
        "/api/releases",
    }


def test_a_council_whose_only_day_is_held_back_has_a_quality_row_linking_its_data_docs(wh):
    """gloomtown's one car park had 2 of 12 readings refused (17 % > 5 %): its only day is held
    back and nothing of it is published, yet the dataset page's Quality table says so, beside
    testtown's published day, and links the Data Docs page that says why."""
    from factories import LIMITS, land

    from civicflow.jobs.publication import gate_and_publish
    from civicflow.transforms.stage import stage_segments

    layout, con = wh
    half_hourly = [
        car_park(device, f"2016-10-04T{h:02d}:{m:02d}:00Z", 10 + h, council=council)
        for council, device in (("testtown", "p1"), ("gloomtown", "g1"))
        for h in range(8, 13)
        for m in (0, 30)
    ]
    refused = [car_park("g1", f"2016-10-04T07:0{i}:00Z", 500, council="gloomtown") for i in range(2)]
    land(layout, half_hourly + refused)
    stage_segments(layout, con, LIMITS)
    result = gate_and_publish(layout, con, now=datetime(2026, 11, 23, 12, tzinfo=UTC))
    assert [(h["council"], h["date"], h["failed"]) for h in result.held_back] == [
        ("gloomtown", "2016-10-04", ["quarantine_share"])
    ]
    client = TestClient(create_app(layout))

    html = client.get("/datasets/parking").text
    rows = re.findall(r'<tr><th scope="row">(\w+)</th><td>(\d+)</td><td>(\d+)</td>', html)
    assert rows == [("gloomtown", "0", "0"), ("testtown", "1", "10")]  # days published, rows
    assert '<th scope="row">gloomtown</th><td>0</td><td>0</td>\n<td>–</td><td>–</td>' in html
    [(link, day)] = re.findall(
        r'<a href="(/releases/[^"]+/data-docs/council=gloomtown/[^"]+)">([\d-]+)</a>', html
    )
    assert day == "2016-10-04"
    page = client.get(link)
    assert page.status_code == 200 and "Failed: held back" in page.text
    # gloomtown publishes nothing: no chart choice or downloads offer it
    assert '<option value="gloomtown"' not in html
