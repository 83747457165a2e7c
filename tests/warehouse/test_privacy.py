"""Personal data: the retention periods are enforced, and a device's data can be erased everywhere."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import land
from typer.testing import CliRunner

from civicflow.app.cli import app
from civicflow.jobs import decode_job, merge_job, publish_job, replay_job, retention_job, stage_job
from civicflow.publish.release import latest_release, read_manifest
from civicflow.settings import RetentionSettings, Settings
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.privacy import mask_detail
from civicflow.warehouse.segment_columns import scan_columns
from civicflow.warehouse.segments import SegmentCorrupt, SegmentWriter, erase_records, read_segment

PLATE, EMAIL, PHONE = b"AB12 CDE", b"someone@example.org", b"+44 7700 900123"
SECRETS = (PLATE, EMAIL, PHONE)


def parking(device: str, observed_at: str, occupied: int, council: str = "testtown", **extra) -> tuple:
    doc = {"observed_at": observed_at, "occupied_spots": occupied, "total_spots": 100, **extra}
    return f"city/{council}/parking/{device}", doc


def minutes(device: str, day: str, hour: int, occupied: int) -> list[tuple]:
    return [parking(device, f"{day}T{hour:02d}:{m:02d}:00Z", occupied + m % 3) for m in range(60)]


def erase(*args: str) -> dict:
    """Run `civicflow erase` through its command line; its result as printed."""
    done = CliRunner().invoke(app, ["erase", *args])
    logging.getLogger().handlers.clear()  # the command's log handler wrote to the runner's stream
    assert done.exit_code == 0, (done.exception, done.output)
    return orjson.loads(done.stdout[done.stdout.index("{") : done.stdout.rindex("}") + 1])


def files_holding(root: Path, secrets: tuple[bytes, ...]) -> list[tuple[str, bytes]]:
    """Every (file, secret) where a secret is in a file's bytes, or in a Parquet file's decoded rows."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content = path.read_bytes()
        if path.suffix == ".parquet":
            content += repr(pq.read_table(path).to_pylist()).encode()
        found += [(path.relative_to(root).as_posix(), s) for s in secrets if s in content]
    return found


def warehouse_holding(path: Path, secrets: tuple[bytes, ...]) -> list[tuple[str, bytes]]:
    """Every (table, secret) where a secret is in a value of any table of the warehouse."""
    con = connect(path, read_only=True)
    try:
        tables = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchall()
        found = []
        for schema, table in tables:
            text = repr(con.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()).encode()
            found += [
                (f"{schema}.{table}", s) for s in secrets if s in text or repr(s)[2:-1].encode() in text
            ]
        return found
    finally:
        con.close()


def other_devices(path: Path) -> tuple[list, list]:
    con = connect(path, read_only=True)
    try:
        staged = con.execute("FROM staged.parking WHERE device_id <> 'p1' ORDER BY ALL").fetchall()
        published = con.execute("FROM published.parking WHERE device_id <> 'p1' ORDER BY ALL").fetchall()
        return staged, published
    finally:
        con.close()


