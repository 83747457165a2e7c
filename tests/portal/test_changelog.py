"""The release changelog: what each kept release added, replaced, approved, held back and removed.

The releases after the shared one are cut here as the publisher leaves them (a release directory
with its release.json, manifest.json and quality.json), each changing a few partitions: a second
publish run through the gate would take seconds, and the changelog reads only these files.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import pytest
from fastapi.testclient import TestClient

from civicflow.contract import Zone
from civicflow.portal.app import create_app
from civicflow.publish.release import latest_release, prune_releases, switch_latest
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration

FIRST, SECOND, THIRD = "000001-20261123T120000Z", "000002-20261124T120000Z", "000003-20261125T120000Z"


def hold(day: str, version: int, device: str | None, rows: int, rule: str) -> dict:
    return {
        "date": day,
        "version": version,
        "device_id": device,
        "grain": "day" if device is None else "device",
        "rows": rows,
        "validated_at": f"{day}T23:00:00+00:00",
        "failed": [rule],
        "reasons": f"{rule} failed",
        "data_docs": None,
    }


def cut(layout: Layout, new_id: str, *, publish: dict, remove: tuple = (), holds: dict) -> None:
    """The next release: the latest one with `publish` {(dataset, council, day): (version, rows)}
    written anew, the partitions in `remove` gone, and `holds` {(dataset, council): [hold]} as
    its quality summaries' held-back lists; then `latest` switched to it."""
    old = latest_release(layout)
    new = old.with_name(new_id)
    shutil.copytree(old, new)
    meta = json.loads((new / "release.json").read_text())
    (new / "release.json").write_text(json.dumps(meta | {"release": new_id, "path": f"releases/{new_id}"}))
    manifest = json.loads((new / "manifest.json").read_text())
    gone = set(publish) | set(remove)
    manifest["partitions"] = [
        p for p in manifest["partitions"] if (p["domain"], p["council"], p["event_date"]) not in gone
    ]
    manifest["files"] = [f for f in manifest["files"] if (f["dataset"], f["council"], f["date"]) not in gone]
    for (dataset, council, day), (version, rows) in publish.items():
        manifest["partitions"].append(
            {"domain": dataset, "council": council, "event_date": day, "version": version, "rows": rows}
        )
        manifest["files"].append(
            {
                "dataset": dataset,
                "council": council,
                "date": day,
                "kind": "readings",
                "format": "parquet",
                "path": f"{dataset}/council={council}/date={day}/{dataset}-{council}-{day}.parquet",
                "bytes": 1000 + rows,
                "sha256": hashlib.sha256(f"{dataset}{council}{day}{version}{rows}".encode()).hexdigest(),
                "rows": rows,
                "partition_version": version,
            }
        )
    (new / "manifest.json").write_text(json.dumps(manifest | {"release": new_id}))
    for dataset in ("parking", "air_quality"):
        quality = json.loads((new / dataset / "quality.json").read_text())
        for council, summary in quality["councils"].items():
            summary["held_back"] = holds.get((dataset, council), [])
        (new / dataset / "quality.json").write_text(json.dumps(quality))
    switch_latest(layout, new)


@pytest.fixture
def three_releases(released, tmp_path) -> Layout:
    layout = Layout(tmp_path / "data")
    shutil.copytree(released.root / "published", layout.zone(Zone.PUBLISHED), symlinks=True)
    # 2: a late reading replaces 10-05; 10-06 is new; p2's readings of 10-04 fail at version 2
    # (the rest of the day is published again); citizens' 10-05 fails whole.
    cut(
        layout,
        SECOND,
        publish={
            ("parking", "testtown", "2016-10-05"): (2, 9),
            ("parking", "testtown", "2016-10-06"): (1, 8),
            ("parking", "testtown", "2016-10-04"): (2, 8),
        },
        holds={
            ("parking", "testtown"): [hold("2016-10-04", 2, "p2", 4, "quarantine_share")],
            ("air_quality", "citizens"): [hold("2016-10-05", 1, None, 3, "volume")],
        },
    )
    # 3: both holds approved; 10-06 erased.
    cut(
        layout,
        THIRD,
        publish={
            ("parking", "testtown", "2016-10-04"): (2, 12),
            ("air_quality", "citizens", "2016-10-05"): (1, 3),
        },
        remove=(("parking", "testtown", "2016-10-06"),),
        holds={},
    )
    return layout


