"""Personal data in the warehouse: retention periods, a device's erasure, and the erasure record.

Readings refused by the contract keep the bytes they arrived with, so quarantine is where personal
data can sit (a `plate` or an `owner_phone` a gateway should never have sent is refused as
`unknown_field`, with its payload). This module is the only writer of what retention and erasure
change in the warehouse and quarantine files, and the owner of `published.erasures`, the record of
every erasure: who, when, which device and window, how many records and which partitions; never
the erased values.

Retention counts from when Civicflow collected a message (`received_at`; a corrupt tail of a
segment has none and counts from `quarantined_at`). When a quarantine row's payload expires, its
bytes are removed and the values its detail quotes (`got 'AB12 CDE'`) are masked; field names,
reason, device and times are kept until the row itself expires. A `bad_topic` row loses its topic
as well, since the topic is then the thing that was wrong and may hold anything.

The same rules reach the raw segments and quarantine files in the object store, when there is one
(the functions of "the object store" below).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from civicflow.contract import DATASETS, Dataset
from civicflow.warehouse.partitions import replace_staged
from civicflow.warehouse.segments import CLOSED_SUFFIX, TORN_SUFFIX, erase_records, fsync_dir
from civicflow.warehouse.tables import quarantine_schema

if TYPE_CHECKING:
    from civicflow.warehouse.storage import Store

T = TypeVar("T")

ERASURE_DDL = [
    """CREATE TABLE IF NOT EXISTS published.erasures (
    erasure_id VARCHAR PRIMARY KEY,
    erased_at TIMESTAMPTZ NOT NULL,
    erased_by VARCHAR NOT NULL,
    reference VARCHAR NOT NULL,
    council VARCHAR NOT NULL,
    device_id VARCHAR NOT NULL,
    received_from TIMESTAMPTZ,
    received_to TIMESTAMPTZ,
    raw_segments BIGINT NOT NULL,
    raw_records BIGINT NOT NULL,
    quarantine_rows BIGINT NOT NULL,
    staged_rows BIGINT NOT NULL,
    corrections BIGINT NOT NULL,
    published_rows BIGINT NOT NULL,
    partitions JSON NOT NULL,
    release_id VARCHAR
)""",
]
"""The table this module owns; `civicflow.warehouse.schema` runs it on every writable connect."""

MASK = "'…'"
QUOTED = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\""""
"""A quoted value in a rejection's detail, as the decoders quote them (`{value!r}`)."""

_COLLECTED = (
    "CASE WHEN received_at > TIMESTAMPTZ '1970-01-02 00:00:00+00' THEN received_at ELSE quarantined_at END"
)
_STRIPPED = """
    ''::BLOB AS payload,
    regexp_replace(detail, $quoted, $mask, 'g') AS detail,
    CASE WHEN reason = 'bad_topic' THEN '' ELSE topic END AS topic"""
_NEEDS_STRIP = (
    "(octet_length(payload) > 0 OR regexp_matches(detail, $quoted) OR (reason = 'bad_topic' AND topic <> ''))"
)
_SEGMENT_STAMP = re.compile(r"^(\d{8}T\d{12}Z)-\d{8}$")


def mask_detail(detail: str) -> str:
    """A rejection's detail with the values it quotes masked: `got 'AB12 CDE'` -> `got '…'`."""
    return re.sub(QUOTED, MASK, detail)


