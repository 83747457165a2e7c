"""The gate on real files: publish what passes, hold back what fails, keep the old release."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import frictionless
import pytest
from factories import LIMITS, car_park, land, tree_digest

from civicflow.jobs.publication import gate_and_publish
from civicflow.publish.release import latest_release
from civicflow.transforms.stage import export_partitions, stage_segments
from civicflow.warehouse.partitions import held_back

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_passing_partition_is_published_with_a_valid_data_package(wh):
    layout, con = wh
    land(
        layout,
        [
            car_park("p1", "2016-10-04T08:00:00+01:00", 10),
            car_park("p1", "2016-10-04T08:30:00.250+01:00", 15),
            ("city/testtown/parking/bay-7", {"observed_at": "2016-10-04T09:00:00Z", "status": "occupied"}),
        ],
    )
    stage_segments(layout, con, LIMITS)
    result = gate_and_publish(layout, con, now=NOW)
    assert (result.validated, result.passed, result.failed, result.published) == (1, 1, 0, 1)

    dataset_dir = layout.published_dataset("parking")
    package = json.loads((dataset_dir / "datapackage.json").read_text())
    assert package["licenses"][0]["name"] == "OGL-UK-3.0"
    names = [r["name"] for r in package["resources"] if r["path"].startswith("council=")]
    assert names == ["parking-testtown-2016-10-04", "parking-testtown-2016-10-04-csv"]
    digests = tree_digest(dataset_dir, "**/*.*")
    for res in package["resources"]:
        path = dataset_dir / res["path"]
        assert res["bytes"] == path.stat().st_size
        assert res["hash"] == f"sha256:{digests[res['path']]}"
    assert package["resources"][0]["schema"] == "schema.json"  # one Table Schema file, shared
    schema = json.loads((dataset_dir / "schema.json").read_text())
    fields = {f["name"]: f for f in schema["fields"]}
    assert fields["occupied_spots"]["unit"] == "spot"
    assert fields["observed_at"]["description"].startswith("When the reading was observed")

    csv_text = (dataset_dir / package["resources"][1]["path"]).read_text()
    assert csv_text.splitlines() == [
        "council,device_id,observed_at,occupied_spots,total_spots,status,occupancy,lat,lon,qc_flag",
        "testtown,bay-7,2016-10-04T09:00:00Z,,,occupied,,,,",
        "testtown,p1,2016-10-04T07:00:00Z,10,100,,0.1,,,",
        "testtown,p1,2016-10-04T07:30:00.250000Z,15,100,,0.15,,,",
    ]
    csv_only = {k: v for k, v in package.items() if k != "resources"}
    csv_only["resources"] = [package["resources"][1]]
    report = frictionless.validate(csv_only, basepath=str(dataset_dir))
    assert report.valid, report.flatten(["rowNumber", "fieldName", "type", "note"])
    assert con.execute("SELECT count(*) FROM published.parking").fetchone() == (3,)


def test_a_bad_device_is_held_back_and_the_rest_of_its_day_is_published(wh):
    layout, con = wh
    land(layout, [car_park("p1", "2016-10-04T08:00:00Z", 10), car_park("p2", "2016-10-04T08:00:00Z", 20)])
    stage_segments(layout, con, LIMITS)
    assert gate_and_publish(layout, con, now=NOW).published == 1
    rows_before = con.execute("SELECT * FROM published.parking ORDER BY ALL").fetchall()
    latest_before = latest_release(layout)

    # A defect upstream of the gate lets an impossible value of one car park into a new version.
    con.execute("UPDATE staged.parking SET occupied_spots = 250 WHERE device_id = 'p2'")
    con.execute("UPDATE staged.partitions SET version = version + 1")
    export_partitions(con, layout)
    result = gate_and_publish(layout, con, now=NOW)

    # A device rule: p2's day is held back, p1's is published in the new version.
    assert (result.validated, result.passed, result.failed, result.published) == (1, 0, 1, 1)
    assert result.held_back == []
    [held] = result.devices_held
    assert (held["date"], held["device_id"], held["failed"], held["rows"]) == (
        "2016-10-04",
        "p2",
        ["order:occupied_spots<=total_spots"],
        1,
    )
    published = con.execute("SELECT device_id, occupied_spots FROM published.parking ORDER BY ALL").fetchall()
    assert published == [("p1", 10)]
    assert len(rows_before) == 2
    latest = latest_release(layout)
    assert latest != latest_before
    csv = next((latest / "parking").glob("council=testtown/date=2016-10-04/*.csv")).read_text()
    assert [line.split(",")[1] for line in csv.splitlines()[1:]] == ["p1"]
    report_file = layout.validations / "parking" / "council=testtown" / "date=2016-10-04" / "v2.json"
    report = json.loads(report_file.read_text())
    assert report["success"] is False
    assert [(f["rule"], f["grain"], f["devices"]) for f in report["failed"]] == [
        ("order:occupied_spots<=total_spots", "device", ["p2"])
    ]
    assert con.execute(
        "SELECT partition_version, success, published FROM published.validations ORDER BY partition_version"
    ).fetchall() == [(1, True, True), (2, False, True)]
    [listed] = held_back(con)
    assert (listed.device_id, listed.version, listed.rules) == (
        "p2",
        2,
        ["order:occupied_spots<=total_spots"],
    )
    # The held device's day stays held: the next run judges nothing and releases nothing new.
    again = gate_and_publish(layout, con, now=NOW)
    assert (again.validated, again.published) == (0, 0)
    assert latest_release(layout) == latest


def test_a_partition_rule_holds_the_whole_day_back_and_keeps_its_earlier_release(wh):
    layout, con = wh
    land(layout, [car_park("p1", "2016-10-04T08:00:00Z", 10), car_park("p2", "2016-10-04T08:00:00Z", 20)])
    stage_segments(layout, con, LIMITS)
    assert gate_and_publish(layout, con, now=NOW).published == 1
    published_before = tree_digest(layout.published_dataset("parking"), "council=*/**/*")
    rows_before = con.execute("SELECT * FROM published.parking ORDER BY ALL").fetchall()

    # The same reading twice under one key: key uniqueness is a rule about the whole partition.
    con.execute("INSERT INTO staged.parking SELECT * FROM staged.parking WHERE device_id = 'p2'")
    con.execute("UPDATE staged.partitions SET version = version + 1")
    export_partitions(con, layout)
    result = gate_and_publish(layout, con, now=NOW)

    assert (result.validated, result.failed, result.published) == (1, 1, 0)
    [held] = result.held_back
    assert (held["date"], held["failed"]) == ("2016-10-04", ["unique_key"])
    assert con.execute("SELECT * FROM published.parking ORDER BY ALL").fetchall() == rows_before
    assert tree_digest(layout.published_dataset("parking"), "council=*/**/*") == published_before
    [listed] = held_back(con)
    assert (listed.device_id, listed.grain, listed.rules) == (None, "partition", ["unique_key"])
    # Held back whole, it is judged again on the next run (and held back again: nothing changed).
    again = gate_and_publish(layout, con, now=NOW)
    assert (again.validated, again.failed, again.published) == (1, 1, 0)


def test_future_readings_fail_the_gate(wh):
    layout, con = wh
    land(layout, [car_park("p1", "2026-11-23T13:00:00Z", 10)])
    stage_segments(layout, con, LIMITS)
    result = gate_and_publish(layout, con, now=NOW)
    assert (result.failed, result.published) == (1, 0)
    assert not list(layout.published_dataset("parking").glob("council=*"))
    # Its only device is held back for the day, so nothing of the day is published.
    assert date(2026, 11, 23).isoformat() == result.held_back[0]["date"]
    assert [h["device_id"] for h in result.devices_held] == ["p1"]


def test_a_council_under_another_licence_is_published_under_it(wh):
    layout, con = wh
    land(
        layout,
        [
            car_park("p1", "2016-10-04T08:00:00+01:00", 10),
            ("city/citizens/parking/bay-1", {"observed_at": "2016-10-04T09:00:00Z", "status": "free"}),
        ],
    )
    stage_segments(layout, con, LIMITS)
    odbl = {
        "name": "ODbL-1.0",
        "path": "https://opendatacommons.org/licenses/odbl/1-0/",
        "title": "Open Data Commons Open Database License 1.0",
        "attribution": "Citizen sensor network contributors",
    }
    gate_and_publish(layout, con, now=NOW, licences={"citizens": odbl})
    package = json.loads((layout.published_dataset("parking") / "datapackage.json").read_text())
    assert sorted(lic["name"] for lic in package["licenses"]) == ["ODbL-1.0", "OGL-UK-3.0"]
    by_council = {}
    for res in package["resources"]:
        council = "citizens" if "citizens" in res["path"] else "testtown"
        by_council.setdefault(council, set()).add(
            tuple(lic["name"] for lic in res.get("licenses", package["licenses"][:0]))
        )
    assert by_council["citizens"] == {("ODbL-1.0",)}  # files and aggregates alike
    assert by_council["testtown"] == {()}  # the package's OGL applies
    citizens = next(r for r in package["resources"] if "citizens" in r["path"])
    assert citizens["sources"] == [{"title": "Citizen sensor network contributors"}]