def part(dataset: str, day: str, version: int, rows: int, *, was: tuple | None = None, **more) -> dict:
    council = "testtown" if dataset == "parking" else "citizens"
    entry = {"dataset": dataset, "council": council, "date": day, "version": version, "rows": rows}
    if was is not None:
        entry |= {"previous_version": was[0], "previous_rows": was[1]}
    return entry | more


def test_each_release_lists_what_it_changed_from_the_one_before(three_releases):
    client = TestClient(create_app(three_releases))
    body = client.get("/api/releases").json()
    assert body["latest"] == THIRD
    third, second, first = body["releases"]
    assert [(r["release"], r["latest"], r["compared_with"]) for r in (third, second, first)] == [
        (THIRD, True, SECOND),
        (SECOND, False, FIRST),
        (FIRST, False, None),  # release 1: everything it holds was added
    ]
    assert first["changes"]["added"] == [
        part("air_quality", "2016-10-04", 1, 3),
        part("parking", "2016-10-04", 1, 12),
        part("parking", "2016-10-05", 1, 8),
    ]
    assert second["changes"] == {
        "added": [part("parking", "2016-10-06", 1, 8)],
        "replaced": [
            part("parking", "2016-10-04", 2, 8, was=(1, 12)),
            part("parking", "2016-10-05", 2, 9, was=(1, 8)),
        ],
        "approved": [],
        "held_back": [
            {
                "dataset": "air_quality",
                "council": "citizens",
                "date": "2016-10-05",
                "version": 1,
                "device_id": None,
                "rows": 3,
                "failed": ["volume"],
                "reasons": "volume failed",
            },
            {
                "dataset": "parking",
                "council": "testtown",
                "date": "2016-10-04",
                "version": 2,
                "device_id": "p2",
                "rows": 4,
                "failed": ["quarantine_share"],
                "reasons": "quarantine_share failed",
            },
        ],
        "removed": [],
    }
    assert third["changes"] == {
        "added": [],
        "replaced": [],
        "approved": [
            part("air_quality", "2016-10-05", 1, 3, devices=None),  # the whole day
            part("parking", "2016-10-04", 2, 12, was=(2, 8), devices=["p2"]),
        ],
        "held_back": [],
        "removed": [part("parking", "2016-10-06", 1, 8)],
    }
    assert third["summary"] == {"added": 0, "replaced": 0, "approved": 2, "held_back": 0, "removed": 1}
    assert third["partitions"] == 4  # air quality 10-04 and 10-05, parking 10-04 and 10-05
    assert third["datasets"][0] == {
        "dataset": "parking",
        "datapackage": f"/releases/{THIRD}/parking/datapackage.json",
    }

    # Once release 1 is removed, what release 2 changed is no longer known.
    prune_releases(three_releases, keep=2)
    newest, oldest = client.get("/api/releases").json()["releases"]
    assert (newest["release"], newest["changes"]) == (THIRD, third["changes"])
    assert (oldest["release"], oldest["compared_with"], oldest["changes"], oldest["summary"]) == (
        SECOND,
        None,
        None,
        None,
    )


def test_the_releases_page_shows_the_same_changes(three_releases):
    client = TestClient(create_app(three_releases))
    html = client.get("/releases").text
    assert re.findall(r"<h2 id=\"[^\"]+\">([^<]+)</h2>", html) == [f"{THIRD} (latest)", SECOND, FIRST]
    rows = [
        re.sub(r"\|+", "|", re.sub(r"<[^>]+>", "|", row)).strip("|")
        for row in re.findall(r"<tr><th scope=\"row\">.*?</tr>", html)
    ]
    assert rows[:3] == [
        "Approved|air_quality|citizens|2016-10-05|1|3|the whole day",
        "Approved|parking|testtown|2016-10-04|2|12 (was 8)|devices p2",
        "Removed|parking|testtown|2016-10-06|1|8",
    ]
    assert "Held back|parking|testtown|2016-10-04|2|4|device p2: quarantine_share failed" in rows
    assert "Replaced|parking|testtown|2016-10-05|2 (was 1)|9 (was 8)" in rows
    assert '<a href="/releases">Releases</a>' in html
    prune_releases(three_releases, keep=1)
    html = client.get("/releases").text
    assert "What this release changed is not known: the release before it is no longer kept." in html
