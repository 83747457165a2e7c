"""Staging on real DuckDB files: exactly once, idempotent, de-duplicated, nothing dropped."""

from __future__ import annotations

import csv
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pyarrow.parquet as pq
import pytest
from factories import LIMITS, car_park, land, staged_file_rows, tree_digest

from civicflow.ingest.samples import BIRMINGHAM_PARKING, birmingham_parking_messages
from civicflow.registry import load_registry
from civicflow.transforms.stage import stage_segments

pytestmark = pytest.mark.integration


def staged_rows(con):
    return con.execute(
        "SELECT device_id, observed_at, occupied_spots, segment_id, record_offset "
        "FROM staged.parking ORDER BY ALL"
    ).fetchall()


def test_staging_twice_changes_nothing(wh):
    layout, con = wh
    land(
        layout, [car_park("p1", "2016-10-04T08:00:00+01:00", 10), car_park("p2", "2016-10-05T08:00:00Z", 20)]
    )
    first = stage_segments(layout, con, LIMITS)
    assert (first.segments, first.readings) == (1, 2)
    assert first.changed_partitions == [
        ("parking", "testtown", "2016-10-04"),
        ("parking", "testtown", "2016-10-05"),
    ]
    rows, files = staged_rows(con), tree_digest(layout.root / "staged")
    versions = con.execute("SELECT * FROM staged.partitions ORDER BY ALL").fetchall()

    second = stage_segments(layout, con, LIMITS)
    assert (second.segments, second.readings, second.changed_partitions) == (0, 0, [])
    assert staged_rows(con) == rows
    assert tree_digest(layout.root / "staged") == files
    assert con.execute("SELECT * FROM staged.partitions ORDER BY ALL").fetchall() == versions
    assert con.execute("SELECT count(*) FROM raw.segments").fetchone() == (1,)


def test_redelivered_messages_in_a_new_segment_do_not_double_count(wh):
    layout, con = wh
    msgs = [car_park("p1", "2016-10-04T08:00:00Z", 10), car_park("p1", "2016-10-04T08:30:00Z", 12)]
    land(layout, msgs)
    stage_segments(layout, con, LIMITS)
    rows, files = staged_rows(con), tree_digest(layout.root / "staged")
    land(layout, msgs)  # the broker redelivered both after a crash
    again = stage_segments(layout, con, LIMITS)
    assert (again.segments, again.readings, again.duplicates) == (1, 2, 2)
    assert again.changed_partitions == []
    assert staged_rows(con) == rows  # lineage still points at the first copy
    assert tree_digest(layout.root / "staged") == files


def test_a_different_value_for_the_same_key_replaces_the_earlier_one(wh):
    layout, con = wh
    land(layout, [car_park("p1", "2016-10-04T08:00:00Z", 10)], received_at_ns=1_475_600_000 * 10**9)
    stage_segments(layout, con, LIMITS)
    land(layout, [car_park("p1", "2016-10-04T08:00:00Z", 11)], received_at_ns=1_475_600_001 * 10**9)
    result = stage_segments(layout, con, LIMITS)
    assert result.changed_partitions == [("parking", "testtown", "2016-10-04")]
    assert con.execute("SELECT occupied_spots FROM staged.parking").fetchall() == [(11,)]
    assert con.execute("SELECT version, rows FROM staged.partitions").fetchall() == [(2, 1)]
    [pq_row] = staged_file_rows(con, layout, "parking", "testtown", datetime(2016, 10, 4).date())
    assert pq_row["occupied_spots"] == 11
    files = sorted(
        p.name for p in layout.staged_file("parking", "testtown", date(2016, 10, 4)).parent.iterdir()
    )
    assert files == ["part-1.parquet"]  # the replaced version's file is gone


