"""The gate on real files: publish what passes, hold back what fails, keep the old release."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import frictionless
import pytest
from factories import LIMITS, car_park, land, tree_digest

from expectations.release import gate_and_publish
from transforms.stage import export_partitions, stage_segments
from warehouse.db import connect
from warehouse.layout import Layout

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def wh(tmp_path):
    layout = Layout(tmp_path / "data")
    con = connect(layout.warehouse)
    yield layout, con
    con.close()


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
    names = [r["name"] for r in package["resources"] if not r["path"].startswith("aggregates/")]
    assert names == ["parking-testtown-2016-10-04", "parking-testtown-2016-10-04-csv"]
    digests = tree_digest(dataset_dir, "**/*.*")
    for res in package["resources"]:
        path = dataset_dir / res["path"]
        assert res["bytes"] == path.stat().st_size
        assert res["hash"] == f"sha256:{digests[res['path']]}"
    fields = {f["name"]: f for f in package["resources"][0]["schema"]["fields"]}
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


def test_failing_partition_is_held_back_and_previous_release_is_untouched(wh):
    layout, con = wh
    land(layout, [car_park("p1", "2016-10-04T08:00:00Z", 10), car_park("p2", "2016-10-04T08:00:00Z", 20)])
    stage_segments(layout, con, LIMITS)
    assert gate_and_publish(layout, con, now=NOW).published == 1
    published_before = tree_digest(layout.published_dataset("parking"))
    rows_before = con.execute("SELECT * FROM published.parking ORDER BY ALL").fetchall()

    # A defect upstream of the gate lets an impossible value into a new partition version.
    con.execute("UPDATE staged.parking SET occupied_spots = 250 WHERE device_id = 'p2'")
    con.execute("UPDATE staged.partitions SET version = version + 1")
    export_partitions(con, layout)
    result = gate_and_publish(layout, con, now=NOW)

    assert (result.validated, result.passed, result.failed, result.published) == (1, 0, 1, 0)
    [held] = result.held_back
    assert held["date"] == "2016-10-04"
    assert held["failed"] == ["order:occupied_spots<=total_spots"]
    # Only the quality summary changes: it now lists the held-back day.
    after = tree_digest(layout.published_dataset("parking"))
    assert {k: v for k, v in after.items() if k != "quality.json"} == {
        k: v for k, v in published_before.items() if k != "quality.json"
    }
    assert con.execute("SELECT * FROM published.parking ORDER BY ALL").fetchall() == rows_before
    report_file = layout.validations / "parking" / "council=testtown" / "date=2016-10-04" / "v2.json"
    report = json.loads(report_file.read_text())
    assert report["success"] is False
    assert any(f["unexpected_count"] == 1 for f in report["failed"])
    assert con.execute(
        "SELECT partition_version, success, published FROM published.validations ORDER BY partition_version"
    ).fetchall() == [(1, True, True), (2, False, False)]
    # Held back, it is validated again on the next run (and held back again: nothing changed).
    again = gate_and_publish(layout, con, now=NOW)
    assert (again.validated, again.failed, again.published) == (1, 1, 0)
    assert tree_digest(layout.published_dataset("parking"), "council=*/**/*") == {
        k: v for k, v in published_before.items() if k.startswith("council=")
    }


def test_future_readings_fail_the_gate(wh):
    layout, con = wh
    land(layout, [car_park("p1", "2026-11-23T13:00:00Z", 10)])
    stage_segments(layout, con, LIMITS)
    result = gate_and_publish(layout, con, now=NOW)
    assert (result.failed, result.published) == (1, 0)
    assert not list(layout.published_dataset("parking").glob("council=*"))
    assert date(2026, 11, 23).isoformat() == result.held_back[0]["date"]


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
