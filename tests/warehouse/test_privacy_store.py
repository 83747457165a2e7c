"""Personal data in object-storage mode: retention and erasure reach the raw segments, quarantine
files and releases in the store (a moto server), as they reach the data root's."""

from __future__ import annotations

import hashlib
import json
import zlib
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import land
from objectstores import aws_credentials, moto_server, s3_storage

from civicflow.jobs import decode_job, erase_job, merge_job, publish_job, retention_job, stage_job
from civicflow.publish.release import latest_release, releases
from civicflow.settings import RetentionSettings, Settings, StorageSettings
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.segment_columns import scan_columns
from civicflow.warehouse.segments import SegmentWriter
from civicflow.warehouse.storage import Store, open_store

pytestmark = pytest.mark.integration
FIXTURES = (aws_credentials, moto_server, s3_storage)  # tests/objectstores.py: the moto server

PLATE, EMAIL, PHONE = b"AB12 CDE", b"someone@example.org", b"+44 7700 900123"
TOPIC = b"city/testtown/parking/p1"
"""The erased device's topic: in every message it sent, so in its raw records and quarantine rows."""
ERASED = (PLATE, EMAIL, PHONE, TOPIC)


def parking(device: str, observed_at: str, occupied: int, **extra) -> tuple[str, dict]:
    doc = {"observed_at": observed_at, "occupied_spots": occupied, "total_spots": 100, **extra}
    return f"city/testtown/parking/{device}", doc


def minutes(device: str, day: str, occupied: int) -> list[tuple[str, dict]]:
    return [parking(device, f"{day}T08:{m:02d}:00Z", occupied + m % 3) for m in range(60)]


def upload(store: Store, listener_disk: Path, path: Path) -> str:
    """What the listener does with a closed segment: put it at raw/<listener>/<name>, delete it."""
    key = f"raw/{path.relative_to(listener_disk).as_posix()}"
    store.put_file(key, path)
    path.unlink()
    return key


def old_segment(listener_disk: Path, listener: str, messages: list[tuple], at: datetime) -> Path:
    """A closed segment opened, and its messages received, at `at`."""
    writer = SegmentWriter(listener_disk / listener, max_bytes=1 << 30, max_age_s=3600, clock=at.timestamp)
    ns = int(at.timestamp() * 1e9)
    for i, (topic, doc) in enumerate(messages):
        writer.append(topic.encode(), orjson.dumps(doc), ns + i)
    path = writer.close()
    assert path is not None
    return path


def readable(key: str, data: bytes) -> bytes:
    """An object's bytes, with what compression hides decoded as well: a Parquet file's rows, and
    the blocks of an Avro file (the Iceberg tables' manifests and manifest lists are deflated)."""
    if key.endswith(".parquet"):
        data += repr(pq.read_table(pa.BufferReader(data)).to_pylist()).encode()
    if key.endswith(".avro"):
        data += avro_blocks(data)
    return data


def avro_blocks(data: bytes) -> bytes:
    """The data blocks of an Avro object container file, decompressed (Avro 1.x specification)."""
    assert data[:4] == b"Obj\x01", "not an Avro container file"
    pos = 4

    def long() -> int:  # zig-zag varint
        nonlocal pos
        shift = value = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return (value >> 1) ^ -(value & 1)

    def raw() -> bytes:
        nonlocal pos
        size = long()
        pos += size
        return data[pos - size : pos]

    meta = {}
    while (count := long()) != 0:
        if count < 0:
            count = -count
            long()  # the block's size in bytes
        for _ in range(count):
            name = raw()
            meta[name] = raw()
    pos += 16  # the sync marker
    codec = meta.get(b"avro.codec", b"null")
    assert codec in (b"null", b"deflate"), f"Avro codec {codec!r}: decode it here too"
    blocks = b""
    while pos < len(data):
        long()  # objects in the block
        block = raw()
        pos += 16
        blocks += zlib.decompress(block, -15) if codec == b"deflate" else block
    return blocks


def objects(store: Store, prefix: str) -> list[str]:
    """The keys of the store's objects under `prefix` (not the empty "folders" pyarrow leaves)."""
    return [k for k in store.list(prefix) if not k.endswith("/")]


def store_holding(store: Store, values: tuple[bytes, ...]) -> list[tuple[str, bytes]]:
    """Every (key, value) where a value is in an object of the store."""
    found = []
    for key in objects(store, ""):
        content = readable(key, store.get_bytes(key))
        found += [(key, v) for v in values if v in content]
    return found


def files_holding(root: Path, values: tuple[bytes, ...]) -> list[tuple[str, bytes]]:
    """Every (file, value) where a value is in a file under `root` (Parquet rows decoded too)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content = readable(path.name, path.read_bytes())
        found += [(path.relative_to(root).as_posix(), v) for v in values if v in content]
    return found


def live_records(segment: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, topic, payload) of a segment's records that are not tombstones."""
    cols = scan_columns(segment)
    return [
        (r.offset, r.topic, r.payload)
        for i in range(len(cols))
        if not cols.erased[i]
        for r in [cols.record(i)]
    ]


