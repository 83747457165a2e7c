"""The staged zone's increments as Apache Iceberg tables, written by many staging workers at once.

Staging workers (one per shard, transforms/stage.py) decode raw segments and append what they read
to `staged.increments`, one Iceberg table for every dataset (a `domain` column says whose row it
is), partitioned by domain. Each append commits its readings together
with its part of the exactly-once ledger: the ledger rows of the segments it read travel in the
snapshot's summary (`civicflow.segments`), so a segment is recorded if and only if its readings
are, in one atomic catalogue commit. A single merging step (one writer) then takes each snapshot
it has not consumed yet into the DuckDB warehouse, which de-duplicates and versions partitions as
before; afterwards `fold` moves the consumed snapshots' ledger rows to the `raw.segments` Iceberg
table, removes their data files from `staged.increments` and expires the snapshots.

Which segments are staged: the ledger rows in the summaries of `staged.increments`' snapshots and
the rows of `raw.segments`, read in that order. `fold` appends to `raw.segments` before it expires
a snapshot, so a reader that saw a snapshot expired sees its rows in `raw.segments`; and a worker's
append is a compare-and-swap on the metadata it read the ledger from, so a segment staged by
another worker in between makes the commit fail, and the retry re-reads the ledger and drops that
segment's readings. Nothing is staged twice, whatever the number of workers (docs/scaling.md).

The catalogue is a SQL database (pyiceberg's SqlCatalog): SQLite under the data root on one
machine, PostgreSQL where many machines write. Every engine that reads Iceberg (Spark, Trino,
DuckDB's iceberg extension, pyiceberg) can read these tables.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.manifest import DataFile, ManifestEntryStatus
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import (
    BinaryType,
    DateType,
    DoubleType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from civicflow.contract import DATASETS, Column
from civicflow.errors import TransientError

log = logging.getLogger(__name__)

INCREMENTS = ("staged", "increments")
LEDGER = ("raw", "segments")
SUMMARY_KEY = "civicflow.segments"
"""Snapshot summary property holding the ledger rows (JSON) of the segments an append staged."""
SHARD_KEY = "civicflow.shard"

ICEBERG_TYPES = {
    "string": StringType(),
    "integer": LongType(),
    "number": DoubleType(),
    "datetime": TimestamptzType(),
    "date": DateType(),
    "binary": BinaryType(),
}

LEDGER_COLUMNS = (
    Column("segment_id", "string", "Raw segment, <listener>/<file> without .closed", required=True),
    Column("bytes", "integer", "Size of the segment when staged", required=True),
    Column("sha256", "string", "SHA-256 of the segment's bytes when staged", required=True),
    Column("records", "integer", "Records (messages) in the segment", required=True),
    Column("readings", "integer", "Readings staged from it", required=True),
    Column("rejected", "integer", "Messages or readings quarantined from it", required=True),
    Column("staged_at", "datetime", "When it was staged", required=True),
)

TABLE_PROPERTIES = {
    # Civicflow retries commits itself (`_commit`), re-reading the ledger before each attempt;
    # pyiceberg's own retry would re-apply an append without that check.
    "commit.retry.num-retries": "0",
    # Removing consumed increments never conflicts with appends of new files.
    "write.delete.isolation-level": "snapshot",
    "write.update.isolation-level": "snapshot",
    "write.merge.isolation-level": "snapshot",
    "write.parquet.compression-codec": "zstd",
    # Manifests keep no column bounds (they would hold device ids and values after an erasure):
    # tables are pruned by their partitions, which need none.
    "write.metadata.metrics.default": "counts",
    # Every commit writes a new metadata file; keep a bounded history of them.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
}
INCREMENT_PROPERTIES = {
    **TABLE_PROPERTIES,
    # Increments are written once, read once by the merge and deleted: Snappy reads back about
    # seven times faster than zstd here, for files about 1.5 times larger (docs/benchmarks.md).
    "write.parquet.compression-codec": "snappy",
}
INCREMENT_PARTITIONS = ("domain",)
"""The merge reads an increment whole, so only the dataset partitions it: a commit writes one file
per dataset, not one per council × dataset × day (about 1,350 small files in a national commit).
The staged zone the merge writes keeps its council and day partitions."""


def increment_columns() -> tuple[Column, ...]:
    """`domain`, then every staged column of every dataset once (required where all require it)."""
    seen: dict[str, list[Column]] = {}
    for dataset in DATASETS.values():
        for column in dataset.staged_columns:
            seen.setdefault(column.name, []).append(column)
    columns = [Column("domain", "string", "Dataset the reading belongs to", required=True)]
    for name, variants in seen.items():
        types = {c.type for c in variants}
        if len(types) != 1:  # the contract keeps one type per column name across datasets
            raise ValueError(f"column {name} has several types across datasets: {sorted(types)}")
        required = len(variants) == len(DATASETS) and all(c.required for c in variants)
        first = variants[0]
        columns.append(Column(name, first.type, first.description, required=required))
    return tuple(columns)


def iceberg_schema(columns: Iterable[Column]) -> Schema:
    return Schema(
        *(
            NestedField(field_id=i, name=c.name, field_type=ICEBERG_TYPES[c.type], required=c.required)
            for i, c in enumerate(columns, start=1)
        )
    )


def arrow_schema(columns: Iterable[Column]) -> pa.Schema:
    from civicflow.warehouse.tables import ARROW_TYPES

    return pa.schema([pa.field(c.name, ARROW_TYPES[c.type], nullable=not c.required) for c in columns])


def _identity_spec(schema: Schema, names: Iterable[str]) -> PartitionSpec:
    return PartitionSpec(
        *(
            PartitionField(
                source_id=schema.find_field(name).field_id,
                field_id=1000 + i,
                transform=IdentityTransform(),
                name=name,
            )
            for i, name in enumerate(names)
        )
    )


@dataclass(frozen=True)
class LedgerRow:
    segment_id: str
    bytes: int
    sha256: str
    records: int
    readings: int
    rejected: int
    staged_at: datetime

    def to_json(self) -> dict:
        return {**self.__dict__, "staged_at": self.staged_at.isoformat()}

    @classmethod
    def from_json(cls, row: dict) -> LedgerRow:
        return cls(**{**row, "staged_at": datetime.fromisoformat(row["staged_at"])})


@dataclass(frozen=True)
class Increment:
    """One append to `staged.increments`: its snapshot, readings and ledger rows."""

    snapshot_id: int
    sequence_number: int
    ledger: tuple[LedgerRow, ...]


@dataclass(frozen=True)
class AppendOutcome:
    snapshot_id: int | None
    segments: tuple[str, ...]
    """The segments this append staged."""
    already_staged: tuple[str, ...]
    """Segments another writer staged first: their readings were left out."""
    attempts: int


class Lake:
    """The Iceberg catalogue and Civicflow's tables in it."""

    def __init__(self, catalog: SqlCatalog, location: str, commit_retries: int = 16) -> None:
        self.catalog = catalog
        self.location = location.rstrip("/")
        self.commit_retries = commit_retries
        self.before_commit: Callable[[int], None] | None = None
        self._conformed: set[tuple[str, str]] = set()
        """Called with the attempt number just before an append commits (tests force conflicts)."""

    # -- tables -----------------------------------------------------------------------------

    def increments(self) -> Table:
        return self._table(INCREMENTS, increment_columns(), INCREMENT_PARTITIONS, INCREMENT_PROPERTIES)

    def ledger(self) -> Table:
        return self._table(LEDGER, LEDGER_COLUMNS, (), TABLE_PROPERTIES)

    def _table(
        self,
        ident: tuple[str, str],
        columns: tuple[Column, ...],
        partition_by: tuple[str, ...],
        properties: dict[str, str],
    ) -> Table:
        try:
            table = self.catalog.load_table(ident)
        except NoSuchTableError:
            return self._create(ident, columns, partition_by, properties)
        if ident not in self._conformed:
            table = self._conform(ident, table, partition_by, properties)
            self._conformed.add(ident)
        return table

    def _conform(
        self, ident: tuple[str, str], table: Table, partition_by: tuple[str, ...], properties: dict[str, str]
    ) -> Table:
        """Bring a table created by an earlier Civicflow to today's partitioning and properties.

        Files written before keep their own partitioning (Iceberg records it per file): the merge
        reads them whole either way. Workers that conform the table at once race like any commit.
        """
        for attempt in range(self.commit_retries + 1):
            schema, spec = table.schema(), table.spec()
            have = tuple(schema.find_column_name(f.source_id) for f in spec.fields)
            stale = {k: v for k, v in properties.items() if table.properties.get(k) != v}
            if have == partition_by and not stale:
                return table
            try:
                with table.transaction() as tx:
                    if stale:
                        tx.set_properties(stale)
                    if have != partition_by:
                        with tx.update_spec() as update:
                            for field in spec.fields:
                                update.remove_field(field.name)
                            for name in partition_by:
                                update.add_identity(name)
                log.info(
                    "%s conformed: partitioned by %s (was %s), properties set: %s",
                    ".".join(ident),
                    partition_by,
                    have,
                    sorted(stale),
                )
            except (CommitFailedException, OperationalError):
                _back_off(attempt)
            table = self.catalog.load_table(ident)
        return table

    def _create(
        self,
        ident: tuple[str, str],
        columns: tuple[Column, ...],
        partition_by: tuple[str, ...],
        properties: dict[str, str],
    ) -> Table:
        # Workers that meet a new catalogue at the same moment race to create its namespaces and
        # tables: the loser's insert violates the catalogue's keys, and it takes the winner's.
        with contextlib.suppress(NamespaceAlreadyExistsError, IntegrityError):
            self.catalog.create_namespace(ident[0])
        schema = iceberg_schema(columns)
        try:
            return self.catalog.create_table(
                ident,
                schema=schema,
                location=f"{self.location}/{ident[0]}/{ident[1]}",
                partition_spec=_identity_spec(schema, partition_by),
                properties=properties,
            )
        except (TableAlreadyExistsError, IntegrityError):  # another worker created it first
            return self.catalog.load_table(ident)

    # -- the ledger ---------------------------------------------------------------------------

    def staged_segments(self, increments: Table | None = None) -> set[str]:
        """Every segment recorded as staged: in the summaries of `increments` (as loaded), then in
        `raw.segments`, read after it (see the module's docstring for why the order matters)."""
        table = increments if increments is not None else self.increments()
        staged = {row.segment_id for inc in snapshots_with_ledger(table) for row in inc.ledger}
        ledger = self.ledger()
        if ledger.current_snapshot() is not None:
            staged.update(ledger.scan(selected_fields=("segment_id",)).to_arrow()["segment_id"].to_pylist())
        return staged

    # -- writing ------------------------------------------------------------------------------

    def append(self, readings: pa.Table, ledger: list[LedgerRow], shard: str) -> AppendOutcome:
        """Append staged readings with the ledger rows of the segments they came from, atomically.

        Before each attempt the ledger is read from the metadata the commit is based on; readings
        of segments already staged by another writer are left out (their ledger rows too). A commit
        lost to a concurrent writer is retried up to `commit_retries` times with jittered back-off.
        """
        mine = {row.segment_id for row in ledger}
        # The data files are written once and only the commit is retried: a lost commit costs a
        # metadata read, not a second write of every file, and the window in which another
        # worker's commit makes this one fail is that of the commit, not of the whole write.
        # They are written again only if another writer staged some of these segments meanwhile.
        files: list[DataFile] | None = None
        left_out: set[str] = set()
        for attempt in range(self.commit_retries + 1):
            table = self.increments()
            already = mine & self.staged_segments(table)
            rows = [row for row in ledger if row.segment_id not in already]
            if not rows:
                return AppendOutcome(None, (), tuple(sorted(already)), attempt + 1)
            if files is None or already != left_out:
                batch = readings
                if already:
                    keep = pc.invert(pc.is_in(readings["segment_id"], value_set=pa.array(sorted(already))))
                    batch = readings.filter(keep)
                files = _write_data_files(table, batch.cast(arrow_schema(increment_columns())))
                left_out = already
            properties = {
                SUMMARY_KEY: orjson.dumps([r.to_json() for r in rows]).decode(),
                SHARD_KEY: shard,
            }
            if self.before_commit is not None:
                self.before_commit(attempt)
            try:
                with table.transaction() as tx, tx.update_snapshot(properties).fast_append() as append:
                    for data_file in files:
                        append.append_data_file(data_file)
            except (CommitFailedException, OperationalError) as exc:
                # Lost to a concurrent writer, or the catalogue's database was busy or went away
                # mid-commit (the commit may even have landed): the retry re-reads the ledger.
                log.info("shard %s: commit did not go through (%s); retrying", shard, exc)
                _back_off(attempt)
                continue
            snapshot = table.current_snapshot()
            return AppendOutcome(
                snapshot.snapshot_id if snapshot else None,
                tuple(sorted(r.segment_id for r in rows)),
                tuple(sorted(already)),
                attempt + 1,
            )
        raise TransientError(
            f"staging shard {shard} lost {self.commit_retries + 1} commits in a row to concurrent "
            "writers; retry the task, or raise CIVICFLOW_CATALOG__COMMIT_RETRIES to at least twice "
            "the number of staging workers"
        )

    # -- reading ------------------------------------------------------------------------------

    def read_increment(self, table: Table, snapshot_id: int) -> pa.Table:
        """The readings one append added, as Arrow with the increments' columns."""
        snapshot = table.snapshot_by_id(snapshot_id)
        if snapshot is None:
            raise KeyError(f"snapshot {snapshot_id} of {'.'.join(INCREMENTS)} no longer exists")
        files = added_data_files(table, snapshot)
        schema = arrow_schema(increment_columns())
        if not files:
            return schema.empty_table()
        import pyarrow.parquet as pq

        fs = _arrow_fs(table)
        parts = [pq.read_table(_fs_path(path), filesystem=fs).cast(schema) for path in files]
        return pa.concat_tables(parts)

    # -- folding consumed increments ----------------------------------------------------------

    def fold(self, consumed: Iterable[int]) -> dict:
        """After the merging step has consumed these snapshots: record their ledger rows in
        `raw.segments`, remove their data files from `staged.increments`, expire them.

        Safe to repeat and to interrupt: each step is one commit and checks what is done already.
        """
        consumed = set(consumed)
        table = self.increments()
        done = [inc for inc in snapshots_with_ledger(table) if inc.snapshot_id in consumed]
        if not done:
            return {"folded": 0, "files_removed": 0, "snapshots_expired": 0}
        rows = [row for inc in done for row in inc.ledger]
        self._commit(self.ledger, lambda t: _append_missing_ledger(self, t, rows))
        files = {
            path for inc in done for path in added_data_files(table, table.snapshot_by_id(inc.snapshot_id))
        }

        def remove(t: Table) -> None:
            live = {f.file_path: f for f in _live_data_files(t)}
            targets = [live[p] for p in files if p in live]
            if not targets:
                return
            with t.transaction() as tx, tx.update_snapshot().overwrite() as overwrite:
                for data_file in targets:
                    overwrite.delete_data_file(data_file)

        self._commit(self.increments, remove)

        def expire(t: Table) -> None:
            current = t.current_snapshot()
            ids = [i.snapshot_id for i in done if t.snapshot_by_id(i.snapshot_id) is not None]
            ids = [i for i in ids if current is None or i != current.snapshot_id]
            if ids:
                t.maintenance.expire_snapshots().by_ids(ids).commit()

        self._commit(self.increments, expire)
        # No retained snapshot refers to those files now: delete them, so no copy of a reading
        # outlives its merge (an erasure must reach them too).
        fs = _arrow_fs(table)
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(_fs_path(path))
        return {"folded": len(rows), "files_removed": len(files), "snapshots_expired": len(done)}

    def maintain(self, now: datetime | None = None, keep: timedelta = timedelta(days=1)) -> dict:
        """Daily upkeep (civicflow_maintenance): expire snapshots older than `keep` that hold no
        unmerged increment, rewrite the ledger table into one file, remove orphan files."""
        now = now or datetime.now(tz=UTC)
        cutoff_ms = int((now - keep).timestamp() * 1000)
        expired = 0

        def expire_old(t: Table) -> None:
            nonlocal expired
            current = t.current_snapshot()
            ids = [
                s.snapshot_id
                for s in t.snapshots()
                if s.timestamp_ms < cutoff_ms
                and (current is None or s.snapshot_id != current.snapshot_id)
                and SUMMARY_KEY not in (s.summary.additional_properties if s.summary else {})
            ]
            if ids:
                t.maintenance.expire_snapshots().by_ids(ids).commit()
                expired += len(ids)

        self._commit(self.increments, expire_old)
        ledger = self.ledger()
        if len(_live_data_files(ledger)) > 1:
            self._commit(self.ledger, lambda t: t.overwrite(t.scan().to_arrow()))
        self._commit(self.ledger, expire_old)
        return {"snapshots_expired": expired, "orphans_removed": remove_orphan_files(self, now=now)}

    def _commit(self, load: Callable[[], Table], change: Callable[[Table], None]) -> None:
        # Each change checks what is done already, so repeating one that landed does nothing.
        for attempt in range(self.commit_retries + 1):
            try:
                change(load())
                return
            except (CommitFailedException, OperationalError):
                _back_off(attempt)
        raise TransientError(
            f"lost {self.commit_retries + 1} commits in a row to concurrent writers; retry the task"
        )


