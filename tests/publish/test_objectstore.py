"""Releases on the object store (a moto server): files, then the manifest, then `latest.json`
switched with a conditional put that a concurrent publisher can make fail, never half-do."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from factories import LIMITS, car_park, land
from objectstores import aws_credentials, moto_server, s3_storage

import civicflow.publish.objectstore as objectstore
from civicflow.errors import TerminalError
from civicflow.jobs.publication import gate_and_publish, release_step
from civicflow.publish.objectstore import (
    LATEST_KEY,
    LatestMoved,
    StoreConflict,
    prune_store,
    publish_release,
    release_key,
)
from civicflow.publish.release import MANIFEST, Release, latest_release
from civicflow.settings import StorageSettings
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.storage import Store, open_store

pytestmark = pytest.mark.integration
FIXTURES = (aws_credentials, moto_server, s3_storage)  # tests/objectstores.py: the moto server
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def publish_day(layout, con, day: int, storage: StorageSettings) -> str:
    """Two car parks' readings of a new day, staged and published; returns the release cut."""
    land(
        layout,
        [
            car_park(f"p{i}", f"2026-03-{day:02d}T{h:02d}:00:00Z", 10 * i + h)
            for i in (1, 2)
            for h in range(8, 12)
        ],
    )
    stage_segments(layout, con, LIMITS, now=NOW)
    result = gate_and_publish(layout, con, now=NOW + timedelta(minutes=day), storage=storage)
    assert result.release == latest_release(layout).name
    return result.release


def assert_store_holds(store: Store, release_dir) -> None:
    """Every file of the local release is on the store at the same key, byte for byte, and every
    file the manifest lists has the size and sha256 it lists."""
    local = {
        p.relative_to(release_dir).as_posix(): p.read_bytes() for p in release_dir.rglob("*") if p.is_file()
    }
    keys = store.list(release_key(release_dir.name) + "/")
    assert keys == sorted(release_key(release_dir.name, path) for path in local)
    for path, data in local.items():
        assert store.get_bytes(release_key(release_dir.name, path)) == data, path
    manifest = json.loads(store.get_bytes(release_key(release_dir.name, MANIFEST)))
    assert manifest["release"] == release_dir.name and manifest["files"]
    for entry in manifest["files"]:
        data = store.get_bytes(release_key(release_dir.name, entry["path"]))
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])


def test_releases_reach_the_store_whole_and_latest_json_follows_them(wh, s3_storage):
    layout, con = wh
    store = open_store(s3_storage, layout.root)

    first = publish_day(layout, con, 1, s3_storage)  # the release step publishes to the store
    assert_store_holds(store, layout.releases / first)
    assert store.get_bytes(release_key(first, MANIFEST)) == (layout.releases / first / MANIFEST).read_bytes()
    pointer, etag = store.get_with_etag(LATEST_KEY)
    assert pointer == (layout.releases / first / "release.json").read_bytes()
    assert json.loads(pointer)["release"] == first

    # A re-run of the release step with nothing new changes nothing on the store.
    outcome = release_step(layout, con, now=NOW + timedelta(hours=1), storage=s3_storage)
    assert (outcome.release, outcome.cut) == (first, False)
    assert store.get_with_etag(LATEST_KEY) == (pointer, etag)

    # The next release: cut locally only, then published to the store on its own.
    second = publish_day(layout, con, 2, StorageSettings())
    assert store.get_with_etag(LATEST_KEY)[1] == etag  # a local-only release step leaves the store alone
    done = publish_release(layout, store, second)
    assert done.switched and done.release == second
    # Day 1's files did not change: copied inside the store from the first release, not uploaded.
    day1 = [
        f
        for f in json.loads((layout.releases / second / MANIFEST).read_text())["files"]
        if "03-01" in f["path"]
    ]
    assert done.copied == len(day1) > 0
    assert done.uploaded == sum(1 for p in (layout.releases / second).rglob("*") if p.is_file()) - 1 - len(
        day1
    )
    assert_store_holds(store, layout.releases / second)
    assert_store_holds(store, layout.releases / first)  # consumers that resolved it keep reading it
    pointer2, etag2 = store.get_with_etag(LATEST_KEY)
    assert json.loads(pointer2)["release"] == second and etag2 != etag

    again = publish_release(layout, store, second)
    assert (again.switched, again.uploaded, again.copied) == (False, 0, 0)


class RivalPublisher:
    """The store as this publisher sees it, with another publisher that switches `latest.json` to
    its own release while this one is uploading (just before this one writes its manifest)."""

    def __init__(self, store: Store, rival_pointer: bytes) -> None:
        self._store = store
        self.rival_pointer = rival_pointer
        self.fired = False

    def __getattr__(self, name):
        return getattr(self._store, name)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if key.endswith(f"/{MANIFEST}") and not self.fired:
            self.fired = True
            current = self._store.get_with_etag(LATEST_KEY)
            assert self._store.replace_if(LATEST_KEY, self.rival_pointer, current[1] if current else None)
        return self._store.put_if_absent(key, data)