def settings_for(tmp_path: Path, storage: StorageSettings, **extra) -> Settings:
    """Object-storage mode: zones in the store, the warehouse and the SQLite catalogue under tmp."""
    return Settings(data_root=tmp_path / "data", storage=storage, **extra)


def test_an_erasure_leaves_nothing_of_the_device_in_the_store_or_the_data_root(tmp_path, s3_storage):
    settings = settings_for(tmp_path, s3_storage)
    layout = Layout(settings.data_root)
    store = open_store(s3_storage, layout.root)
    listener_disk = tmp_path / "listener" / "raw"
    day = "2016-10-04"
    leaky = [
        parking("p1", f"{day}T09:00:00Z", 5, plate=PLATE.decode()),
        parking("p1", f"{day}T09:01:00Z", 5, email=EMAIL.decode()),
        parking("p1", f"{day}T09:02:00Z", 5, owner_phone=PHONE.decode()),
    ]
    landing = Layout(listener_disk.parent)
    keys = [
        upload(store, listener_disk, land(landing, [*minutes("p1", day, 10), *minutes("p2", day, 20)], "l1")),
        upload(store, listener_disk, land(landing, [*leaky, *minutes("p3", day, 30)], "l2")),
    ]
    stage_job(settings)
    published = publish_job(settings)
    assert published["published"] == 1 and not published["devices_held"]
    first_release = latest_release(layout).name
    # Before: the store holds the device everywhere the tests look afterwards.
    assert {k.split("/")[0] for k, _ in store_holding(store, ERASED)} == {"raw", "quarantine"}
    assert any(k.startswith("published/releases/") for k, _ in store_holding(store, (b"p1",)))
    quarantine_keys = store.list("quarantine/segments/")
    assert quarantine_keys == [
        "quarantine/segments/" + keys[1].removeprefix("raw/").replace(".seg", ".parquet")
    ]
    untouched = {k: store.get_bytes(k) for k in keys}

    result = erase_job("testtown", "p1", who="dpo-officer", reference="DSAR-0042", settings=settings)
    assert (result["raw_records"], result["raw_segments"]) == (63, 2)
    assert (result["quarantine_rows"], result["quarantine_file_rows"]) == (3, 3)
    assert (result["staged_rows"], result["published_rows"]) == (60, 60)
    assert result["store"] == s3_storage.url
    assert result["releases_deleted"] == [first_release] == result["store_releases_deleted"]

    # Nothing the device sent is in any object of the store, nor in any file under the data root.
    assert store_holding(store, ERASED) == []
    assert files_holding(layout.root, ERASED) == []
    assert not (layout.root / ".erasure-scratch").exists()  # the stored segments' working copies
    # Its raw records are tombstones of the same length in the same objects; the rest is unchanged.
    for key in keys:
        data = store.get_bytes(key)
        assert len(data) == len(untouched[key]) and scan_columns(data).why is None
        others = [r for r in live_records(untouched[key]) if r[1] != TOPIC]
        assert live_records(data) == others and len(others) == 60
    # Its quarantine file is gone (it held only its rows); no data file of the Iceberg tables, and
    # no release in the store (only the new one: the data root's), has a row of it.
    assert store.list("quarantine/segments/") == []
    for key in objects(store, "warehouse/iceberg/"):
        if key.endswith(".parquet"):
            assert "p1" not in pq.read_table(pa.BufferReader(store.get_bytes(key))).to_pydict().get(
                "device_id", []
            ), key
    assert store.children("published/releases/") == [p.name for p in releases(layout)] == [result["release"]]
    assert json.loads(store.get_bytes("published/latest.json"))["release"] == result["release"]
    day_files = [k for k in objects(store, "published/") if f"/parking/council=testtown/date={day}/" in k]
    assert sorted(k.rsplit(".", 1)[1] for k in day_files) == ["csv", "parquet"]
    for key in day_files:
        data = store.get_bytes(key)
        if key.endswith(".parquet"):
            assert set(pq.read_table(pa.BufferReader(data)).column("device_id").to_pylist()) == {"p2", "p3"}
        else:
            assert b",p2," in data and b",p1," not in data
    con = connect(layout.warehouse, read_only=True)
    ledger = dict(con.execute("SELECT segment_id, records FROM raw.segments").fetchall())
    con.close()
    assert ledger == {k.removeprefix("raw/").removesuffix(".seg"): 60 for k in keys}


