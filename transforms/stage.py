"""Stage closed raw segments: decode, de-duplicate, replace partitions, quarantine the rest.

Exactly once: every segment is recorded in `raw.segments` in the same transaction that loads its
readings, so a segment is staged once however often the task runs. Idempotent as well: loading
replaces whole partitions (council x event date) with the de-duplicated union of what was there
and what arrived, so staging the same readings twice changes nothing.

De-duplication rule (docs/warehouse.md): readings share a natural key (council, device_id,
observed_at, plus lane_id for traffic). The value of the most recently received reading for a key
wins; among readings with that same value, the first received is kept, so a redelivery or a replay
never changes lineage. `msg_id` takes no part: two readings with one msg_id and different
observed_at are two readings. Every change of value for a key is recorded in `staged.corrections`
in the transaction that replaces the partition.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from civicflow.contract import DATASETS, Dataset, Domain, Reason
from civicflow.health import STAGED_MARKER
from civicflow.registry import Registry, RegistryError
from civicflow.transforms.decode import Limits, Rejection
from civicflow.transforms.fast import Part, SegmentDecoder, quarantine_row
from civicflow.transforms.lorawan import registry_problems
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import (
    ExportState,
    PartitionRef,
    append_staged,
    export_states,
    files_of,
    mark_exported,
    replace_staged,
    to_export,
)
from civicflow.warehouse.segment_columns import scan_columns
from civicflow.warehouse.segments import (
    CLOSED_SUFFIX,
    RawRecord,
    SegmentCorrupt,
    erase_records,
    fsync_dir,
    list_closed_segments,
    tombstone_bytes,
)
from civicflow.warehouse.tables import arrow_schema, quarantine_schema

if TYPE_CHECKING:  # pyiceberg and boto3 are imported only where staging runs on many workers
    from civicflow.warehouse.lake import Lake
    from civicflow.warehouse.storage import Store

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What one staging run did; returned to Airflow as the task's XCom."""

    segments: int = 0
    records: int = 0
    readings: int = 0
    duplicates: int = 0
    corrections: int = 0
    quarantined: Counter = field(default_factory=Counter)
    changed_partitions: list[tuple[str, str, str]] = field(default_factory=list)
    erased: int = 0
    """Readings and rejections a merge dropped because an erasure that finished after their
    segment was decoded covers them (`civicflow.warehouse.privacy.split_erased`)."""

    def to_dict(self) -> dict:
        return {
            "segments": self.segments,
            "records": self.records,
            "readings": self.readings,
            "duplicates": self.duplicates,
            "corrections": self.corrections,
            "quarantined": dict(sorted(self.quarantined.items())),
            "changed_partitions": [list(p) for p in self.changed_partitions],
            "erased": self.erased,
        }


def segment_id(layout: Layout, path: Path) -> str:
    return path.relative_to(layout.raw).as_posix().removesuffix(CLOSED_SUFFIX)


@dataclass(frozen=True)
class RawSegment:
    """A closed raw segment wherever it is: its id and how to read its bytes."""

    id: str
    where: str
    read: Callable[[], bytes]


class RawZone:
    """Where staging finds closed raw segments and keeps their quarantine files: under the data
    root, or in the object store (`CIVICFLOW_STORAGE__URL`) that the listeners upload to, at the
    same keys (`raw/<listener>/<segment>.seg`, `quarantine/segments/<segment id>.parquet`)."""

    def __init__(self, layout: Layout, store: Store | None = None) -> None:
        self.layout = layout
        self.store = store if store is not None and not store.is_local else None

    def closed(self) -> list[RawSegment]:
        if self.store is None:
            return [
                RawSegment(segment_id(self.layout, p), str(p), p.read_bytes)
                for p in list_closed_segments(self.layout.raw)
            ]
        store = self.store
        return [
            RawSegment(
                key.removeprefix("raw/").removesuffix(CLOSED_SUFFIX),
                store.location(key),
                partial(store.get_bytes, key),
            )
            for key in store.list("raw/")
            if key.endswith(CLOSED_SUFFIX)
        ]

    def _quarantine_key(self, seg: str) -> str:
        return self.layout.quarantine_file(seg).relative_to(self.layout.root).as_posix()

    def write_quarantine(self, seg: str, table: pa.Table, *, durable: bool = False) -> None:
        """Write a segment's quarantine file; `durable`: on disk before this returns (an erasure's
        rewrite, which no later run would redo)."""
        if self.store is None:
            path = self.layout.quarantine_file(seg)
            _write_parquet(table, path)
            if durable:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                fsync_dir(path.parent)
            return
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.store.put_bytes(self._quarantine_key(seg), sink.getvalue().to_pybytes())

    def read_quarantine(self, seg: str) -> pa.Table | None:
        if self.store is None:
            path = self.layout.quarantine_file(seg)
            return pq.read_table(path, schema=quarantine_schema()) if path.exists() else None
        try:
            data = self.store.get_bytes(self._quarantine_key(seg))
        except FileNotFoundError:
            return None
        return pq.read_table(pa.BufferReader(data), schema=quarantine_schema())

    def delete_quarantine(self, seg: str) -> None:
        """Delete a segment's quarantine file, durably (an erasure's, which no later run would redo)."""
        if self.store is None:
            path = self.layout.quarantine_file(seg)
            path.unlink(missing_ok=True)
            if path.parent.is_dir():
                fsync_dir(path.parent)
        else:
            self.store.delete(self._quarantine_key(seg))

    def tombstone(self, seg: str, offsets: set[int]) -> tuple[str, int] | None:
        """Tombstone the records at `offsets` of a closed segment (those an erasure covers, where it
        did not already; none: only look): the segment's sha256 and live records after, None if
        it is gone (retention deleted it). A stored segment is changed in memory and put back."""
        if self.store is None:
            path = self.layout.raw / f"{seg}{CLOSED_SUFFIX}"
            if not path.is_file():
                return None
            digest, _ = erase_records(path, offsets)
            return digest, scan_columns(path.read_bytes()).live
        key = f"raw/{seg}{CLOSED_SUFFIX}"
        try:
            data = self.store.get_bytes(key)
        except FileNotFoundError:
            return None
        data, erased = tombstone_bytes(data, offsets, Path(key))
        if erased:
            self.store.put_bytes(key, data)
        return hashlib.sha256(data).hexdigest(), scan_columns(data).live


