"""The consumer API: filters and paging return exact rows, limits hold, bad input is a 4xx."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from portal.query import MAX_LIMIT, MAX_OFFSET

pytestmark = pytest.mark.integration


def get_rows(client, path, **params):
    answer = client.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_list_datasets(client):
    body = get_rows(client, "/api/datasets")
    assert [(d["dataset"], d["councils"]) for d in sorted(body["datasets"], key=lambda d: d["dataset"])] == [
        (
            "air_quality",
            [{"council": "citizens", "licence": "ODbL-1.0", "first": "2016-10-04", "last": "2016-10-04"}],
        ),
        (
            "parking",
            [{"council": "testtown", "licence": "OGL-UK-3.0", "first": "2016-10-04", "last": "2016-10-05"}],
        ),
    ]
    assert body["datasets"][0]["kinds"] == ["readings", "hourly", "daily", "council_daily"]


def test_readings_filtered_by_device_and_time(client):
    body = get_rows(
        client,
        "/api/datasets/parking/readings",
        council="testtown",
        device_id="p2",
        start="2016-10-04T09:00:00Z",
        end="2016-10-04T11:00:00+00:00",
    )
    assert [
        (r["device_id"], r["observed_at"], r["occupied_spots"], r["total_spots"]) for r in body["rows"]
    ] == [
        ("p2", "2016-10-04T09:00:00Z", 59, 80),
        ("p2", "2016-10-04T10:00:00Z", 60, 80),
    ]
    assert body["rows"][0]["occupancy"] == 59 / 80
    assert (body["count"], body["next"]) == (2, None)


def test_a_time_with_an_offset_is_the_same_instant(client):
    body = get_rows(
        client, "/api/datasets/parking/readings", device_id="p1", start="2016-10-05T12:30:00+01:00"
    )
    assert [r["observed_at"] for r in body["rows"]] == ["2016-10-05T11:30:00Z"]


def test_paging_walks_every_row_once_in_order(client):
    seen, url, pages = [], "/api/datasets/parking/readings?device_id=p1&limit=6", 0
    while url:
        body = client.get(url).json()
        seen += [r["observed_at"] for r in body["rows"]]
        url, pages = body["next"], pages + 1
    expected = [f"2016-10-0{d}T{h:02d}:{m:02d}:00Z" for d in (4, 5) for h in range(8, 12) for m in (0, 30)]
    assert seen == expected
    assert pages == 3  # 6 + 6 + 4


def test_aggregates_hourly_daily_and_council_daily(client):
    hourly = get_rows(client, "/api/datasets/parking/hourly", device_id="p1", end="2016-10-04T10:00:00Z")
    assert [(r["hour"], r["readings"], r["occupied_spots_mean"]) for r in hourly["rows"]] == [
        ("2016-10-04T08:00:00Z", 2, 18.0),
        ("2016-10-04T09:00:00Z", 2, 19.0),
    ]
    daily = get_rows(client, "/api/datasets/parking/daily", start="2016-10-05T00:00:00Z")
    assert [(r["device_id"], r["event_date"], r["readings"]) for r in daily["rows"]] == [
        ("p1", "2016-10-05", 8)
    ]
    council = get_rows(client, "/api/datasets/air_quality/council_daily", council="citizens")
    pm10 = next(r for r in council["rows"] if r["measurement"] == "pm10")
    assert (pm10["unit"], pm10["readings"], pm10["pooled_mean"]) == ("ug/m3", 3, 19.5)


def test_unknown_council_or_device_gives_no_rows(client):
    assert get_rows(client, "/api/datasets/parking/readings", council="elsewhere")["rows"] == []
    assert get_rows(client, "/api/datasets/parking/readings", device_id="p9")["rows"] == []


def test_csv_and_parquet_hold_the_same_rows_as_json(client):
    params = {"device_id": "p2", "limit": 3}
    rows = get_rows(client, "/api/datasets/parking/readings", **params)["rows"]
    csv = client.get("/api/datasets/parking/readings", params={**params, "format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines() == [
        "council,device_id,observed_at,occupied_spots,total_spots,status,occupancy,lat,lon,qc_flag",
        "testtown,p2,2016-10-04T08:00:00Z,58,80,,0.725,,,",
        "testtown,p2,2016-10-04T09:00:00Z,59,80,,0.7375,,,",
        "testtown,p2,2016-10-04T10:00:00Z,60,80,,0.75,,,",
    ]
    assert 'rel="next"' in csv.headers["link"]
    parquet = client.get("/api/datasets/parking/readings", params={**params, "format": "parquet"})
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.column("occupied_spots").to_pylist() == [r["occupied_spots"] for r in rows] == [58, 59, 60]


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"limit": MAX_LIMIT + 1}, 422, "less than or equal to 10000"),
        ({"limit": 0}, 422, "greater than or equal to 1"),
        ({"offset": MAX_OFFSET + 1}, 422, "less than or equal to 1000000"),
        ({"offset": -1}, 422, "greater than or equal to 0"),
        ({"start": "yesterday"}, 422, "valid datetime"),
        ({"format": "xlsx"}, 422, "'json', 'csv' or 'parquet'"),
        ({"start": "2016-10-05T00:00:00Z", "end": "2016-10-04T00:00:00Z"}, 400, "start must be before end"),
        ({"council": "x" * 65}, 422, "at most 64 characters"),
    ],
)
def test_bad_parameters_get_a_clear_4xx(client, params, status, message):
    answer = client.get("/api/datasets/parking/readings", params=params)
    assert answer.status_code == status
    assert message in answer.text


def test_bad_paths_get_a_clear_4xx(client):
    assert client.get("/api/datasets/parking/council_daily", params={"device_id": "p1"}).json() == {
        "detail": "council_daily has one row per council and day: it cannot be filtered by device_id"
    }
    assert client.get("/api/datasets/bicycles/readings").status_code == 422
    assert client.get("/api/datasets/parking/weekly").status_code == 422
    missing = client.get("/api/datasets/traffic/readings")
    assert missing.status_code == 404
    assert "not in release" in missing.json()["detail"]


def test_sql_in_a_value_is_only_a_value(client):
    assert get_rows(client, "/api/datasets/parking/readings", device_id="p1' OR '1'='1")["rows"] == []
