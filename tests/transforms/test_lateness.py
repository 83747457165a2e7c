"""Late readings end to end on a real DuckDB file: within the horizon a day is re-released, beyond it
the reading is quarantined as too_late and every release stays as it was."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime

import pyarrow.parquet as pq
import pytest
from factories import LIMITS, car_park, land, staged_file_rows, tree_digest

from civicflow.jobs.publication import gate_and_publish
from civicflow.registry import CouncilRegistry, build_registry
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration
REGISTRY = build_registry(
    [CouncilRegistry(council="testtown", accept_unknown_devices=True, max_lateness_days=3)]
)
DAY, NEXT = date(2026, 3, 1), date(2026, 3, 2)


def ns(at: datetime) -> int:
    return int(at.timestamp()) * 10**9


def versions(con):
    return con.execute(
        "SELECT event_date, version, rows FROM staged.partitions ORDER BY event_date"
    ).fetchall()


def published(layout, day):
    path = (
        layout.published_dataset("parking")
        / "council=testtown"
        / f"date={day}"
        / f"parking-testtown-{day}.csv"
    )
    return path.read_text().splitlines()[1:]


def test_a_late_reading_re_releases_its_day_only_and_one_beyond_the_horizon_is_quarantined(wh):
    layout, con = wh
    received = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    land(
        layout,
        [
            car_park("p1", "2026-03-01T08:00:00Z", 10),
            car_park("p1", "2026-03-01T09:00:00Z", 12),
            car_park("p1", "2026-03-02T08:00:00Z", 20),
        ],
        received_at_ns=ns(received),
    )
    stage_segments(layout, con, LIMITS, registry=REGISTRY, now=received)
    first = gate_and_publish(layout, con, now=datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
    assert (first.validated, first.published) == (2, 2)
    assert versions(con) == [(DAY, 1, 2), (NEXT, 1, 1)]
    before = tree_digest(layout.published_dataset("parking"))
    next_day_before = {k: v for k, v in before.items() if f"date={NEXT}" in k}
    assert len(next_day_before) >= 2  # Parquet and CSV of the next day at least
    releases_before = con.execute("SELECT * FROM published.releases WHERE event_date = ?", [NEXT]).fetchall()

    # Four days later a gateway's backlog arrives: 2026-03-01 is 3 days back (within the
    # horizon), 2026-02-25 is 7 days back (beyond it).
    late_received = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
    land(
        layout,
        [car_park("p2", "2026-03-01T23:00:00Z", 40), car_park("p2", "2026-02-25T08:00:00Z", 41)],
        received_at_ns=ns(late_received),
    )
    late = stage_segments(layout, con, LIMITS, registry=REGISTRY, now=late_received)
    assert (late.readings, dict(late.quarantined)) == (1, {"too_late": 1})
    assert late.changed_partitions == [("parking", "testtown", "2026-03-01")]
    assert versions(con) == [(DAY, 2, 3), (NEXT, 1, 1)]
    (reason, detail) = con.execute("SELECT reason, detail FROM quarantine.readings").fetchone()
    assert reason == "too_late"
    assert detail.startswith("observed_at 2026-02-25T08:00:00Z was received on 2026-03-04")

    again = gate_and_publish(layout, con, now=datetime(2026, 3, 4, 12, 0, tzinfo=UTC))
    assert (again.validated, again.passed, again.published) == (1, 1, 1)
    assert published(layout, DAY) == [
        "testtown,p1,2026-03-01T08:00:00Z,10,100,,0.1,,,",
        "testtown,p1,2026-03-01T09:00:00Z,12,100,,0.12,,,",
        "testtown,p2,2026-03-01T23:00:00Z,40,100,,0.4,,,",
    ]
    assert len(staged_file_rows(con, layout, "parking", "testtown", DAY)) == 3
    assert con.execute(
        "SELECT event_date, partition_version, rows FROM published.releases ORDER BY 1"
    ).fetchall() == [(DAY, 2, 3), (NEXT, 1, 1)]
    after = tree_digest(layout.published_dataset("parking"))
    assert {k: v for k, v in after.items() if f"date={NEXT}" in k} == next_day_before
    changed = {k for k in after if after[k] != before.get(k)}
    # the day, the packages, and what is built from the day: its month's and year's archives and
    # the devices' listing (first and last reading, coverage)
    archives = {
        f"archives/council=testtown/parking-testtown-{p}.{f}"
        for p in ("2026-03", "2026")
        for f in ("parquet", "csv.gz")
    }
    assert archives <= changed
    assert all(
        f"date={DAY}" in k
        or k in archives
        or k.endswith(
            ("datapackage.json", ".package.json", "quality.json", "devices.geojson", "archives/index.json")
        )
        for k in changed
    ), changed
    assert not any("date=2026-02-25" in k for k in after)
    assert (
        con.execute("SELECT * FROM published.releases WHERE event_date = ?", [NEXT]).fetchall()
        == releases_before
    )
    assert con.execute("SELECT count(*) FROM published.parking").fetchone() == (4,)


def test_the_horizon_follows_the_receive_time_so_a_later_replay_decides_the_same(wh):
    """Staged years later (a rebuild from the raw zone), the same segment gives the same result."""
    layout, con = wh
    received = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
    land(
        layout,
        [car_park("p2", "2026-03-01T23:00:00Z", 40), car_park("p2", "2026-02-25T08:00:00Z", 41)],
        received_at_ns=ns(received),
    )
    result = stage_segments(layout, con, LIMITS, registry=REGISTRY, now=datetime(2031, 1, 1, tzinfo=UTC))
    assert (result.readings, dict(result.quarantined)) == (1, {"too_late": 1})
    assert versions(con) == [(DAY, 1, 1)]


def test_an_open_days_merges_add_a_file_each_and_the_day_is_one_file_once_closed(wh, tmp_path):
    """Merges of a day in progress write only their new readings, one file each, and the gate reads
    them all; a correction writes the day whole; once the day has closed (2 h after it ends) it is
    one file again: the file one staging of the same segments writes."""
    layout, con = wh
    directory = layout.staged_file("parking", "testtown", NEXT).parent

    def files():
        return sorted(p.name for p in directory.iterdir())

    def at(hour):
        return datetime(2026, 3, 2, hour, 30, tzinfo=UTC)

    def stage(readings, now):
        land(layout, readings, received_at_ns=ns(now))
        stage_segments(layout, con, LIMITS, now=now)

    stage([car_park("p1", "2026-03-02T08:00:00Z", 10), car_park("p2", "2026-03-02T08:00:00Z", 5)], at(8))
    stage([car_park("p1", "2026-03-02T09:00:00Z", 12)], at(9))
    assert files() == ["part-0.parquet", "part-1.parquet"]
    assert [r["occupied_spots"] for r in pq.read_table(directory / "part-1.parquet").to_pylist()] == [12]
    rows = staged_file_rows(con, layout, "parking", "testtown", NEXT)
    assert sorted(r["occupied_spots"] for r in rows) == [5, 10, 12]
    gate = gate_and_publish(layout, con, now=at(9))
    assert (gate.validated, gate.published) == (1, 1)
    assert [line.split(",")[3] for line in published(layout, NEXT)] == ["10", "12", "5"]

    stage([car_park("p1", "2026-03-02T09:00:00Z", 13)], at(10))  # a correction: written whole
    assert files() == ["part-2.parquet"]
    stage([car_park("p2", "2026-03-02T10:00:00Z", 6)], at(11))
    assert files() == ["part-2.parquet", "part-3.parquet"]
    assert versions(con) == [(NEXT, 4, 4)]

    closed = datetime(2026, 3, 3, 2, 0, tzinfo=UTC)
    stage_segments(layout, con, LIMITS, now=datetime(2026, 3, 3, 1, 59, tzinfo=UTC))
    assert files() == ["part-2.parquet", "part-3.parquet"]  # not closed yet
    stage_segments(layout, con, LIMITS, now=closed)
    assert files() == ["part-4.parquet"]
    assert versions(con) == [(NEXT, 4, 4)]  # the same version, in one file

    reference = Layout(tmp_path / "reference")
    shutil.copytree(layout.raw, reference.raw)
    ref = connect(reference.warehouse)
    stage_segments(reference, ref, LIMITS, now=closed)
    ref.close()
    expected = pq.read_table(reference.staged_file("parking", "testtown", NEXT)).drop_columns(["staged_at"])
    assert pq.read_table(directory / "part-4.parquet").drop_columns(["staged_at"]).equals(expected)
    assert expected.num_rows == 4


def test_a_merge_that_does_not_commit_leaves_no_file_of_its_readings(wh, monkeypatch):
    import civicflow.transforms.stage

    layout, con = wh
    directory = layout.staged_file("parking", "testtown", NEXT).parent
    first, second = datetime(2026, 3, 2, 8, 30, tzinfo=UTC), datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    land(layout, [car_park("p1", "2026-03-02T08:00:00Z", 10)], received_at_ns=ns(first))
    stage_segments(layout, con, LIMITS, now=first)
    land(layout, [car_park("p1", "2026-03-02T09:00:00Z", 12)], received_at_ns=ns(second))

    def fail(*args, **kwargs):
        raise RuntimeError("the merge stopped here")

    with monkeypatch.context() as patched:
        patched.setattr(civicflow.transforms.stage, "_record_corrections", fail)
        with pytest.raises(RuntimeError, match="stopped here"):
            stage_segments(layout, con, LIMITS, now=second)
    assert sorted(p.name for p in directory.iterdir()) == [
        "part-0.parquet"
    ]  # part-1 was written, then deleted
    assert versions(con) == [(NEXT, 1, 1)]
    stage_segments(layout, con, LIMITS, now=second)
    assert sorted(p.name for p in directory.iterdir()) == ["part-0.parquet", "part-1.parquet"]
    assert [r["occupied_spots"] for r in staged_file_rows(con, layout, "parking", "testtown", NEXT)] == [
        10,
        12,
    ]


def test_the_daily_upkeep_compacts_a_closed_day_that_no_merge_came_after(tmp_path):
    from civicflow.jobs import retention_job
    from civicflow.settings import Settings

    settings = Settings(data_root=tmp_path / "data")
    layout = Layout(settings.data_root)
    con = connect(layout.warehouse)
    for hour, occupied in ((8, 10), (9, 12)):
        now = datetime(2026, 3, 2, hour, 30, tzinfo=UTC)
        land(layout, [car_park("p1", f"2026-03-02T0{hour}:00:00Z", occupied)], received_at_ns=ns(now))
        stage_segments(layout, con, LIMITS, now=now)
    con.close()
    directory = layout.staged_file("parking", "testtown", NEXT).parent
    assert sorted(p.name for p in directory.iterdir()) == ["part-0.parquet", "part-1.parquet"]

    assert retention_job(settings)["staged_partitions_compacted"] == 1  # run long after 2 March
    assert sorted(p.name for p in directory.iterdir()) == ["part-2.parquet"]
    assert [r["occupied_spots"] for r in pq.read_table(directory / "part-2.parquet").to_pylist()] == [10, 12]