def pending_segments(layout: Layout, con: duckdb.DuckDBPyConnection) -> list[Path]:
    """Closed segments not yet recorded in the ledger, oldest first."""
    done = {row[0] for row in con.execute("SELECT segment_id FROM raw.segments").fetchall()}
    return [p for p in list_closed_segments(layout.raw) if segment_id(layout, p) not in done]


@dataclass
class _Batch:
    readings: dict[Domain, list[dict]] = field(default_factory=dict)
    quarantine: list[dict] = field(default_factory=list)
    ledger: list[dict] = field(default_factory=list)


def _quarantine_row(seg: str, record: RawRecord, rej: Rejection, now: datetime) -> dict:
    return quarantine_row(seg, record, rej, now)


def _decode_parts(
    layout: Layout,
    path: Path | RawSegment,
    decoder: SegmentDecoder,
    now: datetime,
    result: StageResult,
    ledger: list[dict],
    quarantine: list[dict],
    zone: RawZone | None = None,
) -> Iterator[Part]:
    """Decode one segment, yielding its readings in parts as Arrow tables.

    The segment is read once (hashed and scanned from the same bytes). Once every part has been
    yielded, its quarantine rows are added to `quarantine` (and written to its quarantine file)
    and its ledger row to `ledger`: the caller records them in the transaction that loads its
    readings, so a segment is never half-recorded.
    """
    if isinstance(path, RawSegment):
        seg, data = path.id, path.read()
    else:
        seg, data = segment_id(layout, path), path.read_bytes()
    cols = scan_columns(data)
    readings = rejected = 0
    quarantine_rows: list[dict] = []
    for part in decoder.decode(cols, seg, now):
        quarantine_rows.extend(part.quarantine)
        readings += part.readings
        rejected += part.rejected
        yield part
    if cols.why is not None:
        tail = data[cols.end :]
        err = SegmentCorrupt(path if isinstance(path, Path) else Path(path.where), cols.end, cols.why)
        log.error("%s; the bytes from there on are quarantined as corrupt_record", err)
        torn = RawRecord(offset=err.offset, topic=b"", payload=tail, received_at_ns=0)
        quarantine_rows.append(
            _quarantine_row(seg, torn, Rejection(Reason.CORRUPT_RECORD, str(err), tail), now)
        )
        rejected += 1
    quarantine.extend(quarantine_rows)
    if quarantine_rows:
        table = pa.Table.from_pylist(quarantine_rows, schema=quarantine_schema())
        if zone is not None:
            zone.write_quarantine(seg, table)
        else:
            _write_parquet(table, layout.quarantine_file(seg))
    ledger.append(
        {
            "segment_id": seg,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "records": cols.live,
            "readings": readings,
            "rejected": rejected,
            "staged_at": now,
        }
    )
    result.segments += 1
    result.records += cols.live
    result.readings += readings
    result.quarantined.update(r["reason"] for r in quarantine_rows)