@pytest.mark.integration
def test_erase_removes_a_device_everywhere_and_keeps_the_rest(tmp_path, monkeypatch):
    settings = Settings(data_root=tmp_path / "data")
    layout = Layout(settings.data_root)
    day = "2016-10-04"
    leaky = [
        parking("p1", f"{day}T09:00:00Z", 5, plate=PLATE.decode()),
        parking("p1", f"{day}T09:01:00Z", 5, email=EMAIL.decode()),
        parking("p1", f"{day}T09:02:00Z", 5, owner_phone=PHONE.decode()),
    ]
    land(layout, [*minutes("p1", day, 8, 10), *minutes("p2", day, 8, 20), leaky[0]], listener="l1")
    p3_days = [*minutes("p3", "2016-10-05", 8, 30), *minutes("p3", "2016-10-06", 8, 40)]
    land(layout, [*leaky[1:], *p3_days], listener="l2")
    stage_job(settings)
    published = publish_job(settings)
    assert published["published"] == 3 and not published["devices_held"]
    con = connect(layout.warehouse, read_only=True)
    assert con.execute("SELECT count(*) FROM quarantine.readings WHERE device_id = 'p1'").fetchone() == (3,)
    assert con.execute("SELECT count(*) FROM published.parking WHERE device_id = 'p1'").fetchone() == (60,)
    con.close()
    assert files_holding(layout.root, (PLATE, EMAIL, PHONE))  # the raw zone has them, at least
    staged_before, published_before = other_devices(layout.warehouse)
    released_before = latest_release(layout)

    monkeypatch.setenv("CIVICFLOW_DATA_ROOT", str(settings.data_root))
    monkeypatch.setenv("USER", "dpo-officer")
    result = erase("--council", "testtown", "--device", "p1", "--reference", "DSAR-0042")
    assert (result["raw_records"], result["raw_segments"]) == (63, 2)
    assert (result["quarantine_rows"], result["quarantine_file_rows"]) == (3, 3)
    assert (result["staged_rows"], result["published_rows"]) == (60, 60)
    assert result["partitions"] == [["parking", "testtown", day]]
    assert result["releases_deleted"] == [released_before.name]

    # No file under the data root holds an erased value, nor does any table of the warehouse.
    assert files_holding(layout.root, SECRETS) == []
    assert warehouse_holding(layout.warehouse, SECRETS) == []
    # The raw segments keep their size and every other record its offset; p1's are tombstones.
    records = [r for seg in sorted(layout.raw.glob("*/*.seg")) for r in read_segment(seg)]
    assert len(records) == 60 + 120 and not any(b"/p1" in r.topic for r in records)

    # The other devices are still staged and published, the day's new version without p1.
    assert other_devices(layout.warehouse) == (staged_before, published_before)
    con = connect(layout.warehouse, read_only=True)
    assert con.execute("SELECT count(*) FROM published.parking WHERE device_id = 'p1'").fetchone() == (0,)
    manifest = read_manifest(latest_release(layout))
    assert sorted((p["event_date"], p["version"], p["rows"]) for p in manifest["partitions"]) == [
        (day, 2, 60),
        ("2016-10-05", 1, 60),
        ("2016-10-06", 1, 60),
    ]
    [audit] = con.execute(
        "SELECT erased_by, reference, council, device_id, raw_records, quarantine_rows, staged_rows, "
        "published_rows, partitions, release_id FROM published.erasures"
    ).fetchall()
    con.close()
    assert audit[:8] == ("dpo-officer", "DSAR-0042", "testtown", "p1", 63, 3, 60, 60)
    assert orjson.loads(audit[8]) == [["parking", "testtown", day]]
    assert audit[9] == latest_release(layout).name
    csv = next(latest_release(layout).glob(f"parking/council=testtown/date={day}/*.csv")).read_text()
    assert ",p2," in csv and ",p1," not in csv

    # A replay of everything gives the other devices' rows as they were, and nothing of p1.
    replayed = replay_job("2000-01-01", "2100-01-01", settings)
    assert replayed["changed_partitions"] == []
    assert other_devices(layout.warehouse)[0] == staged_before
    assert files_holding(layout.root, SECRETS) == []

    # p3 alone reported on the 5th and the 6th: erased in a window that holds its readings, each
    # day's new version is empty and not published, and both earlier publications are withdrawn
    # all the same, one after the other on the erasure's connection.
    today = datetime.now(tz=UTC).date().isoformat()
    args = ["--council", "testtown", "--device", "p3", "--from", today, "--to", today, "--keep-old-releases"]
    result = erase(*args)
    assert (result["staged_rows"], result["published_rows"], result["withdrawn"]) == (120, 120, 2)
    assert result["releases_deleted"] == []
    manifest = read_manifest(latest_release(layout))
    assert sorted((p["event_date"], p["version"], p["rows"]) for p in manifest["partitions"]) == [
        (day, 2, 60),
        ("2016-10-05", 1, 0),
        ("2016-10-06", 1, 0),
    ]
    con = connect(layout.warehouse, read_only=True)
    assert con.execute("SELECT DISTINCT device_id FROM published.parking").fetchall() == [("p2",)]
    assert con.execute("SELECT count(*) FROM published.erasures").fetchone() == (2,)
    con.close()