def segment_opened_at(path: Path) -> datetime | None:
    """The UTC time a segment (or its torn tail) was opened, from its name."""
    match = _SEGMENT_STAMP.match(path.name.split(".", 1)[0])
    if match is None:
        return None
    return datetime.strptime(match[1], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


# --- retention -------------------------------------------------------------------------------


def purge_raw_segments(raw_root: Path, staged: set[str], before: datetime) -> tuple[list[str], list[str]]:
    """Delete the closed segments opened before `before` that the ledger says are staged.

    A segment not yet staged is kept whatever its age: its readings exist nowhere else. A torn
    tail (`.torn`, bytes of a write cut off by a crash, never acknowledged) opened before `before`
    is deleted too. Returns the deleted segments' ids and the deleted torn files' names.
    """
    segments, torn = [], []
    if not raw_root.is_dir():
        return segments, torn
    for path in sorted(raw_root.glob(f"*/*{CLOSED_SUFFIX}")):
        opened = segment_opened_at(path)
        sid = path.relative_to(raw_root).as_posix().removesuffix(CLOSED_SUFFIX)
        if opened is not None and opened < before and sid in staged:
            path.unlink()
            segments.append(sid)
    for path in sorted(raw_root.glob(f"*/*{TORN_SUFFIX}")):
        opened = segment_opened_at(path)
        if opened is not None and opened < before:
            path.unlink()
            torn.append(path.relative_to(raw_root).as_posix())
    for directory in {raw_root / s.split("/", 1)[0] for s in segments + torn}:
        fsync_dir(directory)
    return segments, torn


def expire_quarantine_rows(
    con: duckdb.DuckDBPyConnection, payload_before: datetime, record_before: datetime
) -> tuple[int, int]:
    """Strip the payloads collected before `payload_before` and delete the rows collected before
    `record_before` in `quarantine.readings`; returns (stripped, deleted)."""
    [(deleted,)] = con.execute(
        f"SELECT count(*) FROM quarantine.readings WHERE {_COLLECTED} < $cut", {"cut": record_before}
    ).fetchall()
    con.execute(f"DELETE FROM quarantine.readings WHERE {_COLLECTED} < $cut", {"cut": record_before})
    params = {"cut": payload_before, "quoted": QUOTED, "mask": MASK}
    [(stripped,)] = con.execute(
        f"SELECT count(*) FROM quarantine.readings WHERE {_COLLECTED} < $cut AND {_NEEDS_STRIP}",
        {"cut": payload_before, "quoted": QUOTED},
    ).fetchall()
    if stripped:
        con.execute(
            f"""UPDATE quarantine.readings SET payload = ''::BLOB,
                       detail = regexp_replace(detail, $quoted, $mask, 'g'),
                       topic = CASE WHEN reason = 'bad_topic' THEN '' ELSE topic END
                WHERE {_COLLECTED} < $cut AND {_NEEDS_STRIP}""",
            params,
        )
    return int(stripped), int(deleted)


def expire_quarantine_files(
    quarantine_root: Path, payload_before: datetime, record_before: datetime
) -> tuple[int, int, int]:
    """The same expiry in the quarantine files; returns (rows stripped, rows deleted, files rewritten).

    A file is rewritten only if one of its rows changes, and deleted once it has no row left. A
    segment opened after `payload_before` cannot hold an expired row (a message is received after
    its segment was opened), so its file is not read.
    """
    stripped = deleted = rewritten = 0
    if not quarantine_root.is_dir():
        return 0, 0, 0
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        for path in sorted(quarantine_root.rglob("*.parquet")):
            opened = segment_opened_at(path)
            if opened is not None and opened >= payload_before:
                continue
            kept, strip, expired = _expire_table(con, pq.read_table(path), payload_before, record_before)
            if kept is not None:
                _replace_file(path, kept)
                rewritten += 1
            stripped += strip
            deleted += expired
    finally:
        con.close()
    return int(stripped), int(deleted), rewritten


def _expire_table(
    con: duckdb.DuckDBPyConnection, table: pa.Table, payload_before: datetime, record_before: datetime
) -> tuple[pa.Table | None, int, int]:
    """A quarantine file's rows after the expiry (None: unchanged), the rows stripped and deleted."""
    con.register("q", table)
    try:
        params = {"cut": payload_before, "quoted": QUOTED, "mask": MASK}
        [(expired,)] = con.execute(
            f"SELECT count(*) FROM q WHERE {_COLLECTED} < $cut", {"cut": record_before}
        ).fetchall()
        [(strip,)] = con.execute(
            f"SELECT count(*) FROM q WHERE {_COLLECTED} < $cut AND {_NEEDS_STRIP} AND {_COLLECTED} >= $keep",
            {"cut": payload_before, "quoted": QUOTED, "keep": record_before},
        ).fetchall()
        kept = None
        if expired or strip:
            kept = con.sql(
                f"""SELECT * REPLACE ({_STRIPPED}) FROM q
                    WHERE {_COLLECTED} >= $keep AND {_COLLECTED} < $cut
                    UNION ALL BY NAME
                    SELECT * FROM q WHERE {_COLLECTED} >= $cut
                    ORDER BY record_offset, reading_index NULLS FIRST""",
                params=params | {"keep": record_before},
            ).to_arrow_table()
        return kept, int(strip), int(expired)
    finally:
        con.unregister("q")


def _replace_file(path: Path, table: pa.Table) -> None:
    """Write a quarantine file's new rows beside it and rename them over it (delete it if none)."""
    if table.num_rows == 0:
        path.unlink()
        fsync_dir(path.parent)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table.select(quarantine_schema().names).cast(quarantine_schema()), tmp, compression="zstd")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# --- erasure ---------------------------------------------------------------------------------


