"""The gate on many workers: judging tasks read the warehouse only and keep their decisions; the
release step publishes them. The outcome equals judging and publishing in one call."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pytest
from factories import LIMITS, car_park, land

from civicflow.jobs.publication import gate_and_publish, judge_step, publish_judged, release_step
from civicflow.publish.release import latest_release, read_manifest
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import to_validate

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def land_days(layout: Layout) -> None:
    """Three councils' car parks on two days, and a traffic counter whose gateway over-reads (its
    day is held back at device grain) beside a sound one."""
    messages = [
        car_park(device, f"2016-10-0{day}T{h:02d}:00:00Z", 10 + h, council=council)
        for council in ("northtown", "southtown", "easttown")
        for device in ("p1", "p2")
        for day in (4, 5)
        for h in range(8, 14)
    ]
    for device, intensity in (("a64", 2**63 - 1), ("a65", 30)):  # a64's gateway over-reads
        messages += [
            (
                f"city/northtown/traffic/{device}",
                {"observed_at": f"2016-10-04T09:{m:02d}:00Z", "intensity": intensity},
            )
            for m in range(0, 60, 5)
        ]
    # from the future when the gate runs (NOW), though not when it was received: held at device grain
    messages += [
        car_park("p9", "2026-12-01T08:00:00Z", 5, council="northtown"),
        car_park("p1", "2026-12-01T08:00:00Z", 5, council="northtown"),
    ]
    land(layout, messages)


def published_state(layout: Layout, con) -> tuple:
    release = latest_release(layout)
    assert release is not None
    manifest = read_manifest(release)
    files = {f["path"]: f["sha256"] for f in manifest["files"] if f["path"].endswith((".csv", ".parquet"))}
    rows = con.execute(
        "SELECT * FROM published.parking ORDER BY ALL; SELECT * FROM published.traffic ORDER BY ALL"
    ).fetchall()
    decisions = con.execute(
        "SELECT domain, council, event_date, partition_version, success, published "
        "FROM published.validations ORDER BY ALL"
    ).fetchall()
    partitions = sorted((p["council"], p["event_date"], p["version"]) for p in manifest["partitions"])
    return files, rows, decisions, partitions


def test_judging_read_only_then_publishing_equals_one_call(tmp_path):
    one = Layout(tmp_path / "one" / "data")
    land_days(one)
    split = Layout(tmp_path / "split" / "data")
    shutil.copytree(one.raw, split.raw)

    con = connect(one.warehouse)
    stage_segments(one, con, LIMITS, now=NOW)
    expected = gate_and_publish(one, con, now=NOW)
    expected_state = published_state(one, con)
    expected_unjudged = to_validate(con)
    con.close()
    assert expected.published >= 5 and expected.devices_held, expected.to_dict()

    con = connect(split.warehouse)
    stage_segments(split, con, LIMITS, now=NOW)
    refs = to_validate(con)
    con.close()
    assert len(refs) == 8

    # Two judging tasks, each with half the partitions and the warehouse open read-only.
    judged = []
    for group in (refs[::2], refs[1::2]):
        ro = connect(split.warehouse, read_only=True)
        judged.append(judge_step(split, ro, group, now=NOW))
        with pytest.raises(Exception, match="read-only"):
            ro.execute("CREATE TABLE nothing (x INT)")  # the judging task cannot write
        ro.close()
    assert sum(j.validated for j in judged) == 8
    kept = sorted(p.name for p in split.validations.rglob("decision.*"))
    assert kept.count("decision.json") == 8

    con = connect(split.warehouse)
    result = publish_judged(split, con, refs, now=NOW)
    release_step(split, con, now=NOW, judged={r.domain for r in refs})
    assert (result.validated, result.published, len(result.devices_held)) == (
        expected.validated,
        expected.published,
        len(expected.devices_held),
    )
    assert published_state(split, con) == expected_state
    assert list(split.validations.rglob("decision.*")) == []  # recorded, then removed
    assert to_validate(con) == expected_unjudged
    con.close()


def test_a_partition_whose_judging_task_failed_is_judged_next_run(tmp_path):
    layout = Layout(tmp_path / "data")
    land_days(layout)
    con = connect(layout.warehouse)
    stage_segments(layout, con, LIMITS, now=NOW)
    refs = to_validate(con)
    con.close()
    ro = connect(layout.warehouse, read_only=True)
    judge_step(layout, ro, refs[1:], now=NOW)  # the task with refs[0] failed before deciding
    ro.close()
    con = connect(layout.warehouse)
    result = publish_judged(layout, con, refs, now=NOW)
    assert result.validated == len(refs) - 1
    assert refs[0] in to_validate(con) and refs[1] not in to_validate(con)  # planned again
    con.close()