def _write_data_files(table: Table, batch: pa.Table) -> list[DataFile]:
    """Write `batch` as the table's data files, one or more per partition, uncommitted.

    What `Table.append` writes, with the rows split by partition in one stable sort rather than
    by a filter of the whole batch for each partition (pyiceberg's way, whose cost grows with
    partitions × rows: a national commit spans thousands of council × domain × date partitions).
    Within a partition the rows keep their order.
    """
    import itertools
    import uuid

    from pyiceberg.io.pyarrow import (
        _check_pyarrow_schema_compatible,
        bin_pack_arrow_table,
        pyarrow_to_schema,
        write_file,
    )
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
    from pyiceberg.table import TableProperties, WriteTask
    from pyiceberg.utils.properties import property_as_int

    metadata = table.metadata
    schema, spec = metadata.schema(), metadata.spec()
    _check_pyarrow_schema_compatible(
        schema, provided_schema=batch.schema, format_version=metadata.format_version
    )
    if batch.num_rows == 0:
        return []
    task_schema = pyarrow_to_schema(
        batch.schema, name_mapping=schema.name_mapping, format_version=metadata.format_version
    )
    target = property_as_int(
        metadata.properties,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
    )
    names = [schema.find_column_name(f.source_id) for f in spec.fields]
    runs = [(0, batch.num_rows)]
    if names:
        runs = _partition_runs(batch, names)
        if runs is None:  # not in partition order yet: sort (stable), a copy of every column
            batch = batch.take(pc.sort_indices(batch, [(n, "ascending") for n in names]))
            runs = _partition_runs(batch, names)
            assert runs is not None
    write_uuid, counter = uuid.uuid4(), itertools.count(0)
    tasks = []
    for start, stop in runs:
        part = batch.slice(start, stop - start)
        key = None
        if names:
            key = PartitionKey(
                field_values=[
                    PartitionFieldValue(field=f, value=part.column(n)[0].as_py())
                    for f, n in zip(spec.fields, names, strict=True)
                ],
                partition_spec=spec,
                schema=schema,
            )
        for batches in bin_pack_arrow_table(part, target):
            tasks.append(
                WriteTask(
                    write_uuid=write_uuid,
                    task_id=next(counter),
                    record_batches=batches,
                    partition_key=key,
                    schema=task_schema,
                )
            )
    return list(write_file(io=table.io, table_metadata=metadata, tasks=iter(tasks)))