def _decode_segment(
    layout: Layout,
    path: Path,
    limits: Limits,
    registry: Registry | None,
    now: datetime,
    batch: _Batch,
    result: StageResult,
) -> None:
    """Decode one segment into `batch` as row dicts (the interface transforms/replay.py uses)."""
    decoder = SegmentDecoder(limits, registry)
    try:
        for part in _decode_parts(layout, path, decoder, now, result, batch.ledger, batch.quarantine):
            for domain, tables in part.tables.items():
                rows = batch.readings.setdefault(domain, [])
                for table in tables:
                    rows.extend(table.to_pylist())
    finally:
        decoder.close()


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _merge_domain(
    con: duckdb.DuckDBPyConnection,
    dataset: Dataset,
    rows: list[dict] | pa.Table,
    now: datetime,
    parts: OpenParts | None = None,
) -> tuple[int, list[tuple[str, date]]]:
    """Replace every partition the rows touch; return duplicates collapsed and changed partitions.

    `rows` are staged rows, as an Arrow table of the dataset's staged columns or as dicts. When no
    natural key occurs twice among them and none is staged already (readings arriving in time
    order, the common case), the merge is an append: the rows are inserted as they are, which
    is what the full merge below would produce for such rows, without rewriting the partitions.
    """
    table = f"staged.{dataset.domain}"
    columns = [c.name for c in dataset.staged_columns]
    key = ", ".join(dataset.natural_key)
    values = ", ".join(c.name for c in dataset.value_columns)
    schema = arrow_schema(dataset.staged_columns)
    if isinstance(rows, pa.Table):
        incoming = rows.select(columns).cast(schema)
    else:
        incoming = pa.Table.from_pylist(rows, schema=schema)
    con.register("incoming", incoming)
    con.execute("CREATE OR REPLACE TEMP TABLE affected AS SELECT DISTINCT council, event_date FROM incoming")
    if _only_new_keys(con, dataset, table):
        result = _append_domain(con, dataset, table, columns, now)
        if parts is not None:
            con.register("incoming", incoming)
            try:
                parts.add(con, dataset, "incoming", "affected")
            finally:
                con.unregister("incoming")
        return result
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE existing AS
        SELECT t.* FROM {table} t JOIN affected a USING (council, event_date)""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE cand AS
        SELECT *, md5(CAST(struct_pack({values}, lat, lon) AS VARCHAR)) AS value_hash
        FROM (SELECT {", ".join(columns)} FROM existing
              UNION ALL SELECT {", ".join(columns)} FROM incoming)""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE merged AS
        WITH ranked AS (
            SELECT *, first_value(value_hash) OVER (
                PARTITION BY {key}
                ORDER BY received_at DESC, segment_id DESC, record_offset DESC,
                         reading_index DESC) AS winning_hash
            FROM cand
        )
        SELECT {", ".join(columns)} FROM ranked
        WHERE value_hash = winning_hash
        QUALIFY row_number() OVER (
            PARTITION BY {key}
            ORDER BY received_at, segment_id, record_offset, reading_index) = 1""")
    [(n_existing,)] = con.execute("SELECT count(*) FROM existing").fetchall()
    [(n_merged,)] = con.execute("SELECT count(*) FROM merged").fetchall()
    duplicates = n_existing + incoming.num_rows - n_merged
    identity = "council, event_date, device_id, observed_at, segment_id, record_offset, reading_index"
    changed = con.execute(f"""
        SELECT council, event_date FROM (
            SELECT council, event_date FROM (SELECT {identity} FROM merged
                                             EXCEPT SELECT {identity} FROM existing)
            UNION
            SELECT council, event_date FROM (SELECT {identity} FROM existing
                                             EXCEPT SELECT {identity} FROM merged)
        ) GROUP BY ALL ORDER BY ALL""").fetchall()
    if changed:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE changed AS SELECT * FROM (VALUES "
            + ", ".join("(?, ?::DATE)" for _ in changed)
            + ") v(council, event_date)",
            [x for pair in changed for x in pair],
        )
        replace_staged(con, dataset, "merged", "changed", now)
        if parts is not None:
            parts.discard(dataset.domain.value, changed)
    con.unregister("incoming")
    return duplicates, [(c, d) for c, d in changed]


def _only_new_keys(con: duckdb.DuckDBPyConnection, dataset: Dataset, table: str) -> bool:
    """Whether every incoming natural key is distinct and not staged yet (NULL lane ids equal)."""
    key = ", ".join(dataset.natural_key)
    [(repeated,)] = con.execute(
        f"SELECT count(*) - (SELECT count(*) FROM (SELECT DISTINCT {key} FROM incoming)) FROM incoming"
    ).fetchall()
    if repeated:
        return False
    same = " AND ".join(f"i.{k} IS NOT DISTINCT FROM t.{k}" for k in dataset.natural_key)
    [(staged,)] = con.execute(f"""
        SELECT count(*) FROM incoming i
        JOIN (SELECT t.* FROM {table} t JOIN affected a USING (council, event_date)) t
        ON {same}""").fetchall()
    return staged == 0


def _append_domain(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, table: str, columns: list[str], now: datetime
) -> tuple[int, list[tuple[str, date]]]:
    """Insert readings with new keys: every partition they touch changes, nothing is corrected."""
    cols = ", ".join(columns)
    # An empty candidate set: `_record_corrections` finds no change of value to record.
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE cand AS SELECT {cols}, ''::VARCHAR AS value_hash FROM incoming LIMIT 0"
    )
    changed = con.execute("SELECT council, event_date FROM affected ORDER BY ALL").fetchall()
    append_staged(con, dataset, "incoming", "affected", now)
    con.unregister("incoming")
    return 0, [(c, d) for c, d in changed]


def _record_corrections(con: duckdb.DuckDBPyConnection, dataset: Dataset, now: datetime) -> int:
    """Record in `staged.corrections` each change of value among the candidates `_merge_domain` left.

    The candidates of a key (its staged row and the arriving readings) are taken in the order they
    were received; each time the value differs from the one before, the earlier value was corrected
    by the later. Old and new are the first received copy of each value, as the de-duplication rule
    keeps them, so staging readings one segment at a time or all at once records the same changes.
    Returns how many were recorded.
    """
    key = ", ".join(dataset.natural_key)
    values = ", ".join(c.name for c in dataset.value_columns)
    lane = "lane_id" if "lane_id" in dataset.natural_key else "CAST(NULL AS BIGINT)"
    order = "ORDER BY received_at, segment_id, record_offset, reading_index"
    [(recorded,)] = con.execute(
        f"""
        INSERT INTO staged.corrections
        WITH ordered AS (
            SELECT *, lag(value_hash) OVER (PARTITION BY {key} {order}) AS previous_hash
            FROM cand
        ), changes AS (
            SELECT *, to_json(struct_pack({values}, lat, lon)) AS value_json
            FROM ordered WHERE previous_hash IS DISTINCT FROM value_hash
        ), pairs AS (
            SELECT *,
                   lag(struct_pack(value_hash, value_json, segment_id, record_offset, reading_index,
                                   received_at)) OVER (PARTITION BY {key} {order}) AS old
            FROM changes
        )
        SELECT ?, council, event_date, device_id, {lane}, observed_at,
               old.value_hash, value_hash, old.value_json, value_json,
               old.segment_id, old.record_offset, old.reading_index, old.received_at,
               segment_id, record_offset, reading_index, received_at, ?
        FROM pairs WHERE old IS NOT NULL
        ORDER BY council, event_date, device_id, observed_at, received_at""",
        [dataset.domain.value, now],
    ).fetchall()
    return recorded


CLOSE_AFTER = timedelta(hours=2)
"""A partition's day is open until this long after it ends (UTC): until then a merge that only adds
readings to it writes them as one more file; once closed it is compacted into one file."""

PartitionKey = tuple[str, str, date]  # domain, council, event date


def is_closed(day: date, now: datetime, close_after: timedelta = CLOSE_AFTER) -> bool:
    """Whether a partition of `day` is closed at `now`: its day ended `close_after` ago or more."""
    return now >= datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC) + close_after


@dataclass
class OpenParts:
    """The files merges of this run wrote for partitions of open days whose new versions only added
    readings: each such merge writes its new readings as one more file of the partition, before
    its transaction commits; `export_partitions` records them, after it.

    Without it (or for a closed day, a replaced partition, a version whose predecessor is not
    exported) the partition is written whole by `export_partitions`.
    """

    layout: Layout
    now: datetime
    close_after: timedelta = CLOSE_AFTER
    files: dict[PartitionKey, ExportState] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)  # not recorded yet

    def rollback(self) -> None:
        """The transaction the files were written for did not commit: delete them."""
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written.clear()
        self.files.clear()

    def add(self, con: duckdb.DuckDBPyConnection, dataset: Dataset, source: str, affected: str) -> None:
        """After `source`'s rows were appended to `staged.<domain>` and the partitions in
        `affected` versioned: write them as one more file of each open partition that allows it."""
        domain = dataset.domain.value
        rows = con.execute(
            f"SELECT council, event_date, version, exported_version, files FROM staged.partitions "
            f"JOIN {affected} USING (council, event_date) WHERE domain = ?",
            [domain],
        ).fetchall()
        days: dict[date, list[tuple[str, int]]] = {}
        states: dict[PartitionKey, ExportState] = {}
        for council, day, version, exported, names in rows:
            key = (domain, council, day)
            state = self.files.get(key) or (exported, files_of(exported, names))
            if state[0] == version - 1 and state[1] and not is_closed(day, self.now, self.close_after):
                days.setdefault(day, []).append((council, version))
                states[key] = state
            else:
                self.files.pop(key, None)
        for day, partitions in sorted(days.items()):
            written = _write_day(con, self.layout, dataset, day, partitions, states, source=source)
            self.written += [
                self.layout.staged_file(domain, r.council, day, n[-1]) for r, n in written.items()
            ]
            self.files.update(
                ((domain, ref.council, day), (ref.version, names)) for ref, names in written.items()
            )

    def discard(self, domain: str, partitions: Iterable[tuple[str, date]]) -> None:
        """Partitions replaced whole: `export_partitions` writes them whole."""
        for council, day in partitions:
            self.files.pop((domain, council, day), None)


def export_partitions(
    con: duckdb.DuckDBPyConnection, layout: Layout, parts: OpenParts | None = None
) -> list[Path]:
    """Write the Parquet files of every staged partition whose current version is not exported.

    A version whose new readings a merge wrote as one more file (`parts`) is recorded with it;
    any other is written whole, as one new file. A partition's files are recorded in
    `staged.partitions` once they are in place, and only then are files it no longer names
    deleted, so a reader never sees a partition's rows twice or half.
    """
    days: dict[tuple[str, date], list[tuple[str, int]]] = {}
    extended: dict[PartitionRef, list[str]] = {}
    for ref in to_export(con):
        state = parts.files.get((ref.domain, ref.council, ref.event_date)) if parts is not None else None
        if state is not None and state[0] == ref.version:
            extended[ref] = state[1]
        else:
            days.setdefault((ref.domain, ref.event_date), []).append((ref.council, ref.version))
    mark_exported(con, extended, extended)
    if parts is not None:
        parts.files.clear()
        parts.written.clear()
    return [
        layout.staged_file(r.domain, r.council, r.event_date, names[-1]) for r, names in extended.items()
    ] + _write_whole(con, layout, days)


def compact_closed(
    con: duckdb.DuckDBPyConnection, layout: Layout, now: datetime, close_after: timedelta = CLOSE_AFTER
) -> list[Path]:
    """Write every closed partition that has several files as one file again (same version).

    An open day's merges leave one file each; once the day closes its readings are compacted. A
    late reading for a closed day makes a new version, written whole by `export_partitions`.
    """
    days: dict[tuple[str, date], list[tuple[str, int]]] = {}
    for (domain, council, day), (exported, files) in sorted(export_states(con).items()):
        if exported is not None and len(files) > 1 and is_closed(day, now, close_after):
            days.setdefault((domain, day), []).append((council, exported))
    return _write_whole(con, layout, days)


def _write_whole(
    con: duckdb.DuckDBPyConnection, layout: Layout, days: dict[tuple[str, date], list[tuple[str, int]]]
) -> list[Path]:
    """Write these partitions whole from `staged.<domain>` as one new file each, record them, and
    delete every other file in their directories."""
    if not days:
        return []
    states = export_states(con)
    written = []
    for (domain, day), partitions in days.items():
        files = _write_day(con, layout, DATASETS[Domain(domain)], day, partitions, states)
        mark_exported(con, files, files)
        for ref, names in files.items():
            directory = layout.staged_file(domain, ref.council, day).parent
            for path in directory.glob("part-*.parquet*"):
                if path.name not in names:
                    path.unlink(missing_ok=True)
            written.append(directory / names[0])
    return written


def _write_day(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    dataset: Dataset,
    day: date,
    partitions: list[tuple[str, int]],
    states: dict[PartitionKey, ExportState],
    source: str | None = None,
) -> dict[PartitionRef, list[str]]:
    """Write one day's partitions of a dataset, each as one new file: whole from
    `staged.<domain>`, or (`source`) that relation's rows for it, added to its files.
    Returns each partition's files (the new one last); records nothing.

    One query reads the day's partitions, sorted by council and then in the file's order, so the
    table is scanned once per day rather than once per partition; each council's slice is written
    by a pool of two threads (pyarrow encodes and compresses without the GIL).
    """
    domain = dataset.domain.value
    cols = ", ".join(c.name for c in dataset.staged_columns)
    # device_id, observed_at, then the rest of the natural key (lane_id): a total order, so
    # the file does not depend on the order rows were inserted in
    extra = [k for k in dataset.natural_key if k not in ("council", "device_id", "observed_at")]
    order = ", ".join(["council", "device_id", "observed_at", *extra])
    councils = [c for c, _ in partitions]
    query = (
        f"SELECT {cols} FROM {source or f'staged.{domain}'} WHERE event_date = $day "
        f"AND list_contains($councils, council) ORDER BY {order}"
    )
    rows = con.sql(query, params={"day": day, "councils": councils}).to_arrow_table()
    if source is not None:  # the types of staged.<domain>, whatever the relation's
        rows = rows.cast(con.sql(f"SELECT {cols} FROM staged.{domain} LIMIT 0").to_arrow_table().schema)
    starts = dict(zip(*_runs(rows.column("council")), strict=True))
    files: dict[PartitionRef, list[str]] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = []
        for council, version in partitions:
            start, length = starts.get(council, (0, 0))
            have = states.get((domain, council, day), (None, []))[1]
            name = _next_file(have)
            path = layout.staged_file(domain, council, day, name)
            jobs.append(pool.submit(_write_parquet, rows.slice(start, length).combine_chunks(), path))
            files[PartitionRef(domain, council, day, version)] = [*have, name] if source else [name]
        for job in jobs:
            job.result()
    return files


def _next_file(files: list[str]) -> str:
    """`part-<n>.parquet`, n one more than any of the partition's files (0 for its first)."""
    numbers = [int(f.removeprefix("part-").removesuffix(".parquet")) for f in files]
    return f"part-{max(numbers, default=-1) + 1}.parquet"