def test_rejections_are_kept_in_table_and_files_with_reason_and_bytes(wh):
    layout, con = wh
    bad = b'{"observed_at":"2016-10-04T08:00:00Z","occupied_spots":7,"total_spots":5}'
    seg = land(
        layout,
        [("city/testtown/parking/p1", bad), ("city/x/parking", b"{}"), ("city/testtown/parking/p1", b"\xff")],
    )
    result = stage_segments(layout, con, LIMITS)
    assert dict(result.quarantined) == {"occupied_exceeds_total": 1, "bad_topic": 1, "not_utf8": 1}
    rows = con.execute(
        "SELECT reason, payload, topic, record_offset FROM quarantine.readings ORDER BY record_offset"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("occupied_exceeds_total", bad, "city/testtown/parking/p1"),
        ("bad_topic", b"{}", "city/x/parking"),
        ("not_utf8", b"\xff", "city/testtown/parking/p1"),
    ]
    qfile = layout.quarantine_file(seg.relative_to(layout.raw).as_posix().removesuffix(".seg"))
    assert [r["reason"] for r in pq.read_table(qfile).to_pylist()] == [r[0] for r in rows]
    assert con.execute("SELECT records, readings, rejected FROM raw.segments").fetchall() == [(3, 0, 3)]


def test_corrupt_segment_tail_is_quarantined_and_good_records_staged(wh):
    layout, con = wh
    seg = land(layout, [car_park("p1", "2016-10-04T08:00:00Z", 10)])
    with seg.open("ab") as fh:
        fh.write(b"\x01\x02garbage")
    result = stage_segments(layout, con, LIMITS)
    assert result.readings == 1
    assert dict(result.quarantined) == {"corrupt_record": 1}
    (payload,) = con.execute("SELECT payload FROM quarantine.readings").fetchone()
    assert payload == b"\x01\x02garbage"


def test_birmingham_sample_exact_duplicates_are_staged_once(wh):
    layout, con = wh
    land(layout, birmingham_parking_messages())
    result = stage_segments(layout, con, LIMITS)
    london = ZoneInfo("Europe/London")
    valid = set()
    with BIRMINGHAM_PARKING.open(newline="") as fh:
        for row in csv.DictReader(fh):
            occ, cap = int(row["Occupancy"]), int(row["Capacity"])
            if 0 <= occ <= cap:
                stamp = datetime.strptime(row["LastUpdated"].strip(), "%Y-%m-%d %H:%M:%S")
                valid.add((row["SystemCodeNumber"], stamp.replace(tzinfo=london)))
    assert result.readings == 12474 - 42
    (n,) = con.execute("SELECT count(*) FROM staged.parking").fetchone()
    assert n == len(valid) == result.readings - result.duplicates
    assert result.duplicates > 0
    (keys,) = con.execute("SELECT count(DISTINCT (device_id, observed_at)) FROM staged.parking").fetchone()
    assert keys == n
    # Gateways' local clocks become UTC on both sides of the clock change (2016-10-30).
    first = orjson.loads(next(iter(birmingham_parking_messages()))[1])["observed_at"]
    assert first == "2016-10-04T07:59:42+01:00"
    day_min = dict(
        con.execute(
            "SELECT event_date::VARCHAR, strftime(min(observed_at), '%H:%M:%S') "
            "FROM staged.parking GROUP BY 1"
        ).fetchall()
    )
    assert day_min["2016-10-04"] == "06:46:28"  # 07:46:28 BST
    assert day_min["2016-10-31"] == "07:46:01"  # 07:46:01 GMT


