"""The consumer API: filters and paging return exact rows, limits hold, bad input is a 422 saying why."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from civicflow.portal.query import MAX_LIMIT, MAX_OFFSET

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


WINDOW = "at or after 1970-01-01T00:00:00Z and before 3000-01-01T00:00:00Z"
END_WINDOW = "end must be after 1970-01-01T00:00:00Z and at or before 3000-01-01T00:00:00Z"
TIME_FORMS = "must be an RFC 3339 date-time such as 2016-10-04T09:00:00Z"


@pytest.mark.parametrize(
    ("params", "where", "message"),
    [
        ({"limit": MAX_LIMIT + 1}, "limit", "less than or equal to 10000"),
        ({"limit": 0}, "limit", "greater than or equal to 1"),
        ({"limit": 10**40}, "limit", "less than or equal to 10000"),
        ({"offset": MAX_OFFSET + 1}, "offset", "less than or equal to 1000000"),
        ({"offset": -1}, "offset", "greater than or equal to 0"),
        ({"offset": -(10**40)}, "offset", "greater than or equal to 0"),
        ({"start": "yesterday"}, "start", TIME_FORMS),
        ({"start": "1700000000"}, "start", TIME_FORMS),  # epoch seconds are not a documented form
        ({"end": "0"}, "end", TIME_FORMS),
        ({"start": "2015-02-29"}, "start", "start is not a time that exists (day is out of range for month)"),
        ({"start": "2016-10-04T24:00:00Z"}, "start", "(hour must be in 0..23)"),
        ({"start": "2016-10-04T10:00:00+24:00"}, "start", "offset +24:00 is not within -23:59..+23:59"),
        ({"start": "0001-01-01"}, "start", f"start must be {WINDOW}"),
        ({"start": "0001-01-01T00:00:00+14:00"}, "start", f"start must be {WINDOW}"),
        ({"start": "1969-12-31T23:59:59.999999Z"}, "start", f"start must be {WINDOW}"),
        ({"start": "1970-01-01T00:00:00+00:01"}, "start", f"start must be {WINDOW}"),  # 1969 in UTC
        ({"start": "3000-01-01"}, "start", f"start must be {WINDOW}"),
        ({"start": "2999-12-31T23:00:00-12:00"}, "start", f"start must be {WINDOW}"),  # 3000 in UTC
        ({"end": "9999-12-31"}, "end", END_WINDOW),
        ({"end": "9999-12-31T23:59:59-12:00"}, "end", END_WINDOW),
        ({"end": "1970-01-01T00:00:00Z"}, "end", END_WINDOW),
        ({"end": "3000-01-01T00:00:00.000001Z"}, "end", END_WINDOW),
        ({"format": "xlsx"}, "format", "'json', 'csv' or 'parquet'"),
        ({"start": "2016-10-05T00:00:00Z", "end": "2016-10-04T00:00:00Z"}, "end", "start must be before end"),
        (
            {"start": "2016-10-05T01:00:00+01:00", "end": "2016-10-05T00:00:00Z"},
            "end",
            "start must be before end",
        ),
        ({"council": "x" * 65}, "council", "at most 64 characters"),
    ],
)
def test_bad_parameters_get_a_422_naming_the_parameter_and_what_is_allowed(client, params, where, message):
    answer = client.get("/api/datasets/parking/readings", params=params)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"] == ["query", where]
    assert message in error["msg"]


@pytest.mark.parametrize("dataset", ["parking", "air_quality"])
@pytest.mark.parametrize("kind", ["readings", "hourly", "daily", "council_daily"])
@pytest.mark.parametrize(
    ("params", "where"), [({"start": "0001-01-01"}, "start"), ({"end": "9999-12-31"}, "end")]
)
def test_times_far_outside_the_window_are_refused_on_every_dataset_route(
    client, dataset, kind, params, where
):
    """These were a 500 (OverflowError while the time was moved to UTC)."""
    answer = client.get(f"/api/datasets/{dataset}/{kind}", params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == [
        {
            "type": "value_error",
            "loc": ["query", where],
            "msg": f"start must be {WINDOW} (the observation window)"
            if where == "start"
            else f"{END_WINDOW} (the observation window; end is exclusive)",
            "input": params[where],
        }
    ]


@pytest.mark.parametrize(
    ("start", "end", "count"),
    [
        ("1970-01-01T00:00:00Z", "3000-01-01T00:00:00Z", 20),  # the whole window
        ("1970-01-01", "3000-01-01", 20),
        ("1970-01-01T00:00:00-01:00", None, 20),  # 01:00 UTC
        (None, "2999-12-31T23:59:59+14:00", 20),
        ("2016-02-29", "2016-10-04T08:30:00Z", 2),  # a leap day
        ("1970-01-01", "1970-01-02", 0),  # valid, but before every published day
        ("2999-12-31T12:00:00Z", "3000-01-01T00:00:00Z", 0),  # valid, after every published day
        ("2016-10-04T10:59:59.999999999+01:00", "2016-10-04T10:00:00.000001Z", 2),  # p1 and p2 at 10:00
    ],
)
def test_a_range_within_the_window_answers_its_rows_or_none(client, start, end, count):
    params = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    body = get_rows(client, "/api/datasets/parking/readings", **params)
    assert body["count"] == len(body["rows"]) == count
    if count == 20:  # every reading of the release, in the natural key's order
        assert [r["device_id"] for r in body["rows"]] == ["p1"] * 16 + ["p2"] * 4


def test_an_empty_range_gives_every_kind_and_format_its_columns_and_no_rows(client):
    params = {"start": "1970-01-01", "end": "1970-01-02"}
    for kind in ("readings", "hourly", "daily", "council_daily"):
        assert get_rows(client, f"/api/datasets/parking/{kind}", **params)["rows"] == []
    csv = client.get("/api/datasets/parking/readings", params={**params, "format": "csv"})
    assert csv.text.splitlines() == [
        "council,device_id,observed_at,occupied_spots,total_spots,status,occupancy,lat,lon,qc_flag"
    ]
    parquet = client.get("/api/datasets/parking/daily", params={**params, "format": "parquet"})
    table = pq.read_table(io.BytesIO(parquet.content))
    assert (table.num_rows, "event_date" in table.column_names) == (0, True)


def test_bad_paths_get_a_clear_4xx(client):
    answer = client.get("/api/datasets/parking/council_daily", params={"device_id": "p1"})
    assert (answer.status_code, answer.json()["detail"]) == (
        422,
        [
            {
                "type": "value_error",
                "loc": ["query", "device_id"],
                "msg": "council_daily has one row per council and day: it cannot be filtered by device_id",
                "input": "p1",
            }
        ],
    )
    assert client.get("/api/datasets/bicycles/readings").status_code == 422
    assert client.get("/api/datasets/parking/weekly").status_code == 422
    missing = client.get("/api/datasets/traffic/readings")
    assert missing.status_code == 404
    assert "not in release" in missing.json()["detail"]


def test_sql_in_a_value_is_only_a_value(client):
    assert get_rows(client, "/api/datasets/parking/readings", device_id="p1' OR '1'='1")["rows"] == []
