"""Quality rules on real DuckDB warehouses and real Great Expectations: blocking and warning paths,
qc_flag on exactly the affected rows, per-council thresholds, re-validation and approvals."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from factories import LIMITS, car_park, land

from civicflow.jobs.publication import ApprovalError, gate_and_publish
from civicflow.jobs.publication import approve as approve_partition
from civicflow.registry import CouncilRegistry, RegistryError, build_registry, load_council
from civicflow.settings import QualitySettings
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import held_back

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DAY = "2016-10-04"


def half_hourly(device: str, day: str, hours: range, skip: set[int] = frozenset(), council: str = "testtown"):
    """A car park reporting every 30 minutes; `skip` leaves out those hours entirely but one reading."""
    out = []
    for h in hours:
        for minute in (0, 30):
            if h in skip and minute == 30:
                continue
            out.append(car_park(device, f"{day}T{h:02d}:{minute:02d}:00Z", 10 + h, council=council))
    return out


def published(con, *columns: str) -> list[tuple]:
    return con.execute(f"SELECT {', '.join(columns)} FROM published.parking ORDER BY ALL").fetchall()


def registry_with(quality: dict, council: str = "testtown"):
    return build_registry([CouncilRegistry.model_validate({"council": council, "quality": quality})])


# --- completeness: a warning that flags exactly the rows of the incomplete device-hours -------------


def test_incomplete_device_hours_are_published_with_qc_flag_on_exactly_their_rows(wh):
    layout, con = wh
    # p1 reports every 30 minutes (interval 1800 s by the aggregates' rule) but once in hour 10.
    land(layout, half_hourly("p1", DAY, range(8, 13), skip={10}) + half_hourly("p2", DAY, range(8, 13)))
    stage_segments(layout, con, LIMITS)
    strict = QualitySettings(completeness_min=0.75)

    result = gate_and_publish(layout, con, now=NOW, quality=strict)

    assert (result.passed, result.failed, result.published) == (1, 0, 1)
    assert result.warned == [
        {
            "dataset": "parking",
            "council": "testtown",
            "date": DAY,
            "warnings": ["completeness"],
            "flagged_rows": 1,
        }
    ]
    flagged = con.execute(
        "SELECT device_id, observed_at FROM published.parking WHERE qc_flag IS NOT NULL"
    ).fetchall()
    assert [(d, t.hour, t.minute) for d, t in flagged] == [("p1", 10, 0)]
    assert con.execute(
        "SELECT DISTINCT qc_flag FROM published.parking WHERE qc_flag IS NOT NULL"
    ).fetchall() == [("completeness",)]
    assert con.execute("SELECT count(*) FROM published.parking").fetchone() == (19,)  # flagged rows stay
    # The same device-hour has the same coverage in the published hourly aggregate: one rule.
    assert con.execute(
        "SELECT coverage FROM published.parking_hourly WHERE device_id = 'p1' AND hour(hour) = 10"
    ).fetchone() == (0.5,)
    [(report_json,)] = con.execute("SELECT report FROM published.validations").fetchall()
    report = json.loads(report_json)
    assert report["success"] is True
    assert [w["rule"] for w in report["warnings"]] == ["completeness"]
    assert report["warnings"][0]["severity"] == "warning"
    assert report["metrics"]["flagged_rows"] == 1
    # The same partition with the default threshold (0.5) has no warning: the threshold decides.
    csv = next(layout.published_dataset("parking").glob("council=testtown/date=*/*.csv")).read_text()
    assert sum(line.endswith(",completeness") for line in csv.splitlines()) == 1


def test_completeness_at_the_default_threshold_flags_nothing(wh):
    layout, con = wh
    land(layout, half_hourly("p1", DAY, range(8, 13), skip={10}))
    stage_segments(layout, con, LIMITS)
    result = gate_and_publish(layout, con, now=NOW)
    assert (result.published, result.warned) == (1, [])
    assert published(con, "count(qc_flag)") == [(0,)]


def test_registry_reporting_interval_replaces_the_inferred_one(wh):
    layout, con = wh
    land(layout, half_hourly("p1", DAY, range(8, 13)))
    stage_segments(layout, con, LIMITS)
    # The council says p1 should report every 10 minutes: two readings an hour cover a third.
    registry = registry_with({"reporting_interval_s": {"p1": 600}})
    result = gate_and_publish(layout, con, now=NOW, registry=registry)
    assert result.warned[0]["warnings"] == ["completeness"]
    assert published(con, "count(*)", "count(qc_flag)") == [(10, 10)]


# --- quarantine share: blocking ----------------------------------------------------------------------


def burst(n: int, day: str = DAY, device: str = "p9") -> list[tuple[str, dict]]:
    """Readings refused at staging: occupied_spots above capacity (at 07:00, off the half-hours)."""
    return [car_park(device, f"{day}T07:{i % 60:02d}:{i // 60 + 1:02d}Z", 500, total=100) for i in range(n)]


def flaky_day() -> list[tuple[str, dict]]:
    """p1 clean; p9 staged 10 readings and had 2 refused: 2 of its 12 readings, 17 % (> 5 %)."""
    return half_hourly("p1", DAY, range(8, 13)) + half_hourly("p9", DAY, range(8, 13)) + burst(2)


def devices_published(con) -> list[tuple]:
    """(device, published rows, rows with a qc_flag), by device."""
    return con.execute(
        "SELECT device_id, count(*), count(qc_flag) FROM published.parking GROUP BY ALL ORDER BY ALL"
    ).fetchall()


def test_a_high_quarantine_share_holds_back_that_device_and_publishes_the_others(wh):
    layout, con = wh
    land(layout, flaky_day())
    stage_segments(layout, con, LIMITS)

    result = gate_and_publish(layout, con, now=NOW)

    # The day is published (it failed a blocking rule, so it counts as failed) without p9.
    assert (result.failed, result.published, result.held_back) == (1, 1, [])
    assert result.devices_held == [
        {
            "dataset": "parking",
            "council": "testtown",
            "date": DAY,
            "device_id": "p9",
            "failed": ["quarantine_share"],
            "rows": 10,
        }
    ]
    [held] = held_back(con)
    assert (held.council, held.event_date, held.version, held.device_id, held.grain, held.rows) == (
        "testtown",
        date(2016, 10, 4),
        1,
        "p9",
        "device",
        10,
    )
    assert held.rules == ["quarantine_share"] and "quarantine_share" in held.reasons()
    assert devices_published(con) == [("p1", 10, 0)]  # p9's readings are not published, p1's all are
    assert con.execute("SELECT DISTINCT device_id FROM published.parking_hourly").fetchall() == [("p1",)]
    docs = layout.root / held.data_docs
    assert docs == layout.validations / "parking" / "council=testtown" / f"date={DAY}" / "v1.html"
    page = docs.read_text()
    assert "Status: Failed in part: published without 1 device" in page
    assert '<th scope="row">device p9</th><td>quarantine_share</td><td>10</td>' in page
    report = json.loads(con.execute("SELECT report FROM published.validations").fetchone()[0])
    assert [(f["rule"], f["grain"], f["devices"], f["unexpected_count"]) for f in report["failed"]] == [
        ("quarantine_share", "device", ["p9"], 10)
    ]
    assert report["metrics"]["quarantined"] == 2
    assert report["metrics"]["quarantine_share"] == pytest.approx(2 / 22)  # the day's, all devices


def test_a_device_whose_every_reading_was_refused_holds_nothing_back(wh):
    layout, con = wh
    land(layout, half_hourly("p1", DAY, range(8, 13)) + burst(2))  # p9 has no staged reading at all
    stage_segments(layout, con, LIMITS)

    result = gate_and_publish(layout, con, now=NOW)

    assert (result.passed, result.failed, result.published, result.devices_held) == (1, 0, 1, [])
    assert devices_published(con) == [("p1", 10, 0)]
    report = json.loads(con.execute("SELECT report FROM published.validations").fetchone()[0])
    assert report["metrics"]["quarantined"] == 2
    assert report["metrics"]["quarantine_share"] == pytest.approx(2 / 12)


def test_quarantine_share_threshold_is_overridden_per_council(wh):
    layout, con = wh
    land(layout, flaky_day())
    stage_segments(layout, con, LIMITS)
    registry = registry_with({"quarantine_share_max": 0.25})

    result = gate_and_publish(layout, con, now=NOW, registry=registry)

    assert (result.failed, result.published, result.devices_held) == (0, 1, [])
    assert devices_published(con) == [("p1", 10, 0), ("p9", 10, 0)]
    report = json.loads(con.execute("SELECT report FROM published.validations").fetchone()[0])
    assert report["thresholds"]["quarantine_share_max"] == 0.25
    assert report["metrics"]["quarantined"] == 2
    assert report["metrics"]["quarantine_share"] == pytest.approx(2 / 22)


# --- volume: blocking, against the trailing 7 days -----------------------------------------------------


def test_a_collapse_in_volume_holds_the_day_back_and_an_approval_publishes_it(wh, monkeypatch):
    layout, con = wh
    history = [
        m for d in ("2016-10-01", "2016-10-02", "2016-10-03") for m in half_hourly("p1", d, range(8, 18))
    ]
    land(layout, history + [car_park("p1", f"{DAY}T08:00:00Z", 10), car_park("p1", f"{DAY}T08:30:00Z", 11)])
    stage_segments(layout, con, LIMITS)

    result = gate_and_publish(layout, con, now=NOW)

    assert result.published == 3
    assert [(h["date"], h["failed"]) for h in result.held_back] == [(DAY, ["volume"])]
    assert result.devices_held == []  # a rule about the day holds the whole day
    [held] = held_back(con)
    assert (held.event_date, held.device_id, held.grain, held.rules, held.rows) == (
        date(2016, 10, 4),
        None,
        "partition",
        ["volume"],
        2,
    )
    assert con.execute(
        "SELECT count(*) FROM published.parking WHERE observed_at::DATE = DATE '2016-10-04'"
    ).fetchone() == (0,)
    report = json.loads(
        con.execute(
            "SELECT report FROM published.validations WHERE event_date = ?", [date(2016, 10, 4)]
        ).fetchone()[0]
    )
    assert report["metrics"]["trailing_rows"] == [20, 20, 20]
    assert report["metrics"]["volume_ratio"] == pytest.approx(0.1)

    # Re-validated on the next run: still held back, and the decision is recorded again.
    assert gate_and_publish(layout, con, now=NOW).held_back[0]["failed"] == ["volume"]
    assert con.execute("SELECT count(*) FROM published.validations WHERE NOT published").fetchone() == (2,)

    with pytest.raises(ApprovalError):
        approve_partition(
            layout, con, "parking", "testtown", date(2016, 10, 4), reason=" ", who="ana", now=NOW
        )
    with pytest.raises(ApprovalError):
        approve_partition(
            layout, con, "parking", "testtown", date(2016, 10, 3), reason="x", who="ana", now=NOW
        )
    from civicflow.contract import Domain

    done = approve_partition(
        layout,
        con,
        Domain.PARKING,
        "testtown",
        date(2016, 10, 4),
        reason="car park closed at 09:00 for resurfacing",
        who="ana",
        now=NOW + timedelta(minutes=5),
    )

    assert (done["version"], done["failed"]) == (1, ["volume"])
    assert con.execute("SELECT * EXCLUDE (approved_at) FROM published.approvals").fetchall() == [
        (
            "parking",
            "testtown",
            date(2016, 10, 4),
            1,
            "ana",
            "car park closed at 09:00 for resurfacing",
            '["volume"]',
            None,  # the whole day, not one device
        )
    ]
    assert con.execute(
        "SELECT count(*) FROM published.parking WHERE observed_at::DATE = DATE '2016-10-04'"
    ).fetchone() == (2,)
    assert held_back(con) == []
    assert gate_and_publish(layout, con, now=NOW).validated == 0  # published: not validated again
    quality = json.loads((layout.published_dataset("parking") / "quality.json").read_text())
    council = quality["councils"]["testtown"]
    assert (council["partitions_published"], council["partitions_approved"], council["held_back"]) == (
        4,
        1,
        [],
    )


def test_volume_is_not_judged_without_enough_history(wh):
    layout, con = wh
    land(layout, half_hourly("p1", "2016-10-03", range(8, 18)) + [car_park("p1", f"{DAY}T08:00:00Z", 10)])
    stage_segments(layout, con, LIMITS)
    assert gate_and_publish(layout, con, now=NOW).held_back == []
    # One day of history is enough for a council that says so.
    land(layout, [car_park("p1", f"{DAY}T08:30:00Z", 12)])
    stage_segments(layout, con, LIMITS)
    result = gate_and_publish(layout, con, now=NOW, registry=registry_with({"volume_min_days": 1}))
    assert [h["failed"] for h in result.held_back] == [["volume"]]


# --- a held-back partition is published once it passes ----------------------------------------------


def test_held_back_partition_is_published_on_a_later_run_once_it_passes(wh):
    layout, con = wh
    # p9 is the day's only device: holding it back publishes nothing, so the day is judged again.
    land(layout, half_hourly("p9", DAY, range(8, 13)) + burst(2))
    stage_segments(layout, con, LIMITS)
    first = gate_and_publish(layout, con, now=NOW)
    assert (first.failed, first.published) == (1, 0)
    assert [(h["date"], h["failed"]) for h in first.held_back] == [(DAY, ["quarantine_share"])]
    assert [(h["device_id"], h["rows"]) for h in first.devices_held] == [("p9", 10)]
    assert published(con, "count(*)") == [(0,)]

    # The council raises its threshold: the same version passes on the next run.
    result = gate_and_publish(layout, con, now=NOW, registry=registry_with({"quarantine_share_max": 0.5}))

    assert (result.validated, result.passed, result.published) == (1, 1, 1)
    assert con.execute(
        "SELECT partition_version, success, published FROM published.validations ORDER BY validated_at, rowid"
    ).fetchall() == [(1, False, False), (1, True, True)]
    assert held_back(con) == []
    assert devices_published(con) == [("p9", 10, 0)]


def test_a_partly_published_day_keeps_its_device_hold_until_an_approval(wh):
    layout, con = wh
    land(layout, flaky_day())
    stage_segments(layout, con, LIMITS)
    assert [h["device_id"] for h in gate_and_publish(layout, con, now=NOW).devices_held] == ["p9"]

    # The rest of the day is published: a raised threshold does not judge that version again.
    lenient = registry_with({"quarantine_share_max": 0.5})
    assert gate_and_publish(layout, con, now=NOW, registry=lenient).validated == 0
    assert [h.device_id for h in held_back(con)] == ["p9"]
    with pytest.raises(ApprovalError, match="device p1 is not held back"):
        approve_partition(
            layout, con, "parking", "testtown", date(2016, 10, 4), reason="x", who="ana", now=NOW, device="p1"
        )

    done = approve_partition(
        layout,
        con,
        "parking",
        "testtown",
        date(2016, 10, 4),
        reason="p9's gateway sent its test frames",
        who="ana",
        now=NOW + timedelta(minutes=5),
        device="p9",
    )

    assert (done["device_id"], done["version"], done["failed"], done["published"]) == (
        "p9",
        1,
        ["quarantine_share"],
        True,
    )
    assert held_back(con) == []
    # p9's readings are published now, each flagged with the rule the approval lifted.
    assert devices_published(con) == [("p1", 10, 0), ("p9", 10, 10)]
    assert con.execute(
        "SELECT DISTINCT qc_flag FROM published.parking WHERE device_id = 'p9'"
    ).fetchall() == [("quarantine_share",)]
    assert con.execute("SELECT rows FROM published.releases").fetchall() == [(20,)]


# --- freshness: a warning for today's partition only ------------------------------------------------


def test_stale_partition_of_today_is_published_with_a_freshness_warning(wh):
    layout, con = wh
    today = NOW.date().isoformat()
    land(layout, half_hourly("p1", today, range(6, 9)))  # newest 08:30, gate at 12:00: 210 minutes
    stage_segments(layout, con, LIMITS)

    result = gate_and_publish(layout, con, now=NOW)

    assert result.published == 1
    assert result.warned[0]["warnings"] == ["freshness"]
    assert result.warned[0]["flagged_rows"] == 0  # about the partition, not a row
    report = json.loads(con.execute("SELECT report FROM published.validations").fetchone()[0])
    assert report["metrics"]["freshness_minutes"] == pytest.approx(210)
    # The same data, judged by a council that expects a reading only every 4 hours, is fresh.
    land(layout, [car_park("p1", f"{today}T05:00:00Z", 3)])
    stage_segments(layout, con, LIMITS)
    again = gate_and_publish(layout, con, now=NOW, registry=registry_with({"freshness_max_minutes": 240}))
    assert again.warned == []


def test_an_old_partition_is_not_judged_on_freshness(wh):
    layout, con = wh
    land(layout, half_hourly("p1", DAY, range(6, 9)))
    stage_segments(layout, con, LIMITS)
    result = gate_and_publish(layout, con, now=NOW)
    assert (result.published, result.warned) == (1, [])


# --- registry [quality] table --------------------------------------------------------------------------


def test_registry_quality_table_is_validated(tmp_path):
    path = tmp_path / "leeds.toml"
    path.write_text(
        'council = "leeds"\n[quality]\ncompleteness_min = 0.9\n[quality.reporting_interval_s]\np1 = 600\n'
    )
    council = load_council(path)
    assert council.quality.thresholds(QualitySettings()).completeness_min == 0.9
    assert council.quality.reporting_interval_s == {"p1": 600}
    for bad in ("completness_min = 0.9", "completeness_min = 1.5", "volume_ratio_min = 9.0"):
        path.write_text(f'council = "leeds"\n[quality]\n{bad}\n')
        with pytest.raises(RegistryError, match="quality"):
            load_council(path)


def test_quality_settings_come_from_the_environment(monkeypatch):
    from civicflow.settings import Settings

    monkeypatch.setenv("CIVICFLOW_QUALITY__QUARANTINE_SHARE_MAX", "0.2")
    assert Settings().quality.quarantine_share_max == 0.2


# --- civicflow release list / approve ----------------------------------------------------------------


def test_release_commands_list_and_approve_a_held_back_partition(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from civicflow.app.release_cli import release_app

    layout = Layout(tmp_path / "data")
    con = connect(layout.warehouse)
    land(layout, flaky_day())
    stage_segments(layout, con, LIMITS)
    assert [h["device_id"] for h in gate_and_publish(layout, con, now=NOW).devices_held] == ["p9"]
    con.close()
    registry_dir = tmp_path / "registry"
    registry_dir.mkdir()
    monkeypatch.setenv("CIVICFLOW_DATA_ROOT", str(layout.root))
    monkeypatch.setenv("CIVICFLOW_REGISTRY_DIR", str(registry_dir))
    monkeypatch.setenv("USER", "ana")
    monkeypatch.setenv("COLUMNS", "80")  # as CI passes it down to a command whose output is a log
    runner = CliRunner()

    listed = runner.invoke(release_app, ["list"])
    assert listed.exit_code == 0, listed.output
    as_json = runner.invoke(release_app, ["list", "--json"])
    assert as_json.exit_code == 0, as_json.output
    [held] = json.loads(as_json.stdout)
    # One line of the table names the hold whole, with its Data Docs page's full path: nothing cut.
    [row] = [line for line in listed.output.splitlines() if "testtown" in line]
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert cells[:6] + cells[8:] == ["parking", "testtown", DAY, "1", "p9", "10", held["data_docs"]], (
        listed.output
    )
    assert cells[7].startswith(
        "quarantine_share: 10 rows: qc_quarantine_share = 0.1667, must be at most 0.05 ("
    )
    assert cells[7].endswith(")"), listed.output
    assert "…" not in listed.output
    assert (held["domain"], held["council"], held["event_date"], held["device_id"], held["rules"]) == (
        "parking",
        "testtown",
        DAY,
        "p9",
        ["quarantine_share"],
    )

    refused = runner.invoke(release_app, ["approve", "parking", "testtown", "2016-10-05", "--reason", "x"])
    assert refused.exit_code == 2 and "not held back" in refused.output
    not_held = runner.invoke(
        release_app, ["approve", "parking", "testtown", DAY, "--device", "p1", "--reason", "x"]
    )
    assert not_held.exit_code == 2 and "device p1 is not held back" in not_held.output

    approved = runner.invoke(
        release_app,
        ["approve", "parking", "testtown", DAY, "--device", "p9", "--reason", "gateway p9 was misconfigured"],
    )
    assert approved.exit_code == 0, approved.output
    assert "device p9" in approved.output and "overridden: quarantine_share" in approved.output
    con = connect(layout.warehouse, read_only=True)
    try:
        assert con.execute(
            "SELECT approved_by, reason, failed, device_id FROM published.approvals"
        ).fetchall() == [("ana", "gateway p9 was misconfigured", '["quarantine_share"]', "p9")]
        assert con.execute(
            "SELECT device_id, count(*) FROM published.parking GROUP BY ALL ORDER BY ALL"
        ).fetchall() == [("p1", 10), ("p9", 10)]
    finally:
        con.close()
    assert "No partition is held back" in runner.invoke(release_app, ["list"]).output