def _partition_runs(batch: pa.Table, names: list[str]) -> list[tuple[int, int]] | None:
    """The (start, stop) of each run of equal partition values, if the runs are in ascending
    order of those values (each partition one run), else None. Staging hands its readings grouped
    by dataset, so they need no sort."""
    changes = np.zeros(batch.num_rows, dtype=bool)
    changes[0] = True
    for name in names:
        column = batch.column(name).combine_chunks()
        changes[1:] |= ~pc.fill_null(pc.equal(column[1:], column[:-1]), False).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(changes)
    heads = batch.select(names).take(pa.array(starts)).to_pylist()
    keys = [tuple((v is not None, v) for v in row.values()) for row in heads]  # nulls first
    if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
        return None
    bounds = starts.tolist()
    return list(zip(bounds, [*bounds[1:], batch.num_rows], strict=True))


def _append_missing_ledger(lake: Lake, table: Table, rows: list[LedgerRow]) -> None:
    present: set[str] = set()
    if table.current_snapshot() is not None:
        present = set(table.scan(selected_fields=("segment_id",)).to_arrow()["segment_id"].to_pylist())
    missing = [r for r in rows if r.segment_id not in present]
    if missing:
        table.append(pa.Table.from_pylist([r.__dict__ for r in missing], schema=arrow_schema(LEDGER_COLUMNS)))