def test_things_stack_uplink_and_senml_pack_are_staged_into_their_domains(wh):
    layout, con = wh
    lorawan = Path(__file__).resolve().parents[2] / "samples" / "lorawan"
    registry = load_registry(lorawan / "registry")
    uplink = (lorawan / "tts_v3_milesight_am319.json").read_bytes()
    stranger = orjson.loads(uplink)
    stranger["end_device_ids"].update(device_id="dev-1", dev_eui="FFFF000000000001")
    stranger["end_device_ids"]["application_ids"]["application_id"] = "unknown-app"
    pack = [
        {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": 1772438400, "bu": "ug/m3", "n": "no2", "v": 40},
        {"n": "pm10", "v": 18},
        {"n": "no2", "u": "ppb", "t": 300, "v": 20},
    ]
    seg = land(
        layout,
        [
            ("v3/application-tts-name@ttn/devices/eui-1000000000000001/up", uplink),
            ("city/aberdeen/air_quality/union-st/senml", pack),
            ("city/aberdeen/waste/bin-1/senml", [{"n": "fillingLevel", "u": "%", "v": 40, "t": -60}]),
            ("v3/unknown-app@ttn/devices/dev-1/up", stranger),
        ],
        received_at_ns=1772438700 * 10**9,
    )
    result = stage_segments(layout, con, LIMITS, registry=registry)
    assert (result.readings, dict(result.quarantined)) == (4, {"unknown_device": 1})
    rows = con.execute(
        "SELECT council, device_id, strftime(observed_at, '%Y-%m-%dT%H:%M:%S'), pm25, pm10, no2, "
        "relative_humidity, msg_id, segment_id, record_offset, reading_index "
        "FROM staged.air_quality ORDER BY ALL"
    ).fetchall()
    seg_id = seg.relative_to(layout.raw).as_posix().removesuffix(".seg")
    assert [r[:8] for r in rows] == [
        ("aberdeen", "union-st", "2026-03-02T08:00:00", None, 18.0, 40.0, None, None),
        (
            "aberdeen",
            "union-st",
            "2026-03-02T08:05:00",
            None,
            None,
            pytest.approx(38.2741, rel=1e-5),
            None,
            None,
        ),
        (
            "example",
            "am319-1",
            "2023-05-19T05:33:35",
            32.0,
            48.0,
            None,
            0.62,
            "tts:1000000000000001:10335:01H0S7ZJGS9KKD4HTTPKFEMWCV",
        ),
    ]
    assert {r[8] for r in rows} == {seg_id}
    assert [r[10] for r in rows] == [0, 1, 0]
    # SenML relative time: 60 s before the listener received the message
    assert con.execute(
        "SELECT device_id, strftime(observed_at, '%Y-%m-%dT%H:%M:%S'), filling_level FROM staged.waste"
    ).fetchall() == [("bin-1", "2026-03-02T08:04:00", 0.4)]
    assert result.changed_partitions == [
        ("air_quality", "aberdeen", "2026-03-02"),
        ("air_quality", "example", "2023-05-19"),
        ("waste", "aberdeen", "2026-03-02"),
    ]
    (reason, topic) = con.execute("SELECT reason, topic FROM quarantine.readings").fetchone()
    assert (reason, topic) == ("unknown_device", "v3/unknown-app@ttn/devices/dev-1/up")
    again = stage_segments(layout, con, LIMITS, registry=registry)
    assert (again.segments, again.readings) == (0, 0)


def test_a_new_measurement_is_quarantined_and_every_reading_is_accounted_for(wh):
    """Schema evolution: a gateway starts sending co2 and nox; nothing is silently dropped."""
    layout, con = wh
    batch = [
        {"observed_at": "2026-03-02T08:00:00Z", "pm10": 18.0},
        {"observed_at": "2026-03-02T08:05:00Z", "pm10": 19.0, "co2": 412},
        {"observed_at": "2026-03-02T08:10:00Z", "pm25": 7.5},
    ]
    topic = "city/aberdeen/air_quality/union-st"
    messages = [
        (topic, batch),
        (topic, {"observed_at": "2026-03-02T08:15:00Z", "pm10": 20.0, "nox": 3}),
        (topic, batch),  # redelivered
        (topic, {"observed_at": "2026-03-02 08:20:00", "pm10": 21.0}),
    ]
    readings_in = sum(len(p) if isinstance(p, list) else 1 for _, p in messages)
    land(layout, messages)
    result = stage_segments(layout, con, LIMITS)
    (staged,) = con.execute("SELECT count(*) FROM staged.air_quality").fetchone()
    quarantined = sum(result.quarantined.values())
    assert (readings_in, staged, result.duplicates, quarantined) == (8, 2, 2, 4)
    assert readings_in == staged + result.duplicates + quarantined
    assert dict(result.quarantined) == {"unknown_field": 3, "timestamp_without_offset": 1}
    rows = con.execute(
        "SELECT reason, detail, payload, reading_index FROM quarantine.readings "
        "WHERE reason = 'unknown_field' ORDER BY record_offset"
    ).fetchall()
    assert [(r[1], r[3]) for r in rows] == [
        ("fields not in the air_quality contract: co2", 1),
        ("fields not in the air_quality contract: nox", 0),
        ("fields not in the air_quality contract: co2", 1),
    ]
    assert orjson.loads(rows[0][2]) == batch[1]  # the refused reading's own bytes
    assert con.execute("SELECT sum(readings + rejected) FROM raw.segments").fetchone() == (8,)