_DEVICE_IN_WINDOW = (
    "council = $council AND device_id = $device AND ($start IS NULL OR received_at >= $start) "
    "AND ($end IS NULL OR received_at < $end)"
)


@dataclass
class ErasedRows:
    """What an erasure removed from the warehouse, and the staged partitions it changed."""

    quarantine_rows: int = 0
    staged_rows: int = 0
    corrections: int = 0
    partitions: list[tuple[str, str, str]] = field(default_factory=list)


def device_records(
    con: duckdb.DuckDBPyConnection,
    council: str,
    device: str,
    start: datetime | None,
    end: datetime | None,
) -> dict[str, set[int]]:
    """Where the warehouse says the device's records are: segment id -> record offsets.

    From its staged readings and quarantine rows received in the window; corrupt tails (offset
    of no record) are left out.
    """
    window = {"council": council, "device": device, "start": start, "end": end}
    found: dict[str, set[int]] = {}
    queries = [
        f"SELECT segment_id, record_offset FROM staged.{d.domain} WHERE {_DEVICE_IN_WINDOW}"
        for d in DATASETS.values()
    ]
    queries.append(
        f"SELECT segment_id, record_offset FROM quarantine.readings WHERE {_DEVICE_IN_WINDOW} "
        "AND reason <> 'corrupt_record'"
    )
    for query in queries:
        for sid, offset in con.execute(query, window).fetchall():
            found.setdefault(sid, set()).add(int(offset))
    return found


def erase_device_rows(
    con: duckdb.DuckDBPyConnection,
    council: str,
    device: str,
    start: datetime | None,
    end: datetime | None,
    erased_records: dict[str, set[int]],
    now: datetime,
) -> ErasedRows:
    """In one transaction: delete the device's quarantine rows, staged rows and corrections received
    in the window, and the quarantine rows of the erased raw records; version the changed partitions.

    The staged partitions that lose rows are replaced through `civicflow.warehouse.partitions.replace_staged`
    like any other change, so their new versions are exported, judged and published as usual.
    """
    window = {"council": council, "device": device, "start": start, "end": end}
    erased = ErasedRows()
    con.execute("BEGIN TRANSACTION")
    try:
        pairs = [(sid, off) for sid, offsets in sorted(erased_records.items()) for off in sorted(offsets)]
        con.execute("CREATE OR REPLACE TEMP TABLE erased_records (segment_id VARCHAR, record_offset BIGINT)")
        if pairs:
            con.executemany("INSERT INTO erased_records VALUES (?, ?)", [list(p) for p in pairs])
        where_q = (
            f"({_DEVICE_IN_WINDOW}) OR (segment_id, record_offset) IN "
            "(SELECT (segment_id, record_offset) FROM erased_records)"
        )
        [(erased.quarantine_rows,)] = con.execute(
            f"SELECT count(*) FROM quarantine.readings WHERE {where_q}", window
        ).fetchall()
        con.execute(f"DELETE FROM quarantine.readings WHERE {where_q}", window)
        corrections = (
            "council = $council AND device_id = $device AND "
            "($start IS NULL OR old_received_at >= $start OR new_received_at >= $start) AND "
            "($end IS NULL OR old_received_at < $end OR new_received_at < $end)"
        )
        [(erased.corrections,)] = con.execute(
            f"SELECT count(*) FROM staged.corrections WHERE {corrections}", window
        ).fetchall()
        con.execute(f"DELETE FROM staged.corrections WHERE {corrections}", window)
        for dataset in DATASETS.values():
            rows, parts = _erase_staged(con, dataset, window, now)
            erased.staged_rows += rows
            erased.partitions.extend((dataset.domain.value, c, day) for c, day in parts)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return erased


