"""Corrections and msg_id on real DuckDB files: what replaces what, and the record of it."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import orjson
import pytest
from factories import LIMITS, car_park, land

from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
S = 10**9  # nanoseconds in a second
RECEIVED = 1_772_500_000 * S  # 2026-03-03T01:06:40Z: after the readings these tests land


def seg_id(layout, path):
    return path.relative_to(layout.raw).as_posix().removesuffix(".seg")


def corrections(con):
    return con.execute("""
        SELECT domain, council, event_date::VARCHAR, device_id, lane_id,
               strftime(observed_at, '%Y-%m-%dT%H:%M:%SZ'), old_values::VARCHAR, new_values::VARCHAR,
               old_segment_id, old_record_offset, old_reading_index,
               epoch_ns(old_received_at) // 1000, new_segment_id, new_record_offset, new_reading_index,
               epoch_ns(new_received_at) // 1000, old_value_hash <> new_value_hash
        FROM staged.corrections ORDER BY lane_id, new_received_at""").fetchall()


def test_a_correction_replaces_the_value_and_is_recorded_with_both_lineages(wh):
    layout, con = wh
    first = land(layout, [car_park("p1", "2026-03-02T08:00:00Z", 10)], received_at_ns=RECEIVED + 1_000 * S)
    stage_segments(layout, con, LIMITS, now=NOW)
    assert corrections(con) == []
    lineage = "segment_id, record_offset, reading_index, epoch_ns(received_at) // 1000"
    staged_before = con.execute(f"SELECT {lineage} FROM staged.parking").fetchone()
    assert staged_before[0] == seg_id(layout, first)
    second = land(
        layout,
        [car_park("p2", "2026-03-02T08:00:00Z", 5), car_park("p1", "2026-03-02T08:00:00Z", 11)],
        received_at_ns=RECEIVED + 2_000 * S,
    )
    result = stage_segments(layout, con, LIMITS, now=NOW)
    assert (result.readings, result.duplicates, result.corrections) == (2, 1, 1)
    assert con.execute("SELECT device_id, occupied_spots FROM staged.parking ORDER BY 1").fetchall() == [
        ("p1", 11),
        ("p2", 5),
    ]
    staged_after = con.execute(f"SELECT {lineage} FROM staged.parking WHERE device_id = 'p1'").fetchone()
    assert staged_after[0] == seg_id(layout, second)
    assert staged_after[1] > staged_before[1]  # the second message of its segment
    old = {
        "occupied_spots": 10,
        "total_spots": 100,
        "status": None,
        "occupancy": 0.1,
        "lat": None,
        "lon": None,
    }
    new = {**old, "occupied_spots": 11, "occupancy": 0.11}
    [row] = corrections(con)
    assert row[:6] == ("parking", "testtown", "2026-03-02", "p1", None, "2026-03-02T08:00:00Z")
    assert (orjson.loads(row[6]), orjson.loads(row[7])) == (old, new)
    assert row[8:] == (*staged_before, *staged_after, True)
    received = (RECEIVED // S + 1_000) * 10**6, (RECEIVED // S + 2_000) * 10**6
    assert (staged_before[3], staged_after[3]) == received
    assert con.execute("SELECT corrected_at FROM staged.corrections").fetchone() == (NOW,)
    assert con.execute("SELECT version FROM staged.partitions").fetchall() == [(2,)]


def test_a_redelivery_records_no_correction_and_a_failed_run_records_none(wh):
    layout, con = wh
    land(layout, [car_park("p1", "2026-03-02T08:00:00Z", 10)], received_at_ns=RECEIVED + 1_000 * S)
    stage_segments(layout, con, LIMITS, now=NOW)
    land(layout, [car_park("p1", "2026-03-02T08:00:00Z", 10)], received_at_ns=RECEIVED + 1_500 * S)
    again = stage_segments(layout, con, LIMITS, now=NOW)
    assert (again.duplicates, again.corrections, corrections(con)) == (1, 0, [])

    fix = land(layout, [car_park("p1", "2026-03-02T08:00:00Z", 12)], received_at_ns=RECEIVED + 2_000 * S)
    # The ledger refuses this segment: the run fails after the merge and must leave nothing behind.
    con.execute("ALTER TABLE raw.segments RENAME TO segments_before")
    con.execute(f"""CREATE TABLE raw.segments (
        segment_id VARCHAR PRIMARY KEY CHECK (segment_id <> '{seg_id(layout, fix)}'),
        bytes BIGINT NOT NULL, sha256 VARCHAR NOT NULL, records BIGINT NOT NULL,
        readings BIGINT NOT NULL, rejected BIGINT NOT NULL, staged_at TIMESTAMPTZ NOT NULL)""")
    con.execute("INSERT INTO raw.segments SELECT * FROM raw.segments_before")
    with pytest.raises(Exception, match="CHECK constraint"):
        stage_segments(layout, con, LIMITS, now=NOW)
    assert corrections(con) == []
    assert con.execute("SELECT occupied_spots FROM staged.parking").fetchall() == [(10,)]
    assert con.execute("SELECT version FROM staged.partitions").fetchall() == [(1,)]

    con.execute("DROP TABLE raw.segments")
    con.execute("ALTER TABLE raw.segments_before RENAME TO segments")
    fixed = stage_segments(layout, con, LIMITS, now=NOW)
    assert (fixed.segments, fixed.corrections) == (1, 1)
    [row] = corrections(con)
    assert (orjson.loads(row[6])["occupied_spots"], orjson.loads(row[7])["occupied_spots"]) == (10, 12)
    assert con.execute("SELECT version FROM staged.partitions").fetchall() == [(2,)]


def test_corrections_are_the_same_staged_one_segment_at_a_time_or_all_at_once(tmp_path):
    """Value changes in receive order: 10 -> 11 -> (11 again, a redelivery) -> 10, per traffic lane."""
    one = Layout(tmp_path / "one")

    def lane(lane_id, intensity):
        return (
            "city/testtown/traffic/c1",
            {"observed_at": "2026-03-02T08:00:00Z", "lane_id": lane_id, "intensity": intensity},
        )

    for i, msgs in enumerate(
        [[lane(1, 10), lane(2, 7)], [lane(1, 11)], [lane(1, 11), lane(2, 7)], [lane(1, 10), lane(2, 8)]]
    ):
        land(one, msgs, received_at_ns=RECEIVED + (1_000 + i) * S)
    many = Layout(tmp_path / "many")
    shutil.copytree(one.raw, many.raw)
    tables = []
    for layout, per_txn in ((one, 1), (many, 500_000)):
        con = connect(layout.warehouse)
        result = stage_segments(layout, con, LIMITS, now=NOW, max_readings_per_txn=per_txn)
        assert (result.segments, result.readings, result.corrections) == (4, 7, 3)
        tables.append(corrections(con))
        assert con.execute("SELECT lane_id, intensity FROM staged.traffic ORDER BY 1").fetchall() == [
            (1, 10),
            (2, 8),
        ]
        con.close()
    assert tables[0] == tables[1]
    changes = [(r[4], orjson.loads(r[6])["intensity"], orjson.loads(r[7])["intensity"]) for r in tables[0]]
    assert changes == [(1, 10, 11), (1, 11, 10), (2, 7, 8)]
    # The later 11 was a redelivery: the change back to 10 starts from the first copy of 11.
    assert tables[0][1][11] == (RECEIVED // S + 1_001) * 10**6


def test_msg_id_is_a_hint_only_the_natural_key_decides(wh):
    layout, con = wh
    land(
        layout,
        [
            (
                "city/testtown/parking/bay-1",
                {"observed_at": "2026-03-02T08:00:00Z", "status": "free", "msg_id": 7},
            ),
            # the gateway's counter restarted: same msg_id, another reading
            (
                "city/testtown/parking/bay-1",
                {"observed_at": "2026-03-02T08:05:00Z", "status": "free", "msg_id": 7},
            ),
            # the same reading under another msg_id: a duplicate
            (
                "city/testtown/parking/bay-1",
                {"observed_at": "2026-03-02T08:00:00Z", "status": "free", "msg_id": 8},
            ),
        ],
        received_at_ns=RECEIVED + 1_000 * S,
    )
    result = stage_segments(layout, con, LIMITS, now=NOW)
    assert (result.readings, result.duplicates, result.corrections) == (3, 1, 0)
    assert con.execute(
        "SELECT strftime(observed_at, '%H:%M'), msg_id FROM staged.parking ORDER BY 1"
    ).fetchall() == [("08:00", "7"), ("08:05", "7")]  # the first copy of 08:00 is kept, msg_id 7