@pytest.mark.integration
def test_an_erasure_between_a_decode_and_its_merge_leaves_nothing_of_the_device(tmp_path, monkeypatch):
    """Decode tasks read raw segments without the warehouse, so an erasure can run after a decode
    read a segment and before the merge takes its increment. The merge drops what the erasure
    covers, tombstones those records where the erasure did not, and cleans the quarantine file a
    decode wrote after the erasure's pass: nothing erased comes back, even when the first merge is
    interrupted after cleaning up, and the ledger says what the segment holds."""
    settings = Settings(data_root=tmp_path / "data")
    layout = Layout(settings.data_root)
    day = "2016-10-04"
    leaky = parking("p1", f"{day}T09:00:00Z", 5, plate=PLATE.decode())
    segment = land(layout, [*minutes("p1", day, 8, 10), *minutes("p2", day, 8, 20), leaky])
    decoded = decode_job(0, shards=1, settings=settings)
    assert (decoded["segments"], decoded["readings"], decoded["quarantined"]) == (
        1,
        120,
        {"unknown_field": 1},
    )
    seg_id = segment.relative_to(layout.raw).as_posix().removesuffix(".seg")
    quarantine_file = layout.quarantine_file(seg_id)
    written_by_decode = quarantine_file.read_bytes()
    assert PLATE in repr(pq.read_table(quarantine_file).to_pylist()).encode()

    monkeypatch.setenv("CIVICFLOW_DATA_ROOT", str(settings.data_root))
    with monkeypatch.context() as race:
        # The erasure merges what was decoded before it starts; this decode commits just after.
        race.setattr("civicflow.jobs.merge_job", lambda settings: {})
        result = erase("--council", "testtown", "--device", "p1", "--reference", "DSAR-0043")
    # p1's 61 records tombstoned, its rejection out of the quarantine file; nothing was staged yet
    assert (result["raw_records"], result["quarantine_file_rows"], result["staged_rows"]) == (61, 1, 0)
    # ... but the decode had read the segment first, and wrote its quarantine file after that pass
    quarantine_file.write_bytes(written_by_decode)

    def interrupted(*args, **kwargs):
        raise RuntimeError("merge interrupted")

    with monkeypatch.context() as crash:  # the first merge fails inside its transaction
        crash.setattr("civicflow.transforms.stage._record_corrections", interrupted)
        with pytest.raises(RuntimeError, match="merge interrupted"):
            merge_job(settings)
    # It had tombstoned the records first, then deleted the quarantine file (p1's row was its only one).
    assert not quarantine_file.exists()
    merged = merge_job(settings)  # the retry: p1's 60 readings are still in the increment
    assert (merged["erased"], merged["readings"], merged["records"]) == (60, 60, 60)
    assert merged["quarantined"] == {}
    con = connect(layout.warehouse, read_only=True)
    try:
        assert con.execute("SELECT device_id, count(*) FROM staged.parking GROUP BY ALL").fetchall() == [
            ("p2", 60)
        ]
        assert con.execute("SELECT count(*) FROM quarantine.readings").fetchone() == (0,)
        ledger = con.execute("SELECT sha256, records, readings, rejected FROM raw.segments").fetchall()
    finally:
        con.close()
    # the ledger describes the segment as it now is: tombstones and all
    assert ledger == [(hashlib.sha256(segment.read_bytes()).hexdigest(), 60, 60, 0)]
    assert files_holding(layout.root, SECRETS) == []
    assert [r.topic for r in read_segment(segment) if b"/p1" in r.topic] == []

    published = publish_job(settings)
    assert published["published"] == 1
    con = connect(layout.warehouse, read_only=True)
    try:
        assert con.execute("SELECT DISTINCT device_id FROM published.parking").fetchall() == [("p2",)]
    finally:
        con.close()
    # A later merge finds nothing to drop: a reading p1 sends after its erasure is new, and kept.
    land(layout, [parking("p1", f"{day}T10:00:00Z", 7)], listener="l2")
    decode_job(0, shards=1, settings=settings)
    assert (merge_job(settings)["erased"], stage_count(layout, "p1")) == (0, 1)