def snapshots_with_ledger(table: Table) -> list[Increment]:
    """The appends of staging workers still in the table's metadata, oldest first."""
    out = []
    for snapshot in table.snapshots():
        raw = (snapshot.summary.additional_properties if snapshot.summary else {}).get(SUMMARY_KEY)
        if raw is None:
            continue
        ledger = tuple(LedgerRow.from_json(r) for r in orjson.loads(raw))
        out.append(Increment(snapshot.snapshot_id, snapshot.sequence_number or 0, ledger))
    return sorted(out, key=lambda inc: inc.sequence_number)


def added_data_files(table: Table, snapshot: Snapshot | None) -> list[str]:
    """Paths of the data files a snapshot added."""
    if snapshot is None:
        return []
    paths = []
    for manifest in snapshot.manifests(table.io):
        if manifest.added_snapshot_id != snapshot.snapshot_id:
            continue
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            if entry.status == ManifestEntryStatus.ADDED and entry.snapshot_id == snapshot.snapshot_id:
                paths.append(entry.data_file.file_path)
    return sorted(paths)


def _live_data_files(table: Table):
    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    return [
        entry.data_file
        for manifest in snapshot.manifests(table.io)
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
    ]


def remove_orphan_files(
    lake: Lake, older_than: timedelta = timedelta(days=3), now: datetime | None = None
) -> int:
    """Delete files under the tables' locations that no retained snapshot or metadata refers to.

    Only files older than `older_than` go: a worker's data files are unreferenced between their
    write and its commit, and must not be removed under it (the default is Iceberg's three days).
    """
    now = now or datetime.now(tz=UTC)
    removed = 0
    for load in (lake.increments, lake.ledger):
        table = load()
        referenced = {table.metadata_location}
        referenced.update(log.metadata_file for log in table.metadata.metadata_log)
        for snapshot in table.snapshots():
            referenced.add(snapshot.manifest_list)
            for manifest in snapshot.manifests(table.io):
                referenced.add(manifest.manifest_path)
                for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                    referenced.add(entry.data_file.file_path)
        fs = _arrow_fs(table)
        from pyarrow import fs as pafs

        base = _fs_path(table.location())
        try:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        except FileNotFoundError:
            continue
        cutoff = now - older_than
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            uri = _uri_like(table.location(), base, info.path)
            if uri in referenced or _fs_path(uri) in {_fs_path(r) for r in referenced}:
                continue
            if info.mtime is not None and info.mtime.replace(tzinfo=info.mtime.tzinfo or UTC) > cutoff:
                continue
            fs.delete_file(info.path)
            removed += 1
    return removed


