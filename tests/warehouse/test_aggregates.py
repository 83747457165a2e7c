"""Aggregates and consumer views on a real DuckDB file, built through staging and the gate.

Expected values are computed here in plain Python from the messages sent, with the rules written
out independently of the SQL in warehouse/aggregates.py (docs/queries.md#coverage).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from datetime import UTC, date, datetime
from pathlib import Path
from statistics import fmean

import frictionless
import pytest
from factories import LIMITS, land, tree_digest
from typer.testing import CliRunner

from civicflow.contract import DATASETS, Domain
from civicflow.jobs.publication import gate_and_publish
from civicflow.publish.files import write_files
from civicflow.publish.partition import publish_partition
from civicflow.publish.release import latest_release
from civicflow.transforms.stage import export_partitions, stage_segments
from civicflow.warehouse.aggregates import (
    DEFAULT_INTERVAL_S,
    KINDS,
    aggregate_rows,
    aggregate_tables,
    columns,
    replace_aggregates,
)
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import publications, transaction

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
DAY = date(2026, 3, 2)
HELD_DAY = date(2026, 3, 3)  # its partition has a reading from the future: the gate holds it back


def at(hh: int, mm: int, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


# (device, observed_at, occupied) with 200 spots. p1 reports every 15 min but misses 08:45 and
# 09:00; p2 sends two readings (one gap: too few to infer an interval), so parking's default applies.
PARKING = [
    ("p1", at(8, 0), 20),
    ("p1", at(8, 15), 50),
    ("p1", at(8, 30), 80),
    ("p1", at(9, 15), 120),
    ("p1", at(9, 30), 150),
    ("p1", at(9, 45), 190),
    ("p2", at(8, 0), 10),
    ("p2", at(8, 10), 30),
]
# (device, lane, observed_at, intensity, speed km/h): 15-minute counts; lane 2 misses 08:45.
TRAFFIC = [
    ("t1", 1, at(8, 0), 30, 48.0),
    ("t1", 1, at(8, 15), 42, 45.5),
    ("t1", 1, at(8, 30), 55, 40.0),
    ("t1", 1, at(8, 45), 61, 38.5),
    ("t1", 2, at(8, 0), 12, 52.0),
    ("t1", 2, at(8, 15), 20, 50.0),
    ("t1", 2, at(8, 30), 25, 47.0),
]
# (device, observed_at, no2, pm10) in µg/m³: a1's 10:00 hour averages 220 (over the 200 limit).
AIR = [
    ("a1", at(10, 0), 190.0, 70.0),
    ("a1", at(10, 15), 230.0, 64.0),
    ("a1", at(10, 30), 250.0, 58.0),
    ("a1", at(10, 45), 210.0, 61.0),
    ("a1", at(11, 0), 100.0, 40.0),
    ("a1", at(11, 15), 120.0, 35.0),
    ("a2", at(10, 0), 50.0, 20.0),
]
# (device, observed_at, filling_level): b1 is now 85% full; b2's gaps are 10 and 20 minutes.
WASTE = [
    ("b1", at(6, 0), 0.5),
    ("b1", at(18, 0), 0.85),
    ("b2", at(12, 0), 0.3),
    ("b2", at(12, 10), 0.31),
    ("b2", at(12, 30), 0.33),
]


def messages() -> list[tuple[str, dict]]:
    msgs: list[tuple[str, dict]] = []
    for dev, t, occ in PARKING:
        msgs.append(
            (
                f"city/testtown/parking/{dev}",
                {"observed_at": iso(t), "occupied_spots": occ, "total_spots": 200},
            )
        )
    msgs.append(("city/testtown/parking/bay-7", {"observed_at": iso(at(9, 0)), "status": "occupied"}))
    for dev, lane, t, n, v in TRAFFIC:
        payload = {"observed_at": iso(t), "intensity": n, "average_vehicle_speed": v, "interval_s": 900}
        msgs.append((f"city/testtown/traffic/{dev}", {**payload, "lane_id": lane}))
    for dev, t, no2, pm10 in AIR:
        msgs.append((f"city/testtown/air_quality/{dev}", {"observed_at": iso(t), "no2": no2, "pm10": pm10}))
    for dev, t, level in WASTE:
        msgs.append((f"city/testtown/waste/{dev}", {"observed_at": iso(t), "filling_level": level}))
    # The held-back partition: a valid reading, and one observed after NOW.
    msgs.append(car_park_msg("p1", at(8, 0, HELD_DAY), 99))
    msgs.append(car_park_msg("p1", at(13, 0, HELD_DAY), 100))
    return msgs


def car_park_msg(dev: str, t: datetime, occupied: int) -> tuple[str, dict]:
    return (
        f"city/testtown/parking/{dev}",
        {"observed_at": iso(t), "occupied_spots": occupied, "total_spots": 200},
    )


def build(root: Path) -> Layout:
    layout = Layout(root)
    con = connect(layout.warehouse)
    try:
        land(layout, messages())
        stage_segments(layout, con, LIMITS, now=NOW)
        result = gate_and_publish(layout, con, now=NOW)
        assert (result.published, result.failed, result.released) == (4, 1, 4)
        # The held day's only device read the future: nothing of that day is published.
        assert [(h["dataset"], h["date"], h["failed"]) for h in result.held_back] == [
            ("parking", HELD_DAY.isoformat(), ["no_future"])
        ]
        # Each publication lists its readings and its three aggregates, in Parquet and CSV.
        ledger = publications(con)
        assert [(p.ref.domain, p.ref.event_date) for p in ledger] == [
            (d.value, DAY) for d in sorted(DATASETS, key=lambda d: d.value)
        ]
        for pub in ledger:
            assert [(f["kind"], f["format"]) for f in pub.files["files"]] == [
                (kind, fmt) for kind in ("readings", *KINDS) for fmt in ("parquet", "csv")
            ]
    finally:
        con.close()
    return layout


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Layout:
    return build(tmp_path_factory.mktemp("wh") / "data")


@pytest.fixture
def ro(built):
    con = connect(built.warehouse, read_only=True)
    yield con
    con.close()


def rows(con, sql: str, params: list | None = None) -> list[dict]:
    rel = con.execute(sql, params or [])
    names = [d[0] for d in rel.description]
    return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


def expected_interval(times: list[datetime], default: float) -> float:
    """The documented rule: the lower median gap of the day, if there are at least two gaps."""
    times = sorted(times)
    gaps = sorted((b - a).total_seconds() for a, b in zip(times, times[1:], strict=False))
    return gaps[(len(gaps) - 1) // 2] if len(gaps) >= 2 else default


def stats(values: list) -> dict:
    present = [v for v in values if v is not None]
    return {
        "count": len(present),
        "mean": fmean(present) if present else None,
        "min": min(present, default=None),
        "max": max(present, default=None),
    }


def test_parking_hourly_and_daily_are_exact(ro):
    by_hour: dict[tuple, list] = defaultdict(list)
    by_day: dict[str, list] = defaultdict(list)
    for dev, t, occ in PARKING:
        by_hour[(dev, t.replace(minute=0))].append(occ)
        by_day[dev].append((t, occ))
    intervals = {
        dev: expected_interval([t for t, _ in r], DEFAULT_INTERVAL_S[Domain.PARKING])
        for dev, r in by_day.items()
    }
    assert intervals == {"p1": 900.0, "p2": 1800.0}

    got = rows(ro, "FROM published.parking_hourly WHERE device_id <> 'bay-7' ORDER BY device_id, hour")
    assert [(r["device_id"], r["hour"]) for r in got] == sorted(by_hour)
    for r in got:
        occ = by_hour[(r["device_id"], r["hour"])]
        s, o = stats(occ), stats([v / 200 for v in occ])
        assert r["readings"] == len(occ)
        assert r["expected_interval_s"] == intervals[r["device_id"]]
        assert r["expected_readings"] == pytest.approx(3600 / intervals[r["device_id"]])
        assert r["coverage"] == pytest.approx(min(1.0, len(occ) / (3600 / intervals[r["device_id"]])))
        assert (r["occupied_spots_count"], r["occupied_spots_min"], r["occupied_spots_max"]) == (
            s["count"],
            s["min"],
            s["max"],
        )
        assert r["occupied_spots_mean"] == pytest.approx(s["mean"])
        assert (r["total_spots_min"], r["total_spots_max"]) == (200, 200)
        assert r["occupancy_mean"] == pytest.approx(o["mean"])
        assert (r["occupancy_min"], r["occupancy_max"]) == (pytest.approx(o["min"]), pytest.approx(o["max"]))

    # The gap (08:45 and 09:00 missing) shows in the coverage of p1's hours and day.
    p1 = {r["hour"].hour: r["coverage"] for r in got if r["device_id"] == "p1"}
    assert p1 == {8: 0.75, 9: 0.75}
    daily = rows(ro, "FROM published.parking_daily ORDER BY device_id")
    assert [(r["device_id"], r["readings"], r["coverage"]) for r in daily] == [
        ("bay-7", 1, pytest.approx(1 / 48)),
        ("p1", 6, pytest.approx(6 / 96)),
        ("p2", 2, pytest.approx(2 / 48)),
    ]
    p1_day = daily[1]
    assert p1_day["event_date"] == DAY
    assert p1_day["occupied_spots_mean"] == pytest.approx(fmean(o for d, _, o in PARKING if d == "p1"))
    assert daily[0]["occupied_spots_count"] == 0 and daily[0]["occupancy_mean"] is None


def test_traffic_is_per_lane_with_its_declared_interval_and_volume(ro):
    got = rows(ro, "FROM published.traffic_hourly ORDER BY lane_id")
    assert [(r["lane_id"], r["readings"], r["coverage"], r["expected_interval_s"]) for r in got] == [
        (1, 4, 1.0, 900.0),
        (2, 3, 0.75, 900.0),
    ]
    for r in got:
        lane = [x for x in TRAFFIC if x[1] == r["lane_id"]]
        assert r["intensity_sum"] == sum(x[3] for x in lane)
        assert r["intensity_mean"] == pytest.approx(fmean(x[3] for x in lane))
        assert r["average_vehicle_speed_mean"] == pytest.approx(fmean(x[4] for x in lane))
        assert (r["intensity_min"], r["intensity_max"]) == (min(x[3] for x in lane), max(x[3] for x in lane))
        assert r["occupancy_count"] == 0


def test_council_daily_gives_pooled_mean_and_mean_of_device_means(ro):
    got = {
        (r["domain"], r["measurement"]): r
        for r in rows(ro, "FROM published.council_daily WHERE event_date = ?", [DAY])
    }
    assert {m for d, m in got if d == "air_quality"} == {
        c.name for c in DATASETS[Domain.AIR_QUALITY].measurements
    }
    no2 = got[("air_quality", "no2")]
    per_device = defaultdict(list)
    for dev, _, v, _ in AIR:
        per_device[dev].append(v)
    assert (no2["devices"], no2["readings"], no2["measuring_devices"], no2["measured_readings"]) == (
        2,
        7,
        2,
        7,
    )
    assert no2["unit"] == "ug/m3"
    assert no2["pooled_mean"] == pytest.approx(fmean(v for _, _, v, _ in AIR))
    assert no2["mean_of_device_means"] == pytest.approx(fmean(fmean(v) for v in per_device.values()))
    assert no2["pooled_mean"] != pytest.approx(no2["mean_of_device_means"])  # the two really differ
    assert (no2["min_value"], no2["max_value"]) == (50.0, 250.0)
    co = got[("air_quality", "co")]
    assert (co["measured_readings"], co["measuring_devices"], co["pooled_mean"]) == (0, 0, None)

    occupancy = got[("parking", "occupancy")]
    assert (occupancy["devices"], occupancy["readings"], occupancy["measuring_devices"]) == (3, 9, 2)
    intensity = got[("traffic", "intensity")]
    assert (intensity["devices"], intensity["readings"]) == (1, 7)
    assert intensity["pooled_mean"] == pytest.approx(fmean(x[3] for x in TRAFFIC))


def test_views_answer_consumer_questions(ro):
    assert rows(
        ro, "SELECT device_id, occupied_spots, free_spots FROM published.parking_latest ORDER BY 1"
    ) == [
        {"device_id": "p1", "occupied_spots": 190, "free_spots": 10},
        {"device_id": "p2", "occupied_spots": 30, "free_spots": 170},
    ]
    assert rows(ro, "SELECT device_id, hour, no2_mean FROM published.air_quality_no2_exceedances") == [
        {"device_id": "a1", "hour": at(10, 0), "no2_mean": pytest.approx(220.0)}
    ]
    assert rows(ro, "SELECT device_id, pm10_mean FROM published.air_quality_pm10_exceedances") == [
        {"device_id": "a1", "pm10_mean": pytest.approx(fmean(x[3] for x in AIR if x[0] == "a1"))}
    ]
    assert rows(
        ro, "SELECT device_id, filling_level FROM published.waste_latest WHERE filling_level > 0.8"
    ) == [{"device_id": "b1", "filling_level": 0.85}]
    waste = rows(
        ro, "SELECT device_id, readings, expected_interval_s, coverage FROM published.waste_daily ORDER BY 1"
    )
    assert waste == [
        {"device_id": "b1", "readings": 2, "expected_interval_s": 3600.0, "coverage": pytest.approx(2 / 24)},
        # The lower of the two middle gaps, not their mean (900 s).
        {"device_id": "b2", "readings": 3, "expected_interval_s": 600.0, "coverage": pytest.approx(3 / 144)},
    ]
    assert [expected_interval([t for d, t, _ in WASTE if d == dev], 3600) for dev in ("b1", "b2")] == [
        3600,
        600,
    ]
    coverage = rows(ro, "SELECT domain, count(*) AS n FROM published.device_coverage GROUP BY 1 ORDER BY 1")
    assert coverage == [
        {"domain": "air_quality", "n": 2},
        {"domain": "parking", "n": 3},
        {"domain": "traffic", "n": 2},
        {"domain": "waste", "n": 2},
    ]


def test_held_back_partition_contributes_nothing(built, ro):
    assert ro.execute(
        "SELECT count(*) FROM published.validations WHERE event_date = ? AND NOT success", [HELD_DAY]
    ).fetchone() == (1,)
    for name, _ in aggregate_tables():
        day = "CAST(hour AS DATE)" if name.endswith("_hourly") else "event_date"
        assert ro.execute(f"SELECT count(*) FROM {name} WHERE {day} = ?", [HELD_DAY]).fetchone() == (0,), name
    assert not list(built.published_dataset("parking").glob(f"**/date={HELD_DAY.isoformat()}"))
    package = json.loads((built.published_dataset("parking") / "datapackage.json").read_text())
    assert not [r for r in package["resources"] if HELD_DAY.isoformat() in r["path"]]


def test_a_day_held_back_whole_leaves_its_released_aggregates_as_they_were(tmp_path):
    layout = build(tmp_path / "data")
    before = snapshot(layout)
    con = connect(layout.warehouse)
    try:
        # A defect upstream of the gate stages one reading twice in a new version: key uniqueness
        # is a rule about the partition, so the whole day is held back (not one device).
        con.execute(
            "INSERT INTO staged.parking SELECT * FROM staged.parking "
            "WHERE device_id = 'p2' AND observed_at = ?",
            [at(8, 10)],
        )
        con.execute("UPDATE staged.partitions SET version = version + 1 WHERE domain = 'parking'")
        export_partitions(con, layout)
        result = gate_and_publish(layout, con, now=NOW)
        assert (result.failed, result.published, result.released) == (2, 0, 0)
        assert [(h["date"], h["failed"]) for h in result.held_back] == [
            (DAY.isoformat(), ["unique_key"]),
            (HELD_DAY.isoformat(), ["no_future"]),
        ]
        # Only the quality summaries change: they now list the held-back days (and a release
        # carries them); tables, ledger and every data file are as they were.
        after = snapshot_of(con, layout)
        assert without_quality(after) == without_quality(before)
        assert after[2]["latest/parking/quality.json"] != before[2]["latest/parking/quality.json"]
        pages = sorted(k for k in after[2] if k.startswith("latest/parking/data-docs/council="))
        assert pages == [  # the published version's page, and those of the versions held back
            f"latest/parking/data-docs/council=testtown/date={DAY}/v1.html",
            f"latest/parking/data-docs/council=testtown/date={DAY}/v2.html",
            f"latest/parking/data-docs/council=testtown/date={HELD_DAY}/v2.html",
        ]
        manifest, earlier = released_manifest(layout), released_manifest(layout, before[3])
        assert [(h["event_date"], h["version"]) for h in manifest.pop("held_back")] == [
            (DAY.isoformat(), 2),
            (HELD_DAY.isoformat(), 2),
        ]
        earlier.pop("held_back")
        assert manifest == earlier  # the same partitions and files
        # Rebuilding the released partition reads its published rows, never the staged ones (which
        # now hold p2's 08:10 reading twice).
        with transaction(con):
            replace_aggregates(con, DATASETS[Domain.PARKING], [("testtown", DAY)])
        assert without_quality(snapshot_of(con, layout)) == without_quality(before)
    finally:
        con.close()


def test_a_held_device_leaves_its_readings_out_of_the_days_aggregates(tmp_path):
    layout = build(tmp_path / "data")
    con = connect(layout.warehouse)
    try:
        # An impossible value of one car park in a new version: a rule about single readings, so
        # only p2's day is held back and the rest of the day is published with its aggregates.
        con.execute("UPDATE staged.parking SET occupied_spots = 250 WHERE device_id = 'p2'")
        con.execute(
            "UPDATE staged.partitions SET version = version + 1 WHERE domain = 'parking' AND event_date = ?",
            [DAY],
        )
        export_partitions(con, layout)
        result = gate_and_publish(layout, con, now=NOW)
        assert (result.validated, result.failed, result.published, result.released) == (2, 2, 1, 1)
        assert [(h["date"], h["device_id"], h["failed"], h["rows"]) for h in result.devices_held] == [
            (DAY.isoformat(), "p2", ["order:occupied_spots<=total_spots"], 2),
            (HELD_DAY.isoformat(), "p1", ["no_future"], 2),
        ]
        daily = rows(con, "SELECT device_id, readings FROM published.parking_daily ORDER BY 1")
        assert daily == [{"device_id": "bay-7", "readings": 1}, {"device_id": "p1", "readings": 6}]
        assert rows(con, "SELECT DISTINCT device_id FROM published.parking_hourly ORDER BY 1") == [
            {"device_id": "bay-7"},
            {"device_id": "p1"},
        ]
        occupancy = rows(
            con,
            "SELECT devices, readings, measuring_devices, pooled_mean FROM published.council_daily "
            "WHERE domain = 'parking' AND measurement = 'occupancy' AND event_date = ?",
            [DAY],
        )
        p1 = [occ / 200 for dev, _, occ in PARKING if dev == "p1"]
        assert occupancy == [
            {"devices": 2, "readings": 7, "measuring_devices": 1, "pooled_mean": pytest.approx(fmean(p1))}
        ]
        # The new version's ledger row, released, lists the aggregate files written with it; the
        # released files have the rows of the tables and the bytes the ledger lists.
        [pub] = [p for p in publications(con, "parking") if p.ref.event_date == DAY]
        assert (pub.ref.version, pub.rows, pub.release_id) == (2, 7, result.release)
        release = latest_release(layout)
        assert release.name == result.release
        dataset = DATASETS[Domain.PARKING]
        for entry in pub.files["files"]:
            path = release / "parking" / entry["path"]
            assert (path.stat().st_size, sha256(path)) == (entry["bytes"], entry["sha256"]), entry["path"]
            if entry["kind"] != "readings":
                assert entry["rows"] == aggregate_rows(con, dataset, entry["kind"], "testtown", DAY).num_rows
        daily_csv = next(e for e in pub.files["files"] if (e["kind"], e["format"]) == ("daily", "csv"))
        lines = (release / "parking" / daily_csv["path"]).read_text().splitlines()
        assert [line.split(",")[1] for line in lines[1:]] == ["bay-7", "p1"]
    finally:
        con.close()


def test_aggregate_files_are_listed_with_schema_units_and_checksums(built):
    base = built.published_dataset("air_quality")
    package = json.loads((base / "datapackage.json").read_text())
    aggregates = [r for r in package["resources"] if r["path"].startswith("aggregates/")]
    assert [r["name"] for r in aggregates] == [
        f"air-quality-{kind}-testtown-2026-03-02{fmt}"
        for kind in ("hourly", "daily", "council-daily")
        for fmt in ("", "-csv")
    ]
    digests = tree_digest(base, "aggregates/**/*.*")
    assert set(digests) == {r["path"] for r in aggregates}
    for r in aggregates:
        assert r["bytes"] == (base / r["path"]).stat().st_size
        assert r["hash"] == f"sha256:{digests[r['path']]}"
    # Every resource of a kind shares one Table Schema file beside the package.
    assert {r["schema"] for r in aggregates} == {f"schema-{k}.json" for k in KINDS}
    hourly = next(r for r in aggregates if r["name"] == "air-quality-hourly-testtown-2026-03-02-csv")
    assert hourly["schema"] == "schema-hourly.json"
    schema = json.loads((base / hourly["schema"]).read_text())
    fields = {f["name"]: f for f in schema["fields"]}
    assert fields["no2_mean"]["unit"] == "ug/m3" and fields["co_max"]["unit"] == "mg/m3"
    assert fields["coverage"]["constraints"] == {"required": True, "minimum": 0, "maximum": 1}
    assert hourly["rows"] == 3 and schema["primaryKey"] == ["council", "device_id", "hour"]
    csv_only = {**package, "resources": [r for r in package["resources"] if r["format"] == "csv"]}
    report = frictionless.validate(csv_only, basepath=str(base))
    assert report.valid, report.flatten(["rowNumber", "fieldName", "type", "note"])
    assert report.stats["tasks"] == len(csv_only["resources"]) == 4 + 2  # and the month's and year's archive
    lines = (base / hourly["path"]).read_text().splitlines()
    assert lines[1].startswith("testtown,a1,2026-03-02T10:00:00Z,4,900.0,4.0,1.0,4,220.0,190.0,250.0,")
    # The check can fail: a row breaking the shared schema's constraint makes the package invalid.
    bad = {**csv_only, "resources": [{**hourly, "path": "bad.csv"}]}
    (base / "bad.csv").write_text(
        (base / hourly["path"]).read_text().replace(",4,900.0,4.0,1.0,", ",4,900.0,4.0,1.5,", 1)
    )
    try:
        bad["resources"][0].pop("bytes"), bad["resources"][0].pop("hash")
        report = frictionless.validate(bad, basepath=str(base))
        assert not report.valid
        assert {e.type for e in report.tasks[0].errors} == {"constraint-error"}
    finally:
        (base / "bad.csv").unlink()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot_of(con, layout: Layout) -> tuple:
    """Every aggregate table, the publication ledger, and the sha256 of every published file.

    Files are those of each dataset's working tree (`work/...`) and of the latest release
    (`latest/...`); the fourth item is the latest release's directory.
    """
    tables = {name: con.execute(f"FROM {name} ORDER BY ALL").fetchall() for name, _ in aggregate_tables()}
    ledger = con.execute("FROM published.releases ORDER BY ALL").fetchall()
    release = latest_release(layout)
    files = {
        f"work/{d}/{k}": v for d in DATASETS for k, v in tree_digest(layout.published_dataset(d)).items()
    } | {f"latest/{k}": v for k, v in tree_digest(release).items()}
    return tables, ledger, files, release


RELEASE_METADATA = ("quality.json", "latest/release.json", "latest/manifest.json")


def without_quality(snap: tuple) -> tuple:
    """A snapshot but for the quality summaries and pages and what names the release (its id)."""
    tables, ledger, files, _ = snap
    return (
        tables,
        ledger,
        {k: v for k, v in files.items() if not k.endswith(RELEASE_METADATA) and "/data-docs/" not in k},
    )


def released_manifest(layout: Layout, release: Path | None = None) -> dict:
    """The latest (or a given) release's manifest, without the release's id."""
    manifest = json.loads(((release or latest_release(layout)) / "manifest.json").read_text())
    assert manifest.pop("release") == (release or latest_release(layout)).name
    return manifest


def snapshot(layout: Layout) -> tuple:
    con = connect(layout.warehouse, read_only=True)
    try:
        return snapshot_of(con, layout)
    finally:
        con.close()


def test_rebuilding_gives_identical_tables_and_files(tmp_path):
    layout = build(tmp_path / "data")
    before = snapshot(layout)
    assert sum(len(t) for t in before[0].values()) > 0
    con = connect(layout.warehouse)
    try:
        ledger = publications(con)
        # Recomputed from the published rows, every aggregate table is the same ...
        with transaction(con):
            for domain, dataset in DATASETS.items():
                parts = [(p.ref.council, p.ref.event_date) for p in ledger if p.ref.domain == domain.value]
                assert len(parts) == 1
                replace_aggregates(con, dataset, parts)
        assert snapshot_of(con, layout) == before
        # ... and each aggregate file written again from it has the bytes and rows the ledger lists.
        scratch = tmp_path / "scratch"
        for pub in ledger:
            dataset = DATASETS[Domain(pub.ref.domain)]
            for kind in KINDS:
                table = aggregate_rows(con, dataset, kind, pub.ref.council, pub.ref.event_date)
                written = write_files(con, table, columns(dataset, kind), scratch, kind, scratch)
                listed = {e["format"]: e for e in pub.files["files"] if e["kind"] == kind}
                assert {f: (w["bytes"], w["sha256"]) for f, w in written.items()} == {
                    f: (e["bytes"], e["sha256"]) for f, e in listed.items()
                }, (pub.ref.label, kind)
                assert [e["rows"] for e in listed.values()] == [table.num_rows] * 2
        # A partition published again from the same rows, its aggregates lost meanwhile, gets
        # them back with the same files; the next run finds them already in the latest release,
        # so it only marks the ledger and cuts no new release.
        con.execute("DELETE FROM published.parking_hourly")
        [parking] = [p for p in ledger if p.ref.domain == "parking"]
        published = con.sql(
            "FROM published.parking WHERE council = $c AND CAST(observed_at AS DATE) = $d",
            params={"c": "testtown", "d": DAY},
        ).to_arrow_table()
        files = publish_partition(
            con, layout, DATASETS[Domain.PARKING], "testtown", DAY, parking.ref.version, published, NOW
        )
        assert files == parking.files["files"]
        [pending] = [p for p in publications(con, "parking") if p.release_id is None]
        assert pending.ref == parking.ref
        again = gate_and_publish(layout, con, now=NOW)
        assert (again.published, again.released, again.release) == (0, 1, before[3].name)
    finally:
        con.close()
    assert snapshot(layout) == before


def documented_queries() -> list[str]:
    text = (ROOT / "docs" / "queries.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [q for b in blocks for q in re.findall(r'civicflow sql "([^"]+)"', b)]


def test_docs_list_the_common_questions():
    queries = documented_queries()
    assert len(queries) >= 8
    for view in ("parking_latest", "air_quality_no2_exceedances", "waste_latest", "device_coverage"):
        assert any(f"published.{view}" in q for q in queries), view


@pytest.mark.parametrize("query", documented_queries())
def test_every_documented_query_runs_and_answers(built, query, monkeypatch):
    con = connect(built.warehouse, read_only=True)
    try:
        answer = con.sql(query).fetchall()
    finally:
        con.close()
    assert answer, f"no rows from: {query}"
    from civicflow.app.cli import app

    monkeypatch.setenv("CIVICFLOW_DATA_ROOT", str(built.root))
    result = CliRunner().invoke(app, ["sql", query])
    assert result.exit_code == 0, result.output