def _runs(sorted_values: pa.ChunkedArray) -> tuple[list[str], list[tuple[int, int]]]:
    """The distinct values of a sorted column and the (start, length) of each one's run."""
    if len(sorted_values) == 0:  # a day whose partitions were all emptied (erasure, replay)
        return [], []
    counts = pc.value_counts(sorted_values)  # in order of first appearance: sorted
    values = counts.field("values").to_pylist()
    lengths = counts.field("counts").to_numpy()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return values, [(int(a), int(k)) for a, k in zip(starts, lengths, strict=True)]


def mark_staged(layout: Layout, con: duckdb.DuckDBPyConnection) -> None:
    """Tell each listener how far staging has got, for its closed-segment backlog metric.

    Writes `<raw>/<listener>/.staged-through` with the name of the newest segment in the ledger.
    """
    rows = con.execute("""
        SELECT split_part(segment_id, '/', 1) AS listener, max(segment_id) FROM raw.segments GROUP BY 1
    """).fetchall()
    for listener, newest in rows:
        directory = layout.raw / listener
        if directory.is_dir():
            marker = directory / STAGED_MARKER
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(newest.split("/", 1)[1] + CLOSED_SUFFIX + "\n")
            os.replace(tmp, marker)


def stage_segments(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    limits: Limits,
    *,
    registry: Registry | None = None,
    now: datetime | None = None,
    max_readings_per_txn: int = 500_000,
    fast: bool = True,
    close_after: timedelta = CLOSE_AFTER,
) -> StageResult:
    """Stage every closed raw segment not yet in the ledger; return what happened.

    `registry` maps LoRaWAN devices to councils and checks registered councils' devices
    (docs/mqtt-contract.md, Device registry); without it LoRaWAN uplinks are quarantined.
    `fast` lets DuckDB decode the native readings it can prove valid (transforms/fast.py);
    False decodes every record with `decode_message`, with the same results. A partition's day
    is open until `close_after` after it ends: until then new readings are one more file of it.
    """
    if registry is not None and (problems := registry_problems(registry)):
        raise RegistryError("device registry does not match the decoding profiles: " + "; ".join(problems))
    now = now or datetime.now(tz=UTC)
    result = StageResult()
    changed: set[tuple[str, str, date]] = set()
    todo = pending_segments(layout, con)
    decoder = SegmentDecoder(limits, registry, fast=fast)
    open_parts = OpenParts(layout, now, close_after)

    def merge(pending: dict[Domain, list[pa.Table]]) -> None:
        for domain, tables in sorted(pending.items()):
            incoming = pa.concat_tables(tables)
            tables.clear()
            dups, parts = _merge_domain(con, DATASETS[domain], incoming, now, open_parts)
            del incoming
            result.corrections += _record_corrections(con, DATASETS[domain], now)
            result.duplicates += dups
            changed.update((domain.value, c, d) for c, d in parts)
        pending.clear()

    try:
        while todo:
            # One transaction takes whole segments until it holds max_readings_per_txn readings.
            # Their readings are merged whenever that many are waiting, even within a segment,
            # so memory is bounded by readings, not segments; the ledger and quarantine rows of
            # each segment go in with its readings.
            ledger: list[dict] = []
            quarantine: list[dict] = []
            pending: dict[Domain, list[pa.Table]] = {}
            waiting = in_txn = 0
            con.execute("BEGIN TRANSACTION")
            try:
                while todo and in_txn < max_readings_per_txn:
                    path = todo.pop(0)
                    for part in _decode_parts(layout, path, decoder, now, result, ledger, quarantine):
                        for domain, tables in part.tables.items():
                            pending.setdefault(domain, []).extend(tables)
                            rows = sum(t.num_rows for t in tables)
                            waiting += rows
                            in_txn += rows
                        if waiting >= max_readings_per_txn:
                            merge(pending)
                            waiting = 0
                merge(pending)
                if quarantine:
                    qt = pa.Table.from_pylist(quarantine, schema=quarantine_schema())
                    con.register("q_incoming", qt)
                    con.execute("INSERT INTO quarantine.readings SELECT * FROM q_incoming")
                    con.unregister("q_incoming")
                con.register("ledger", pa.Table.from_pylist(ledger))
                con.execute(
                    "INSERT INTO raw.segments SELECT segment_id, bytes, sha256, records, "
                    "readings, rejected, staged_at FROM ledger"
                )
                con.unregister("ledger")
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                open_parts.rollback()
                raise
    finally:
        decoder.close()
    export_partitions(con, layout, open_parts)
    compact_closed(con, layout, now, close_after)
    mark_staged(layout, con)
    result.changed_partitions = sorted((d, c, day.isoformat()) for d, c, day in changed)
    log.info(
        "staged %d segments: %d records, %d readings, %d duplicates, %d corrections, quarantined %s",
        result.segments,
        result.records,
        result.readings,
        result.duplicates,
        result.corrections,
        dict(result.quarantined),
    )
    return result