def _erase_staged(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, window: dict, now: datetime
) -> tuple[int, list[tuple[str, str]]]:
    table = f"staged.{dataset.domain}"
    cols = ", ".join(c.name for c in dataset.staged_columns)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE erase_changed AS SELECT DISTINCT council, event_date FROM {table} "
        f"WHERE {_DEVICE_IN_WINDOW}",
        window,
    )
    parts = con.execute("SELECT council, event_date::VARCHAR FROM erase_changed ORDER BY ALL").fetchall()
    if not parts:
        return 0, []
    [(rows,)] = con.execute(f"SELECT count(*) FROM {table} WHERE {_DEVICE_IN_WINDOW}", window).fetchall()
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE erase_keep AS SELECT {cols} FROM {table}
            WHERE (council, event_date) IN (SELECT (council, event_date) FROM erase_changed)
              AND NOT ({_DEVICE_IN_WINDOW})""",
        window,
    )
    replace_staged(con, dataset, "erase_keep", "erase_changed", now)
    return int(rows), [(c, d) for c, d in parts]


def update_ledger(con: duckdb.DuckDBPyConnection, segment_id: str, sha256: str, erased: int) -> None:
    """A segment rewritten with tombstones: its new digest, and the messages it still holds."""
    con.execute(
        "UPDATE raw.segments SET sha256 = ?, records = greatest(records - ?, 0) WHERE segment_id = ?",
        [sha256, erased, segment_id],
    )


def drop_quarantine_file_rows(
    path: Path,
    council: str,
    device: str,
    start: datetime | None,
    end: datetime | None,
    offsets: Iterable[int],
) -> int:
    """Remove the device's rows received in the window, and those of `offsets`, from a quarantine
    file (rewritten beside and renamed; deleted if nothing is left). Returns the rows removed."""
    if not path.is_file():
        return 0
    kept, gone = _drop_rows(pq.read_table(path), council, device, start, end, offsets)
    if kept is not None:
        _replace_file(path, kept)
    return gone


def _drop_rows(
    table: pa.Table,
    council: str,
    device: str,
    start: datetime | None,
    end: datetime | None,
    offsets: Iterable[int],
) -> tuple[pa.Table | None, int]:
    """A quarantine file's rows without the device's in the window and those of `offsets` (None:
    none of them was there), and how many went."""
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("q", table)
        window = {
            "council": council,
            "device": device,
            "start": start,
            "end": end,
            "offsets": sorted(offsets),
        }
        where = f"({_DEVICE_IN_WINDOW}) OR list_contains($offsets, record_offset)"
        [(gone,)] = con.execute(f"SELECT count(*) FROM q WHERE {where}", window).fetchall()
        if not gone:
            return None, 0
        kept = con.sql(
            f"SELECT * FROM q WHERE NOT ({where}) ORDER BY record_offset, reading_index NULLS FIRST",
            params=window,
        ).to_arrow_table()
        return kept, int(gone)
    finally:
        con.close()


def record_erasure(
    con: duckdb.DuckDBPyConnection,
    *,
    erasure_id: str,
    now: datetime,
    who: str,
    reference: str,
    council: str,
    device: str,
    start: datetime | None,
    end: datetime | None,
    raw_segments: int,
    raw_records: int,
    erased: ErasedRows,
    published_rows: int,
    release_id: str | None,
) -> None:
    """Record an erasure: who, when, what scope and how many records, never the values erased."""
    con.execute(
        "INSERT INTO published.erasures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            erasure_id,
            now,
            who,
            reference,
            council,
            device,
            start,
            end,
            raw_segments,
            raw_records,
            erased.quarantine_rows,
            erased.staged_rows,
            erased.corrections,
            published_rows,
            json.dumps([list(p) for p in erased.partitions]),
            release_id,
        ],
    )


@dataclass(frozen=True)
class ErasureWindow:
    """What an erasure covers for readings decoded after it: a device's messages received from
    `start` (None: its first) until `stop`, the earlier of the window's end and the erasure itself
    (a message received after the erasure is new, and is kept)."""

    council: str
    device_id: str
    start: datetime | None
    stop: datetime
    erased_at: datetime


def erasure_windows(con: duckdb.DuckDBPyConnection) -> list[ErasureWindow]:
    """Every recorded erasure's window (`published.erasures`), oldest first."""
    rows = con.execute(
        """SELECT council, device_id, received_from,
                  least(coalesce(received_to, erased_at), erased_at), erased_at
           FROM published.erasures ORDER BY erased_at, erasure_id"""
    ).fetchall()
    return [ErasureWindow(*row) for row in rows]


