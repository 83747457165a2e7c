"""A partition's way to consumers, end to end from the raw zone to `published/latest`.

Failures stay where they start (a poisoned partition holds back only itself), holds act at the
grain of their rule, an approval reaches `latest`, and after a crash anywhere between the ledger
and the release the next run converges to a ledger that equals the latest release.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
from factories import LIMITS, car_park, land

import civicflow.publish.partition
import civicflow.publish.release
from civicflow.contract import DATASETS, Domain
from civicflow.jobs.publication import ApprovalError, approve, gate_and_publish
from civicflow.publish.release import latest_release, read_manifest
from civicflow.transforms.stage import export_partitions, stage_segments
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import (
    GATE_ERROR,
    append_staged,
    held_back,
    pending,
    publications,
    transaction,
)

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DAY = "2016-10-04"


def day_of(device: str, council: str, occupied: int = 10, hours: range = range(8, 12)) -> list:
    return [car_park(device, f"{DAY}T{h:02d}:00:00Z", occupied, council=council) for h in hours]


def traffic(device: str, council: str, observed_at: str, intensity: int) -> tuple[str, dict]:
    return (f"city/{council}/traffic/{device}", {"observed_at": observed_at, "intensity": intensity})


def assert_ledger_is_latest(layout: Layout, con) -> dict:
    """Every publication the ledger records is in `latest`, none is pending, and the files match."""
    latest = latest_release(layout)
    assert latest is not None
    manifest = read_manifest(latest)
    assert pending(con) == []
    ledger = {
        (p.ref.domain, p.ref.council, p.ref.event_date.isoformat(), p.ref.version) for p in publications(con)
    }
    released = {(p["domain"], p["council"], p["event_date"], p["version"]) for p in manifest["partitions"]}
    assert ledger == released
    # ... file for file: what the ledger says each publication wrote is what the release holds
    ledger_files = {
        (f"{p.ref.domain}/{f['path']}", f["sha256"]) for p in publications(con) for f in p.files["files"]
    }
    assert ledger_files == {(f["path"], f["sha256"]) for f in manifest["files"]}
    assert {p.release_id for p in publications(con)} <= {r.name for r in (latest.parent).iterdir()}
    for f in manifest["files"]:
        assert (latest / f["path"]).stat().st_size == f["bytes"], f["path"]
    return manifest


def councils_in(manifest: dict, dataset: str) -> set[str]:
    return {p["council"] for p in manifest["partitions"] if p["domain"] == dataset}


def test_a_year_one_reading_holds_back_only_its_own_partition(wh):
    layout, con = wh
    land(
        layout,
        [
            *day_of("p1", "northtown"),
            car_park("p9", "0001-01-01T00:00:00Z", 5, council="southtown"),  # Go's zero time
            *day_of("p2", "southtown"),
        ],
    )
    stage_segments(layout, con, LIMITS)
    # The contract refuses it at staging now: it never reaches the gate.
    assert con.execute("SELECT device_id, reason FROM quarantine.readings").fetchall() == [
        ("p9", "timestamp_out_of_range")
    ]
    # A row staged under an older contract that took it: the gate holds back its partition alone.
    con.execute(
        """CREATE TEMP TABLE zero AS SELECT * REPLACE (TIMESTAMPTZ '0001-01-01 00:00:00+00' AS observed_at,
           DATE '0001-01-01' AS event_date, 'p9' AS device_id) FROM staged.parking
           WHERE council = 'southtown' LIMIT 1"""
    )
    con.execute("CREATE TEMP TABLE zero_day AS SELECT DISTINCT council, event_date FROM zero")
    with transaction(con):
        append_staged(con, DATASETS[Domain.PARKING], "zero", "zero_day", NOW)
    export_partitions(con, layout)
    result = gate_and_publish(layout, con, now=NOW)

    [error] = result.gate_errors
    assert (error["council"], error["date"]) == ("southtown", "0001-01-01")
    assert "OverflowError" in error["error"]
    manifest = assert_ledger_is_latest(layout, con)
    days = {(p["council"], p["event_date"]) for p in manifest["partitions"]}
    assert days == {("northtown", DAY), ("southtown", DAY)}
    [held] = held_back(con)
    assert (held.council, held.event_date, held.rules) == ("southtown", date(1, 1, 1), [GATE_ERROR])
    # Held back whole, it is judged again on the next run, and holds back nothing else there either.
    again = gate_and_publish(layout, con, now=NOW)
    assert (again.validated, len(again.gate_errors), again.published) == (1, 1, 0)


def test_counts_beyond_any_road_are_refused_and_hold_back_only_their_device(wh):
    layout, con = wh
    big = 2**63 - 1
    land(
        layout,
        [
            traffic("a64", "leeds", f"{DAY}T08:00:00Z", big),
            traffic("a64", "leeds", f"{DAY}T08:05:00Z", big),
            *[traffic("a64", "leeds", f"{DAY}T09:{m:02d}:00Z", 20) for m in range(0, 60, 5)],
            *[traffic("a65", "leeds", f"{DAY}T09:{m:02d}:00Z", 30) for m in range(0, 60, 5)],
            *[traffic("b1", "york", f"{DAY}T09:{m:02d}:00Z", 40) for m in range(0, 60, 5)],
        ],
    )
    stage_segments(layout, con, LIMITS)
    quarantined = con.execute("SELECT reason, count(*) FROM quarantine.readings GROUP BY ALL").fetchall()
    assert quarantined == [("out_of_range", 2)]
    result = gate_and_publish(layout, con, now=NOW)

    assert result.gate_errors == [] and result.held_back == []
    # Two of a64's 14 readings were refused: above the 5% share, so a64's day is held back.
    [held] = result.devices_held
    assert (held["council"], held["device_id"], held["failed"], held["rows"]) == (
        "leeds",
        "a64",
        ["quarantine_share"],
        12,
    )
    manifest = assert_ledger_is_latest(layout, con)
    assert councils_in(manifest, "traffic") == {"leeds", "york"}
    sums = con.execute(
        "SELECT council, device_id, sum(intensity_sum) FROM published.traffic_hourly "
        "GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert sums == [("leeds", "a65", 360), ("york", "b1", 480)]


def test_a_partition_whose_aggregates_raise_is_held_back_and_the_rest_published(wh, monkeypatch):
    layout, con = wh
    land(layout, [*day_of("p1", "northtown"), *day_of("p2", "southtown")])
    stage_segments(layout, con, LIMITS)
    real = civicflow.publish.partition.replace_aggregates

    def overflowing(con, dataset, partitions):
        if any(council == "southtown" for council, _ in partitions):
            raise OverflowError("Conversion Error: Type INT128 with value 18446744073709551614 can't be cast")
        return real(con, dataset, partitions)

    monkeypatch.setattr(civicflow.publish.partition, "replace_aggregates", overflowing)
    result = gate_and_publish(layout, con, now=NOW)

    [error] = result.gate_errors
    assert error["council"] == "southtown" and "OverflowError" in error["error"]
    manifest = assert_ledger_is_latest(layout, con)
    assert councils_in(manifest, "parking") == {"northtown"}
    # Nothing of the failed publication was kept: no rows, no aggregates.
    assert con.execute("SELECT DISTINCT council FROM published.parking").fetchall() == [("northtown",)]
    assert con.execute("SELECT DISTINCT council FROM published.parking_daily").fetchall() == [("northtown",)]

    monkeypatch.setattr(civicflow.publish.partition, "replace_aggregates", real)
    again = gate_and_publish(layout, con, now=NOW)
    assert (again.validated, again.published) == (1, 1)
    assert councils_in(assert_ledger_is_latest(layout, con), "parking") == {"northtown", "southtown"}


@pytest.mark.parametrize("crash_in", ["_cut", "mark_released"])
def test_a_crash_between_ledger_and_release_converges_on_the_next_run(wh, monkeypatch, crash_in):
    layout, con = wh
    land(layout, day_of("p1", "northtown"))
    stage_segments(layout, con, LIMITS)
    gate_and_publish(layout, con, now=NOW)
    first = latest_release(layout)
    land(layout, day_of("p2", "southtown"))
    stage_segments(layout, con, LIMITS)

    def crash(*args, **kwargs):
        raise SystemExit("killed")

    monkeypatch.setattr(civicflow.publish.release, crash_in, crash)
    with pytest.raises(SystemExit):
        gate_and_publish(layout, con, now=NOW)
    monkeypatch.undo()
    # The publication is recorded, but pending: the ledger claims no release holds it.
    [waiting] = pending(con)
    assert waiting.council == "southtown"
    switched = latest_release(layout) != first
    assert switched == (crash_in == "mark_released")

    result = gate_and_publish(layout, con, now=NOW)
    assert result.validated == 0  # nothing to judge again: only the release was missing
    assert result.released == 1
    manifest = assert_ledger_is_latest(layout, con)
    assert councils_in(manifest, "parking") == {"northtown", "southtown"}
    releases = sorted(p.name for p in layout.releases.iterdir() if not p.name.startswith("."))
    assert len(releases) == 2  # crash after the switch: the release was found, not cut again


def test_an_approved_day_is_in_latest_when_the_approval_returns(wh):
    layout, con = wh
    land(layout, [*day_of("p1", "northtown"), *day_of("p2", "southtown")])
    stage_segments(layout, con, LIMITS)
    con.execute("INSERT INTO staged.parking SELECT * FROM staged.parking WHERE council = 'southtown'")
    con.execute("UPDATE staged.partitions SET version = version + 1 WHERE council = 'southtown'")
    from civicflow.transforms.stage import export_partitions

    export_partitions(con, layout)
    result = gate_and_publish(layout, con, now=NOW)
    assert [h["council"] for h in result.held_back] == ["southtown"]
    assert councils_in(assert_ledger_is_latest(layout, con), "parking") == {"northtown"}

    with pytest.raises(ApprovalError, match="not held back"):
        approve(layout, con, "parking", "northtown", date(2016, 10, 4), reason="fine", who="dora", now=NOW)
    done = approve(
        layout,
        con,
        "parking",
        "southtown",
        date(2016, 10, 4),
        reason="gateway resent a day",
        who="dora",
        now=NOW,
    )
    assert done["published"] and done["failed"] == ["unique_key"]
    manifest = assert_ledger_is_latest(layout, con)
    assert done["release"] == latest_release(layout).name
    assert councils_in(manifest, "parking") == {"northtown", "southtown"}
    assert held_back(con) == []
    package = json.loads((latest_release(layout) / "parking" / "datapackage.json").read_text())
    assert any("southtown" in r["path"] for r in package["resources"])


def test_a_held_device_day_can_be_approved_alone(wh):
    layout, con = wh
    land(layout, [*day_of("p1", "northtown"), *day_of("p2", "northtown", occupied=250)])  # p2 over-reads
    stage_segments(layout, con, LIMITS)
    # 250 of 100 spots is refused at staging: all of p2's readings are quarantined, p1 is published.
    result = gate_and_publish(layout, con, now=NOW)
    assert result.devices_held == [] and result.published == 1
    land(layout, [car_park("p3", f"{DAY}T{h:02d}:00:00Z", 5, council="northtown") for h in range(8, 12)])
    land(
        layout,
        [car_park("p3", f"{DAY}T{h:02d}:30:00Z", 500, total=1000, council="northtown") for h in range(8, 9)],
    )
    stage_segments(layout, con, LIMITS)
    con.execute(
        "UPDATE staged.parking SET status = 'reserved' WHERE device_id = 'p3' AND occupied_spots = 500"
    )
    con.execute("UPDATE staged.partitions SET version = version + 1")
    from civicflow.transforms.stage import export_partitions

    export_partitions(con, layout)
    result = gate_and_publish(layout, con, now=NOW)
    [held] = result.devices_held
    assert (held["device_id"], held["failed"]) == ("p3", ["enum:status"])
    published = con.execute("SELECT DISTINCT device_id FROM published.parking ORDER BY 1").fetchall()
    assert published == [("p1",)]

    done = approve(
        layout,
        con,
        "parking",
        "northtown",
        date(2016, 10, 4),
        device="p3",
        reason="new status code",
        who="dora",
        now=NOW,
    )
    assert done["published"] and done["device_id"] == "p3"
    published = con.execute(
        "SELECT device_id, count(*), count(qc_flag) FROM published.parking GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert published == [("p1", 4, 0), ("p3", 5, 1)]  # the approved row carries the rule it failed
    assert_ledger_is_latest(layout, con)
    csv = next((latest_release(layout) / "parking").glob("council=northtown/date=*/*.csv")).read_text()
    assert sorted({line.split(",")[1] for line in csv.splitlines()[1:]}) == ["p1", "p3"]
    assert held_back(con) == []


def test_each_council_has_its_own_valid_data_package_in_the_release(wh):
    import frictionless

    layout, con = wh
    land(layout, [*day_of("p1", "northtown"), *day_of("p2", "southtown")])
    stage_segments(layout, con, LIMITS)
    gate_and_publish(layout, con, now=NOW)
    release = latest_release(layout)
    manifest = read_manifest(release)
    assert manifest["packages"] == {
        "parking": {c: f"parking/{c}.package.json" for c in ("northtown", "southtown")}
    }
    whole = json.loads((release / "parking" / "datapackage.json").read_text())
    for council, path in manifest["packages"]["parking"].items():
        package = json.loads((release / path).read_text())
        assert package["name"] == f"civicflow-parking-{council}"
        # only that council's files: readings and aggregates, Parquet and CSV
        assert {r["path"].split("council=")[1].split("/")[0] for r in package["resources"]} == {council}
        # a day's 8 files, and the month's and the year's archives (Parquet and gzipped CSV)
        assert len(package["resources"]) == 8 + 4
        assert all(r in whole["resources"] for r in package["resources"])
        report = frictionless.validate(str(release / path))
        assert report.valid, report.flatten(["rowNumber", "fieldName", "type", "note"])
        assert len(report.tasks) == 8 + 4  # validated as a package: every resource checked