def make_release(layout, number: int, files: dict[str, bytes]) -> str:
    """A release directory as publish/release.py cuts one (release.json, manifest.json, files),
    without a warehouse behind it: for the protocol's races, which do not depend on the data."""
    release = Release(f"{number:06d}-20260310T12{number:02d}00Z", layout.releases / "x", NOW, ("parking",))
    path = layout.releases / release.id
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    (path / "release.json").write_text(json.dumps(release.to_dict(), indent=2) + "\n")
    manifest = {
        "release": release.id,
        "files": [
            {"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in files.items()
        ],
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return release.id


def test_a_publisher_that_loses_the_race_gets_a_clear_error_and_the_pointer_stays_whole(tmp_path, s3_storage):
    layout = Layout(tmp_path / "data")
    store = open_store(s3_storage, layout.root)
    first = make_release(layout, 1, {"parking/a.parquet": b"day 1"})
    second = make_release(layout, 2, {"parking/a.parquet": b"day 1", "parking/b.parquet": b"day 2"})
    assert publish_release(layout, store, first).switched
    rival = json.dumps({"release": "000003-20260310T130000Z", "path": "releases/000003-20260310T130000Z"})
    racing = RivalPublisher(store, rival.encode())

    with pytest.raises(
        LatestMoved, match=f"another publisher switched .* while this one published release {second}"
    ):
        publish_release(layout, racing, second)
    assert racing.fired
    assert store.get_bytes(LATEST_KEY) == rival.encode()  # the winner's pointer, whole
    assert_store_holds(store, layout.releases / second)  # uploaded, complete, not pointed to
    assert_store_holds(store, layout.releases / first)

    # Re-running does not move latest back to an older release than the store's.
    with pytest.raises(StoreConflict, match="newer than this publisher's"):
        publish_release(layout, store, second)
    assert store.get_bytes(LATEST_KEY) == rival.encode()


def test_a_rerun_after_losing_to_an_older_release_switches_forward(tmp_path, s3_storage):
    """The store had no release: both publishers write the first `latest.json` (If-None-Match)."""
    layout = Layout(tmp_path / "data")
    store = open_store(s3_storage, layout.root)
    second = make_release(layout, 2, {"parking/b.parquet": b"day 2"})
    older = json.dumps({"release": "000001-20260310T110000Z", "path": "releases/000001-20260310T110000Z"})
    with pytest.raises(LatestMoved):
        publish_release(layout, RivalPublisher(store, older.encode()), second)
    assert store.get_bytes(LATEST_KEY) == older.encode()
    done = publish_release(layout, store, second)  # the manifest is there: only the pointer moves
    assert (done.switched, done.uploaded, done.copied) == (True, 0, 0)
    assert store.get_bytes(LATEST_KEY) == (layout.releases / second / "release.json").read_bytes()


def test_releases_the_data_root_no_longer_keeps_leave_the_store(tmp_path, s3_storage):
    layout = Layout(tmp_path / "data")
    store = open_store(s3_storage, layout.root)
    ids = [make_release(layout, n, {"parking/a.parquet": b"day %d" % n}) for n in (1, 2, 3)]
    for release_id in ids:
        assert publish_release(layout, store, release_id).removed == ()
    assert store.children("published/releases/") == ids
    shutil.rmtree(layout.releases / ids[0])  # retention (or an erasure) removed it locally
    done = publish_release(layout, store, ids[2])
    assert (done.switched, done.removed) == (False, (ids[0],))
    assert store.children("published/releases/") == ids[1:]
    assert_store_holds(store, layout.releases / ids[1])
    assert_store_holds(store, layout.releases / ids[2])
    shutil.rmtree(layout.releases / ids[2])
    assert prune_store(layout, store, ids[2]) == ()  # never the release latest.json names
    assert store.children("published/releases/") == ids[1:]


def test_a_store_that_ignores_conditional_writes_is_refused(tmp_path, s3_storage, monkeypatch):
    layout = Layout(tmp_path / "data")
    first = make_release(layout, 1, {"parking/a.parquet": b"day 1"})

    class IgnoresConditions(RivalPublisher):
        def put_if_absent(self, key: str, data: bytes) -> bool:
            self._store.put_bytes(key, data)
            return True

    monkeypatch.setattr(objectstore, "_conditional_checked", set())
    store = open_store(s3_storage, layout.root)
    with pytest.raises(TerminalError, match="does not honour conditional writes"):
        publish_release(layout, IgnoresConditions(store, b""), first)
    assert not store.exists(LATEST_KEY) and store.list("published/") == []


def test_a_release_without_its_manifest_is_not_published(tmp_path, s3_storage):
    layout = Layout(tmp_path / "data")
    first = make_release(layout, 1, {"parking/a.parquet": b"day 1"})
    (layout.releases / first / MANIFEST).unlink()
    store = open_store(s3_storage, layout.root)
    with pytest.raises(TerminalError, match="has no manifest.json .* Re-run the release step"):
        publish_release(layout, store, first)
    assert store.list() == []