def split_erased(table: pa.Table, windows: Iterable[ErasureWindow]) -> tuple[pa.Table, pa.Table]:
    """(rows no erasure covers, rows one does) of readings or quarantine rows (`council`,
    `device_id`, `received_at`).

    A decode that read a segment before an erasure tombstoned it hands its merge readings and
    rejections the erasure already removed everywhere else; the merge drops them with this.
    """
    import pyarrow.compute as pc

    received = table["received_at"]
    # Erasures accumulate over the years; only those of a device present here are worth a pass.
    present = set(pc.unique(table["device_id"]).to_pylist()) if table.num_rows else set()
    covered = None
    for w in windows:
        if w.device_id not in present:
            continue
        hit = pc.and_(pc.equal(table["council"], w.council), pc.equal(table["device_id"], w.device_id))
        if w.start is not None:
            hit = pc.and_(hit, pc.greater_equal(received, pa.scalar(w.start, type=received.type)))
        hit = pc.and_(hit, pc.less(received, pa.scalar(w.stop, type=received.type)))
        covered = hit if covered is None else pc.or_(covered, hit)
    if covered is None:
        return table, table.slice(0, 0)
    covered = pc.fill_null(covered, False)
    return table.filter(pc.invert(covered)), table.filter(covered)


# --- the object store ------------------------------------------------------------------------
#
# With an object store (CIVICFLOW_STORAGE__URL) the listeners' closed segments are at
# `raw/<listener>/<name>.seg` there and staging's quarantine files at
# `quarantine/segments/<segment id>.parquet`; retention and erasure apply the same rules to them
# as to the data root's. An object is read, changed and put back whole (a PUT replaces it in one
# step, so a reader gets the old object or the new one); only objects that change are written.

STORE_RAW = "raw/"
STORE_QUARANTINE = "quarantine/segments/"
STORE_WORKERS = 8
"""Objects read (and rewritten) at once."""
SCRATCH = ".erasure-scratch"
"""Under the data root: where a stored segment is tombstoned (`erase_records` works on a file);
emptied before and after each erasure, so an erasure that crashed leaves it for the next to clear."""


@dataclass(frozen=True)
class StoredObject:
    """A closed raw segment or a quarantine file in the store: its key, its segment and when that
    segment was opened (from its name; None for a name not of the listener's form)."""

    key: str
    segment_id: str
    opened: datetime | None


def _stored(store: Store, prefix: str, suffix: str) -> list[StoredObject]:
    found = []
    for key in store.list(prefix):
        if key.endswith(suffix):
            sid = key.removeprefix(prefix).removesuffix(suffix)
            found.append(StoredObject(key, sid, segment_opened_at(Path(key))))
    return found


def stored_segments(store: Store) -> list[StoredObject]:
    """The closed raw segments in the store, in key order."""
    return _stored(store, STORE_RAW, CLOSED_SUFFIX)


def stored_quarantine_files(store: Store) -> list[StoredObject]:
    """The quarantine files in the store, in key order."""
    return _stored(store, STORE_QUARANTINE, ".parquet")


def in_parallel(work: Callable[[StoredObject], T], objects: Iterable[StoredObject]) -> list[T]:
    """`work` on every object, `STORE_WORKERS` at a time; the results in the objects' order."""
    objects = list(objects)
    if len(objects) <= 1:
        return [work(o) for o in objects]
    with ThreadPoolExecutor(max_workers=STORE_WORKERS) as pool:
        return list(pool.map(work, objects))


def purge_stored_segments(store: Store, staged: set[str], before: datetime) -> list[str]:
    """`purge_raw_segments` in the store: delete the closed segments opened before `before` that the
    ledger says are staged; a segment not yet staged is kept whatever its age. Returns their ids."""
    gone = [
        s
        for s in stored_segments(store)
        if s.opened is not None and s.opened < before and s.segment_id in staged
    ]
    store.delete_many([s.key for s in gone])
    return [s.segment_id for s in gone]