@pytest.mark.integration
def test_a_segment_decoded_before_an_erasure_of_only_refused_messages_is_ledgered_as_it_now_is(
    tmp_path, monkeypatch
):
    """p1 sent one message, refused for its plate: the decode's increment holds no reading of p1,
    so the merge has nothing to drop, but the erasure that ran in between tombstoned the record
    and emptied the quarantine file: the ledger row is read from the segment as it now is."""
    settings = Settings(data_root=tmp_path / "data")
    layout = Layout(settings.data_root)
    leaky = parking("p1", "2016-10-04T09:00:00Z", 5, plate=PLATE.decode())
    segment = land(layout, [*minutes("p2", "2016-10-04", 8, 20), leaky])
    assert decode_job(0, shards=1, settings=settings)["quarantined"] == {"unknown_field": 1}
    monkeypatch.setenv("CIVICFLOW_DATA_ROOT", str(settings.data_root))
    with monkeypatch.context() as race:
        race.setattr("civicflow.jobs.merge_job", lambda settings: {})  # the increment lands after
        result = erase("--council", "testtown", "--device", "p1", "--reference", "DSAR-0045")
    assert (result["raw_records"], result["quarantine_file_rows"]) == (1, 1)

    merged = merge_job(settings)
    assert (merged["erased"], merged["readings"], merged["records"]) == (0, 60, 60)
    con = connect(layout.warehouse, read_only=True)
    try:
        ledger = con.execute("SELECT sha256, records, readings, rejected FROM raw.segments").fetchall()
        assert con.execute("SELECT count(*) FROM quarantine.readings").fetchone() == (0,)
    finally:
        con.close()
    assert ledger == [(hashlib.sha256(segment.read_bytes()).hexdigest(), 60, 60, 0)]
    assert files_holding(layout.root, SECRETS) == []


def stage_count(layout: Layout, device: str) -> int:
    con = connect(layout.warehouse, read_only=True)
    try:
        return con.execute("SELECT count(*) FROM staged.parking WHERE device_id = ?", [device]).fetchone()[0]
    finally:
        con.close()


def old_segment(layout: Layout, listener: str, messages: list[tuple], at: datetime) -> Path:
    """A closed segment opened, and its messages received, at `at`."""
    writer = SegmentWriter(layout.raw / listener, max_bytes=1 << 30, max_age_s=3600, clock=at.timestamp)
    ns = int(at.timestamp() * 1e9)
    for i, (topic, doc) in enumerate(messages):
        writer.append(topic.encode(), orjson.dumps(doc), ns + i)
    path = writer.close()
    assert path is not None
    return path


@pytest.mark.unit
def test_a_detail_keeps_field_names_and_loses_the_values_it_quotes():
    assert (
        mask_detail("fields not in the parking contract: plate")
        == "fields not in the parking contract: plate"
    )
    assert mask_detail("occupied_spots must be an integer, got 'AB12 CDE'") == (
        "occupied_spots must be an integer, got '…'"
    )
    assert mask_detail("""status "it's AB12" is not one of a, b""") == "status '…' is not one of a, b"


@pytest.mark.integration
def test_retention_deletes_staged_old_segments_and_strips_old_quarantine_payloads(tmp_path):
    layout = Layout(tmp_path / "data")
    settings = Settings(data_root=layout.root)
    old = datetime(2020, 1, 6, 12, tzinfo=UTC)
    bad = {"observed_at": "2020-01-06T08:05:00Z", "occupied_spots": PLATE.decode(), "total_spots": 100}
    staged_old = old_segment(
        layout, "l1", [parking("p1", "2020-01-06T08:00:00Z", 5), ("city/testtown/parking/p1", bad)], old
    )
    recent = land(
        layout,
        [
            parking("p3", "2020-01-06T10:00:00Z", 1),
            parking("p3", "2020-01-06T10:05:00Z", 1, email=EMAIL.decode()),
        ],
        listener="l3",
    )
    stage_job(settings)
    unstaged_old = old_segment(layout, "l2", [parking("p2", "2020-01-06T09:00:00Z", 7)], old)

    keep = RetentionSettings(raw_segment_days=1, quarantine_payload_days=1, quarantine_record_days=3650)
    done = retention_job(Settings(data_root=layout.root, retention=keep))
    assert (done["raw_segments_deleted"], done["quarantine_payloads_stripped"]) == (1, 1)
    assert (done["quarantine_rows_deleted"], done["quarantine_file_rows_stripped"]) == (0, 1)
    assert not staged_old.exists() and unstaged_old.exists() and recent.exists()
    con = connect(layout.warehouse, read_only=True)
    rows = con.execute(
        "SELECT device_id, reason, detail, payload FROM quarantine.readings ORDER BY device_id"
    ).fetchall()
    con.close()
    assert rows[0] == ("p1", "invalid_type", "occupied_spots must be an integer, got '…'", b"")
    assert rows[1][:2] == ("p3", "unknown_field") and EMAIL in rows[1][3]  # within its period
    [old_file] = (layout.root / "quarantine" / "segments" / "l1").glob("*.parquet")
    [row] = pq.read_table(old_file).to_pylist()
    assert (row["payload"], row["detail"]) == (b"", "occupied_spots must be an integer, got '…'")
    assert files_holding(layout.root, (PLATE,)) == []
    assert warehouse_holding(layout.warehouse, (PLATE,)) == []

    # Staged later, then replayed: the deleted segment's readings stay, its staged rows stand in.
    stage_job(settings)
    replay_job("2020-01-06", "2020-01-06", settings)
    con = connect(layout.warehouse, read_only=True)
    staged = con.execute("SELECT device_id FROM staged.parking ORDER BY ALL").fetchall()
    con.close()
    assert staged == [("p1",), ("p2",), ("p3",)]

    gone = RetentionSettings(raw_segment_days=1, quarantine_payload_days=0, quarantine_record_days=0)
    done = retention_job(Settings(data_root=layout.root, retention=gone))
    assert (done["quarantine_rows_deleted"], done["quarantine_file_rows_deleted"]) == (2, 2)
    assert not list((layout.root / "quarantine").rglob("*.parquet"))
    assert files_holding(layout.root / "quarantine", SECRETS) == []
    again = retention_job(Settings(data_root=layout.root, retention=gone))
    assert again["warehouse_changed"] is False and again["quarantine_files_rewritten"] == 0