# -- Staging on many workers: shards decode into Iceberg increments, one step merges them ----------


_SEQUENCED = re.compile(r"(?P<listener>.+)/[^/]*-(?P<seq>\d+)")  # <listener>/<stamp>-<sequence>


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def shard_of(segment: str, shards: int) -> int:
    """The staging shard a segment belongs to, the same for every worker.

    A listener numbers its segments in sequence (ids `<listener>/<stamp>-<sequence>`), so its consecutive
    segments go to consecutive shards, round-robin from a shard chosen by a hash of the listener:
    every shard gets an even share of each listener's segments, which a hash of each segment's id
    gives only on average (41 segments hashed 23/18). Any other id is hashed.
    """
    match = _SEQUENCED.fullmatch(segment)
    if match is None:
        return _stable_hash(segment) % shards
    return (_stable_hash(match["listener"]) + int(match["seq"])) % shards


def _to_increment(domain: Domain, table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A dataset's staged rows with every column of `staged.increments` (the others null)."""
    columns = []
    for f in schema:
        if f.name == "domain":
            columns.append(pa.array([domain.value] * table.num_rows, pa.string()))
        elif f.name in table.column_names:
            columns.append(table.column(f.name).cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def decode_shard(
    layout: Layout,
    lake: Lake,
    limits: Limits,
    *,
    shard: int = 0,
    shards: int = 1,
    registry: Registry | None = None,
    now: datetime | None = None,
    max_readings_per_commit: int = 500_000,
    fast: bool = True,
    store: Store | None = None,
) -> StageResult:
    """Decode the closed raw segments of one shard not yet staged; append them to `staged.increments`.

    Many workers run this at once, one per shard. Each commit takes whole segments (about
    `max_readings_per_commit` readings) and carries their ledger rows, so a segment is staged
    exactly once even when two workers take it (a task retried while its first attempt still runs,
    or a change in the number of shards): the later commit leaves it out (warehouse/lake.py).
    Quarantine rows are written to each segment's quarantine file before its commit.
    """
    from civicflow.warehouse.lake import LedgerRow, arrow_schema, increment_columns

    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not one of 0..{shards - 1}")
    if registry is not None and (problems := registry_problems(registry)):
        raise RegistryError("device registry does not match the decoding profiles: " + "; ".join(problems))
    now = now or datetime.now(tz=UTC)
    result = StageResult()
    zone = RawZone(layout, store)
    staged = lake.staged_segments()
    todo = [s for s in zone.closed() if s.id not in staged and shard_of(s.id, shards) == shard]
    schema = arrow_schema(increment_columns())
    decoder = SegmentDecoder(limits, registry, fast=fast)
    name = f"{shard}/{shards}"
    try:
        while todo:
            ledger: list[dict] = []
            # grouped by dataset, in the order of the increments' partitions: no sort to write them
            parts: dict[Domain, list[pa.Table]] = {d: [] for d in sorted(DATASETS, key=lambda d: d.value)}
            readings = 0
            while todo and readings < max_readings_per_commit:
                path = todo.pop(0)
                for part in _decode_parts(layout, path, decoder, now, result, ledger, [], zone):
                    for domain, tables in part.tables.items():
                        for table in tables:
                            parts[domain].append(_to_increment(domain, table, schema))
                            readings += table.num_rows
            tables = [t for domain_parts in parts.values() for t in domain_parts]
            outcome = lake.append(
                pa.concat_tables(tables) if tables else schema.empty_table(),
                [LedgerRow(**row) for row in ledger],
                shard=name,
            )
            if outcome.already_staged:
                log.warning(
                    "shard %s: %d segments were staged by another worker first; left out: %s",
                    name,
                    len(outcome.already_staged),
                    ", ".join(outcome.already_staged),
                )
    finally:
        decoder.close()
    log.info(
        "shard %s decoded %d segments: %d records, %d readings, quarantined %s",
        name,
        result.segments,
        result.records,
        result.readings,
        dict(result.quarantined),
    )
    return result


def _by_domain(rows: pa.Table) -> Iterator[tuple[Domain, pa.Table]]:
    """Each run of one dataset's readings, as a slice (no copy): an increment's files each hold
    one dataset (or, written before, runs sorted by dataset)."""
    if rows.num_rows == 0:
        return
    domains = rows.column("domain").combine_chunks()
    changes = np.flatnonzero(~pc.equal(domains[1:], domains[:-1]).to_numpy(zero_copy_only=False)) + 1
    bounds = [0, *changes.tolist(), rows.num_rows]
    for start, stop in zip(bounds, bounds[1:], strict=False):
        yield Domain(domains[start].as_py()), rows.slice(start, stop - start)


@dataclass
class ErasedFrom:
    """What a merge dropped of one segment because an erasure covers it."""

    offsets: set[int] = field(default_factory=set)
    readings: int = 0
    rejected: int = 0


def _drop_erased(table: pa.Table, windows, erased: dict[str, ErasedFrom], kind: str) -> pa.Table:
    """`table` without the rows an erasure covers, noting each dropped row under its segment."""
    from civicflow.warehouse.privacy import split_erased

    kept, gone = split_erased(table, windows)
    for seg, offset in zip(gone["segment_id"].to_pylist(), gone["record_offset"].to_pylist(), strict=True):
        noted = erased.setdefault(seg, ErasedFrom())
        if offset is not None:
            noted.offsets.add(offset)
        setattr(noted, kind, getattr(noted, kind) + 1)
    return kept


def _erase_from_segment(zone: RawZone, entry: dict, q: pa.Table | None, gone: ErasedFrom) -> pa.Table | None:
    """What an erasure covers in one segment a decode read before it: its records tombstoned
    first, then its quarantine file without every row at those records (a row there holds the whole
    message), so that a merge interrupted in between leaves nothing erased behind on its retry. The
    ledger row `entry` is set to the segment as it now is. Returns the quarantine rows kept."""
    if q is not None:
        at_erased = pc.is_in(q["record_offset"], pa.array(sorted(gone.offsets), pa.int64()))
        kept = q.filter(pc.invert(pc.fill_null(at_erased, False)))
        gone.rejected = q.num_rows - kept.num_rows
    else:
        kept = None
    after = zone.tombstone(entry["segment_id"], gone.offsets)
    if kept is not None and kept.num_rows < q.num_rows:
        if kept.num_rows:
            zone.write_quarantine(entry["segment_id"], kept, durable=True)
        else:
            zone.delete_quarantine(entry["segment_id"])
    if after is not None:
        entry["sha256"], entry["records"] = after
    entry["readings"] -= gone.readings
    entry["rejected"] = kept.num_rows if kept is not None else 0
    log.warning(
        "segment %s was decoded before an erasure finished: %d readings and %d rejections it "
        "covers are dropped and their %d records tombstoned",
        entry["segment_id"],
        gone.readings,
        gone.rejected,
        len(gone.offsets),
    )
    return kept


def merge_increments(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    *,
    now: datetime | None = None,
    max_readings_per_txn: int = 500_000,
    store: Store | None = None,
    close_after: timedelta = CLOSE_AFTER,
) -> tuple[StageResult, list[int]]:
    """Take every `staged.increments` snapshot the warehouse has not consumed into it.

    The one writer of the DuckDB warehouse: readings are de-duplicated and partitions replaced
    exactly as `stage_segments` does, and each snapshot's ledger rows, quarantine rows and id go
    in with its readings in one transaction. Returns what was staged and the ids of every
    consumed snapshot still in the table, for `Lake.fold`.
    """
    from civicflow.warehouse.lake import INCREMENTS, snapshots_with_ledger
    from civicflow.warehouse.privacy import erasure_windows

    now = now or datetime.now(tz=UTC)
    zone = RawZone(layout, store)
    # A decode reads segments without the warehouse, so an erasure may have run between its read
    # and this merge: what an erasure covers is dropped here too, and tombstoned where it is not.
    windows = erasure_windows(con)
    last_erasure = max((w.erased_at for w in windows), default=None)
    result = StageResult()
    changed: set[tuple[str, str, date]] = set()
    table = lake.increments()
    increments = snapshots_with_ledger(table)
    consumed = {row[0] for row in con.execute("SELECT snapshot_id FROM raw.increments").fetchall()}
    todo = [inc for inc in increments if inc.snapshot_id not in consumed]
    ledgered = {row[0] for row in con.execute("SELECT segment_id FROM raw.segments").fetchall()}
    open_parts = OpenParts(layout, now, close_after)

    def merge(pending: dict[Domain, list[pa.Table]]) -> None:
        for domain, tables in sorted(pending.items()):
            dups, parts = _merge_domain(con, DATASETS[domain], pa.concat_tables(tables), now, open_parts)
            result.corrections += _record_corrections(con, DATASETS[domain], now)
            result.duplicates += dups
            changed.update((domain.value, c, d) for c, d in parts)
        pending.clear()

    while todo:
        pending: dict[Domain, list[pa.Table]] = {}
        quarantine: list[pa.Table] = []
        ledger: list[dict] = []
        ids: list[int] = []
        readings = 0
        while todo and readings < max_readings_per_txn:
            inc = todo.pop(0)
            rows = lake.read_increment(table, inc.snapshot_id)
            erased: dict[str, ErasedFrom] = {}
            if windows:
                rows = _drop_erased(rows, windows, erased, "readings")
            for domain, part in _by_domain(rows):
                pending.setdefault(domain, []).append(part)
            readings += rows.num_rows
            for row in inc.ledger:
                if row.segment_id in ledgered:  # cannot happen through the lake; never count twice
                    log.warning(
                        "segment %s is in the ledger already; its increment adds nothing", row.segment_id
                    )
                    continue
                entry = dict(row.__dict__)
                q = zone.read_quarantine(row.segment_id) if row.rejected else None
                if windows:
                    if q is not None:
                        _drop_erased(q, windows, erased, "rejected")
                    if (gone := erased.get(row.segment_id)) is not None:
                        q = _erase_from_segment(zone, entry, q, gone)
                        result.erased += gone.readings + gone.rejected
                    elif last_erasure is not None and row.staged_at < last_erasure:
                        # Decoded before an erasure that may have changed it (a device whose
                        # messages were all refused leaves no reading here): as it now is.
                        if (after := zone.tombstone(row.segment_id, set())) is not None:
                            entry["sha256"], entry["records"] = after
                        entry["rejected"] = q.num_rows if q is not None else 0
                if q is not None:
                    quarantine.append(q)
                    result.quarantined.update(q["reason"].to_pylist())
                ledger.append(entry)
                result.segments += 1
                result.records += entry["records"]
                result.readings += entry["readings"]
            ids.append(inc.snapshot_id)
        con.execute("BEGIN TRANSACTION")
        try:
            merge(pending)
            if quarantine:
                con.register("q_incoming", pa.concat_tables(quarantine))
                con.execute("INSERT INTO quarantine.readings SELECT * FROM q_incoming")
                con.unregister("q_incoming")
            if ledger:
                con.register("ledger", pa.Table.from_pylist(ledger))
                con.execute(
                    "INSERT INTO raw.segments SELECT segment_id, bytes, sha256, records, "
                    "readings, rejected, staged_at FROM ledger"
                )
                con.unregister("ledger")
            con.executemany(
                "INSERT INTO raw.increments VALUES (?, ?, ?)", [(i, ".".join(INCREMENTS), now) for i in ids]
            )
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            open_parts.rollback()
            raise
        ledgered.update(row["segment_id"] for row in ledger)
        consumed.update(ids)
    export_partitions(con, layout, open_parts)
    compact_closed(con, layout, now, close_after)
    mark_staged(layout, con)
    result.changed_partitions = sorted((d, c, day.isoformat()) for d, c, day in changed)
    log.info(
        "merged %d segments' increments: %d readings, %d duplicates, %d corrections, quarantined %s",
        result.segments,
        result.readings,
        result.duplicates,
        result.corrections,
        dict(result.quarantined),
    )
    in_table = {inc.snapshot_id for inc in increments}
    return result, sorted(consumed & in_table)