def _read_quarantine(store: Store, key: str) -> pa.Table | None:
    try:
        data = store.get_bytes(key)
    except FileNotFoundError:  # deleted meanwhile (another erasure's or retention's last row)
        return None
    return pq.read_table(pa.BufferReader(data))


def _put_quarantine(store: Store, key: str, table: pa.Table) -> None:
    """Put a quarantine file's new rows back in the store (delete it if none is left)."""
    if table.num_rows == 0:
        store.delete(key)
        return
    sink = pa.BufferOutputStream()
    schema = quarantine_schema()
    pq.write_table(table.select(schema.names).cast(schema), sink, compression="zstd")
    store.put_bytes(key, sink.getvalue().to_pybytes())


def expire_stored_quarantine(
    store: Store, payload_before: datetime, record_before: datetime
) -> tuple[int, int, int]:
    """`expire_quarantine_files` in the store; returns (rows stripped, rows deleted, files rewritten).

    The file of a segment opened after `payload_before` is not read, as on local disk.
    """

    def one(obj: StoredObject) -> tuple[int, int, int]:
        table = _read_quarantine(store, obj.key)
        if table is None:
            return 0, 0, 0
        con = duckdb.connect(":memory:")
        try:
            con.execute("SET TimeZone = 'UTC'")
            kept, strip, expired = _expire_table(con, table, payload_before, record_before)
        finally:
            con.close()
        if kept is None:
            return strip, expired, 0
        _put_quarantine(store, obj.key, kept)
        return strip, expired, 1

    due = [q for q in stored_quarantine_files(store) if q.opened is None or q.opened < payload_before]
    done = in_parallel(one, due)
    return sum(d[0] for d in done), sum(d[1] for d in done), sum(d[2] for d in done)


def drop_stored_quarantine_rows(
    store: Store,
    key: str,
    council: str,
    device: str,
    start: datetime | None,
    end: datetime | None,
    offsets: Iterable[int],
) -> int:
    """`drop_quarantine_file_rows` for a quarantine file in the store (put back without the rows,
    deleted if nothing is left; untouched if none of them was there). Returns the rows removed."""
    table = _read_quarantine(store, key)
    if table is None:
        return 0
    kept, gone = _drop_rows(table, council, device, start, end, offsets)
    if kept is not None:
        _put_quarantine(store, key, kept)
    return gone


@contextmanager
def erasure_scratch(data_root: Path) -> Iterator[Path]:
    """An empty `SCRATCH` directory under the data root for the erasure's copies, removed after."""
    scratch = data_root / SCRATCH
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def erase_stored_records(
    store: Store, obj: StoredObject, offsets: set[int], scratch: Path
) -> tuple[str, int]:
    """Tombstone the records at `offsets` of a segment in the store; return (sha256, how many).

    The segment is copied into `scratch`, tombstoned there by `civicflow.warehouse.segments.erase_records`
    (the format is the local one, byte for byte) and put back at its key if a record changed;
    the copy is deleted either way.
    """
    try:
        data = store.get_bytes(obj.key)
    except FileNotFoundError:  # deleted since it was listed (its retention period ended)
        return "", 0
    path = scratch / f"{obj.segment_id}{CLOSED_SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_bytes(data)
        digest, erased = erase_records(path, offsets)
        if erased:
            store.put_bytes(obj.key, path.read_bytes())
        return digest, erased
    finally:
        path.unlink(missing_ok=True)


def compact(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Rewrite the warehouse file so that no freed block keeps deleted or overwritten values.

    DuckDB reuses freed blocks but does not clear them, so deleted rows' bytes stay in the file
    until overwritten. The database is copied into a new file beside it (only live data is
    copied), fsynced and renamed over the old one while `con` still holds the writer's lock; `con`
    must not write afterwards: close it.
    """
    fresh = path.with_name(f".{path.name}.compact")
    for leftover in (fresh, fresh.with_name(fresh.name + ".wal")):
        leftover.unlink(missing_ok=True)
    con.execute("CHECKPOINT")
    [(name,)] = con.execute("SELECT current_database()").fetchall()
    con.execute(f"ATTACH '{fresh}' AS civicflow_compact")
    try:
        con.execute(f'COPY FROM DATABASE "{name}" TO civicflow_compact')
    finally:
        con.execute("DETACH civicflow_compact")
    with fresh.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(fresh, path)
    fsync_dir(path.parent)