@pytest.mark.unit
def test_a_tombstone_keeps_the_segment_size_and_every_other_offset(tmp_path):
    layout = Layout(tmp_path / "data")
    path = land(layout, [parking("p1", "2016-10-04T08:00:00Z", n, note=PLATE.decode()) for n in range(3)])
    before, size = read_segment(path), path.stat().st_size
    digest, erased = erase_records(path, {before[1].offset})
    assert erased == 1 and path.stat().st_size == size
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [(r.offset, r.payload) for r in read_segment(path)] == [
        (r.offset, r.payload) for r in (before[0], before[2])
    ]
    assert path.read_bytes().count(PLATE) == 2
    cols = scan_columns(path.read_bytes())
    assert (len(cols), cols.live, cols.erased.tolist()) == (3, 2, [False, True, False])
    assert erase_records(path, {before[1].offset}) == (digest, 0)  # already a tombstone
    with pytest.raises(SegmentCorrupt, match="no valid record starts there"):
        erase_records(path, {before[1].offset + 1})


@pytest.mark.integration
def test_a_merge_erasing_a_record_drops_every_quarantine_row_at_it_whoever_it_names(tmp_path):
    """A quarantine row holds its whole message: one at an erased record goes too, even when it
    names no device (a reading of it that said nothing of where it came from) or another one; the
    record is tombstoned before the file is rewritten, and the ledger row says what is left."""
    from civicflow.contract import Reason
    from civicflow.transforms.decode import Rejection
    from civicflow.transforms.fast import quarantine_row
    from civicflow.transforms.stage import ErasedFrom, RawZone, _erase_from_segment
    from civicflow.warehouse.tables import quarantine_schema

    layout = Layout(tmp_path / "data")
    segment = land(
        layout, [parking("p1", "2016-10-04T08:00:00Z", 5), parking("p2", "2016-10-04T08:01:00Z", 6)]
    )
    seg = segment.relative_to(layout.raw).as_posix().removesuffix(".seg")
    first, second = read_segment(segment)
    now = datetime(2026, 12, 1, tzinfo=UTC)

    def rejected(record, device):
        why = Rejection(
            Reason.UNKNOWN_FIELD,
            "unknown field 'plate'",
            record.payload,
            council="testtown",
            domain="parking",
            device_id=device,
        )
        return quarantine_row(seg, record, why, now)

    rows = [rejected(first, "p1"), rejected(first, None), rejected(first, "p9"), rejected(second, "p2")]
    table = pa.Table.from_pylist(rows, schema=quarantine_schema())
    zone = RawZone(layout)
    zone.write_quarantine(seg, table)
    entry = {"segment_id": seg, "sha256": "decoded", "records": 2, "readings": 1, "rejected": 4}
    gone = ErasedFrom(offsets={first.offset}, readings=1, rejected=1)

    kept = _erase_from_segment(zone, entry, table, gone)

    assert kept["device_id"].to_pylist() == ["p2"] and gone.rejected == 3
    assert zone.read_quarantine(seg)["device_id"].to_pylist() == ["p2"]
    assert [r.topic for r in read_segment(segment)] == [b"city/testtown/parking/p2"]
    assert entry == {
        "segment_id": seg,
        "sha256": hashlib.sha256(segment.read_bytes()).hexdigest(),
        "records": 1,
        "readings": 0,
        "rejected": 1,
    }