def test_retention_deletes_staged_old_segments_from_the_store_and_expires_its_quarantine(
    tmp_path, s3_storage
):
    settings = settings_for(tmp_path, s3_storage)
    layout = Layout(settings.data_root)
    store = open_store(s3_storage, layout.root)
    listener_disk = tmp_path / "listener" / "raw"
    old = datetime(2020, 1, 6, 12, tzinfo=UTC)
    bad = {"observed_at": "2020-01-06T08:05:00Z", "occupied_spots": PLATE.decode(), "total_spots": 100}
    staged_old = upload(
        store,
        listener_disk,
        old_segment(
            listener_disk,
            "l1",
            [parking("p1", "2020-01-06T08:00:00Z", 5), ("city/testtown/parking/p1", bad)],
            old,
        ),
    )
    recent = upload(
        store,
        listener_disk,
        land(
            Layout(listener_disk.parent),
            [parking("p3", "2020-01-06T10:05:00Z", 1, email=EMAIL.decode())],
            "l3",
        ),
    )
    stage_job(settings)
    unstaged_old = upload(
        store,
        listener_disk,
        old_segment(listener_disk, "l2", [parking("p2", "2020-01-06T09:00:00Z", 7)], old),
    )
    old_quarantine = "quarantine/segments/" + staged_old.removeprefix("raw/").replace(".seg", ".parquet")
    recent_quarantine = "quarantine/segments/" + recent.removeprefix("raw/").replace(".seg", ".parquet")
    recent_bytes = store.get_bytes(recent_quarantine)

    keep = RetentionSettings(raw_segment_days=1, quarantine_payload_days=1, quarantine_record_days=3650)
    done = retention_job(settings_for(tmp_path, s3_storage, retention=keep))
    assert done["store"] == s3_storage.url
    assert (done["store_raw_segments_deleted"], done["store_quarantine_file_rows_stripped"]) == (1, 1)
    assert (done["store_quarantine_file_rows_deleted"], done["store_quarantine_files_rewritten"]) == (0, 1)
    assert (done["quarantine_payloads_stripped"], done["raw_segments_deleted"]) == (1, 0)
    raw = store.list("raw/")
    assert staged_old not in raw and unstaged_old in raw and recent in raw  # never an unstaged one
    [row] = pq.read_table(pa.BufferReader(store.get_bytes(old_quarantine))).to_pylist()
    assert (row["device_id"], row["payload"]) == ("p1", b"")
    assert row["detail"] == "occupied_spots must be an integer, got '…'"
    assert store.get_bytes(recent_quarantine) == recent_bytes  # within its period: not rewritten
    assert store_holding(store, (PLATE,)) == []
    assert sorted(k for k, _ in store_holding(store, (EMAIL,))) == sorted([recent, recent_quarantine])
    assert files_holding(layout.root, (PLATE,)) == []

    gone = RetentionSettings(raw_segment_days=1, quarantine_payload_days=0, quarantine_record_days=0)
    done = retention_job(settings_for(tmp_path, s3_storage, retention=gone))
    assert (done["store_quarantine_file_rows_deleted"], done["store_raw_segments_deleted"]) == (2, 0)
    assert store.list("quarantine/") == []
    assert store.list("raw/") == sorted([unstaged_old, recent])
    again = retention_job(settings_for(tmp_path, s3_storage, retention=gone))
    assert again["store_quarantine_files_rewritten"] == 0 and again["store_raw_segments_deleted"] == 0


def test_an_erasure_between_a_decode_and_its_merge_reaches_the_store_too(tmp_path, s3_storage, monkeypatch):
    """A decode task read a stored segment and wrote its quarantine object before the erasure,
    and committed its increment after the erasure's own merge: the next merge drops the device's
    readings and rejections, cleans the quarantine object again, and records the segment as the
    store now holds it."""
    settings = settings_for(tmp_path, s3_storage)
    layout = Layout(settings.data_root)
    store = open_store(s3_storage, layout.root)
    listener_disk = tmp_path / "listener" / "raw"
    day = "2016-10-04"
    leaky = parking("p1", f"{day}T09:00:00Z", 5, plate=PLATE.decode())
    segment = land(
        Layout(listener_disk.parent), [*minutes("p1", day, 10), *minutes("p2", day, 20), leaky], "l1"
    )
    key = upload(store, listener_disk, segment)
    assert decode_job(0, shards=1, settings=settings)["readings"] == 120
    [quarantine_key] = store.list("quarantine/segments/")
    written_by_decode = store.get_bytes(quarantine_key)

    with monkeypatch.context() as race:
        race.setattr("civicflow.jobs.merge_job", lambda settings: {})  # the increment lands after
        result = erase_job("testtown", "p1", who="dpo-officer", reference="DSAR-0044", settings=settings)
    assert (result["raw_records"], result["quarantine_file_rows"], result["staged_rows"]) == (61, 1, 0)
    store.put_bytes(quarantine_key, written_by_decode)  # as the decode's late write would leave it

    merged = merge_job(settings)
    assert (merged["erased"], merged["readings"], merged["records"]) == (61, 60, 60)
    assert store_holding(store, ERASED) == [] and files_holding(layout.root, ERASED) == []
    assert not list(layout.root.glob(".merge-erasure-*"))  # the tombstoning's working copies
    con = connect(layout.warehouse, read_only=True)
    try:
        assert con.execute("SELECT DISTINCT device_id FROM staged.parking").fetchall() == [("p2",)]
        ledger = con.execute("SELECT sha256, records FROM raw.segments").fetchall()
    finally:
        con.close()
    assert ledger == [(hashlib.sha256(store.get_bytes(key)).hexdigest(), 60)]
