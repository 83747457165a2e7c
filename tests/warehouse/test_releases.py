"""Atomic, versioned releases: readers see one whole release, old releases are pruned by retention."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import UTC, datetime, timedelta

import pytest
from factories import LIMITS, car_park, land, tree_digest

from civicflow.contract import Zone
from civicflow.jobs.publication import gate_and_publish
from civicflow.publish.release import latest_release, releases
from civicflow.settings import PublishSettings
from civicflow.transforms.stage import export_partitions, stage_segments
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def publish_day(layout, con, day: int, keep: int) -> None:
    """A new day of two car parks: every publish changes the parking data package."""
    land(
        layout,
        [
            car_park(f"p{i}", f"2026-03-{day:02d}T{h:02d}:00:00Z", 10 * i + h)
            for i in (1, 2)
            for h in range(8, 12)
        ],
    )
    stage_segments(layout, con, LIMITS, now=NOW)
    gate_and_publish(
        layout, con, now=NOW + timedelta(minutes=day), publication=PublishSettings(keep_releases=keep)
    )


def read_release(layout: Layout) -> str:
    """Read as a consumer should: resolve `latest` once, then read only under what it resolved.

    Checks that every file the data package lists has the size and sha256 it lists.
    """
    release = layout.zone(Zone.PUBLISHED) / os.readlink(layout.latest)
    meta = json.loads((release / "release.json").read_text())
    assert meta["release"] == release.name
    for domain in meta["datasets"]:
        package = json.loads((release / domain / "datapackage.json").read_text())
        for r in package["resources"]:
            data = (release / domain / r["path"]).read_bytes()
            assert len(data) == r["bytes"], (release.name, r["path"])
            assert r["hash"] == "sha256:" + hashlib.sha256(data).hexdigest(), (release.name, r["path"])
    return release.name


def test_a_reader_during_publishes_always_sees_one_whole_release(wh):
    layout, con = wh
    publish_day(layout, con, 1, keep=50)
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append(read_release(layout))
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for day in range(2, 7):
            publish_day(layout, con, day, keep=50)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert len(seen) > 20
    assert len(set(seen)) >= 3  # the reader saw several releases come and go, each whole
    assert seen == sorted(seen)  # and never an older one after a newer
    assert read_release(layout) == releases(layout)[-1].name
    pointer = json.loads(layout.latest_pointer.read_text())
    assert pointer["release"] == releases(layout)[-1].name
    assert pointer["datasets"] == {"parking": f"releases/{pointer['release']}/parking/datapackage.json"}


def test_old_releases_are_pruned_after_the_switch_and_released_files_never_change(wh):
    layout, con = wh
    publish_day(layout, con, 1, keep=2)
    first = latest_release(layout)
    first_files = tree_digest(first)
    publish_day(layout, con, 2, keep=2)
    assert tree_digest(first) == first_files  # a released file is never rewritten
    for day in (3, 4):
        publish_day(layout, con, day, keep=2)
    kept = [p.name for p in releases(layout)]
    assert kept == [p.name for p in releases(layout)][-2:] and len(kept) == 2
    assert kept[0].startswith("000003-") and kept[1].startswith("000004-")
    assert latest_release(layout).name == kept[1]
    assert not first.exists()
    days = sorted(p.name for p in (latest_release(layout) / "parking").glob("council=*/date=*"))
    assert days == [f"date=2026-03-0{d}" for d in (1, 2, 3, 4)]


def test_a_held_back_partition_changes_no_released_data(wh):
    layout, con = wh
    publish_day(layout, con, 1, keep=5)
    before = tree_digest(layout.zone(Zone.PUBLISHED), "**/*")
    work_before = tree_digest(layout.published_dataset("parking"))
    first = latest_release(layout)
    ledger = con.execute("FROM published.releases ORDER BY ALL").fetchall()
    # The same reading twice under one key: a rule about the whole partition, so all of it is held.
    con.execute("INSERT INTO staged.parking SELECT * FROM staged.parking WHERE device_id = 'p2' LIMIT 1")
    con.execute("UPDATE staged.partitions SET version = version + 1")
    export_partitions(con, layout)
    result = gate_and_publish(layout, con, now=NOW, publication=PublishSettings(keep_releases=5))
    assert (result.failed, result.published, result.released) == (1, 0, 0)
    assert [(h["date"], h["failed"]) for h in result.held_back] == [("2026-03-01", ["unique_key"])]
    assert con.execute("FROM published.releases ORDER BY ALL").fetchall() == ledger  # nothing pending

    # The quality summary now lists the held day, and a changed quality.json is released with the
    # held version's Data Docs page; every other file of the new release is the previous release's,
    # byte for byte.
    second = latest_release(layout)
    assert [p.name for p in releases(layout)] == [first.name, second.name]
    prefix = f"releases/{first.name}/"
    assert tree_digest(first) == {
        k.removeprefix(prefix): v for k, v in before.items() if k.startswith(prefix)
    }
    metadata = ("parking/quality.json", "release.json", "manifest.json")
    page = "parking/data-docs/council=testtown/date=2026-03-01/v2.html"
    old, new = tree_digest(first), tree_digest(second)
    assert {k: v for k, v in new.items() if k not in metadata} == {
        k: v for k, v in old.items() if k not in metadata
    } | {page: new[page]}
    assert 'role="status">Status: Failed: held back</p>' in (second / page).read_text()
    assert new["parking/quality.json"] != old["parking/quality.json"]
    quality = json.loads((second / "parking" / "quality.json").read_text())
    [held] = quality["councils"]["testtown"]["held_back"]
    assert (held["date"], held["grain"], held["failed"]) == ("2026-03-01", "partition", ["unique_key"])
    held_page = {"domain": "parking", "council": "testtown", "event_date": "2026-03-01", "version": 2}
    held_page["data_docs"] = page
    manifests = [json.loads((r / "manifest.json").read_text()) for r in (first, second)]
    assert [m.pop("release") for m in manifests] == [first.name, second.name]
    assert [m.pop("held_back") for m in manifests] == [[], [held_page]]
    assert manifests[0] == manifests[1]
    # The working tree's files are as they were, but for the quality summary.
    work_after = tree_digest(layout.published_dataset("parking"))
    assert {k: v for k, v in work_after.items() if k != "quality.json"} == {
        k: v for k, v in work_before.items() if k != "quality.json"
    }
    # Judged again with nothing changed, it is held again and nothing new is released.
    again = gate_and_publish(layout, con, now=NOW, publication=PublishSettings(keep_releases=5))
    assert (again.validated, again.failed, again.published) == (1, 1, 0)
    assert latest_release(layout) == second and len(releases(layout)) == 2