def _uri_like(location: str, base: str, path: str) -> str:
    return location.rstrip("/") + path[len(base.rstrip("/")) :]


def _arrow_fs(table: Table):
    from pyiceberg.io.pyarrow import PyArrowFileIO

    io = table.io
    if not isinstance(io, PyArrowFileIO):  # pragma: no cover - pyiceberg's default FileIO
        raise TypeError(f"unexpected FileIO {type(io).__name__}")
    scheme, netloc, _ = PyArrowFileIO.parse_location(table.location())
    return io.fs_by_scheme(scheme, netloc)


def _fs_path(uri: str) -> str:
    from pyiceberg.io.pyarrow import PyArrowFileIO

    _scheme, _netloc, path = PyArrowFileIO.parse_location(uri)  # object stores: bucket/key
    return path


def _back_off(attempt: int) -> None:
    # Jittered exponential back-off: many workers that collided spread out instead of colliding again.
    time.sleep(random.uniform(0, min(2.0, 0.02 * 2**attempt)))


def open_lake(uri: str, location: str, *, properties: dict | None = None, commit_retries: int = 16) -> Lake:
    """The catalogue at `uri` (SQLAlchemy URL), with tables under `location` (a file:// or s3:// URI).

    Opening a new catalogue creates its tables; workers that open it at the same moment race to
    create them, and the losers try again once the winner's tables exist.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(commit_retries + 1):
        try:
            catalog = SqlCatalog("civicflow", uri=uri, warehouse=location, **(properties or {}))
            break
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            if attempt == commit_retries:
                from sqlalchemy.engine import make_url

                where = make_url(uri).render_as_string(hide_password=True)
                raise TransientError(
                    f"cannot open the Iceberg catalogue at {where}: {exc.orig or exc}; check that its "
                    "database is up and CIVICFLOW_CATALOG__URI names it, then retry"
                ) from exc
            _back_off(attempt)
    return Lake(catalog, location, commit_retries)
