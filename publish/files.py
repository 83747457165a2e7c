"""Publish validated partitions as open data: Parquet, CSV and a Frictionless data package.

Files are written into the publisher's working tree, `data/published/<domain>/`, each next to its
final name and renamed into place; a partition that fails the gate changes nothing. The
`datapackage.json` of a dataset is rebuilt from `published.releases` (and the aggregate files in
`published.aggregate_releases`, see warehouse/aggregates.py) and lists each file with its byte
size and sha256. Consumers read releases, immutable snapshots of the working tree switched in one
step (publish/release.py, docs/publication.md).

Privacy is decided here, at write time: only a dataset's published columns (its allowlist) are
written, checked again on the written files, and the position of a citizen-hosted device is
rounded to 3 decimals (about 100 m).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from civicflow.contract import LOCATION_COLUMNS, Column, Dataset
from civicflow.errors import TerminalError
from civicflow.warehouse.tables import arrow_schema

MEDIA_TYPES = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv"}
ROW_GROUP_ROWS = 8192
"""Rows per Parquet row group: a day of a council's readings is one to a few groups, each with
min/max statistics, so a reader filtering on one device skips the groups that cannot hold it."""
CITIZEN_DECIMALS = 3
"""Decimals of lat/lon kept for a citizen-hosted device: about 100 m, a street rather than a house."""


class PublicationError(TerminalError):
    """What was about to be published breaks a publication rule: fix the code or contract, re-run."""


def allowlist(dataset: Dataset) -> tuple[str, ...]:
    """The only columns of a dataset that may leave the staged zone: its contract's published columns.

    Lineage (segment, offset, receive time), msg_id and anything not in the contract stay behind.
    """
    return tuple(c.name for c in dataset.published_columns)


def _check_allowlist(names: list[str], dataset: Dataset, what: str) -> None:
    allowed = allowlist(dataset)
    if list(names) != list(allowed):
        extra = sorted(set(names) - set(allowed))
        raise PublicationError(
            f"refusing to publish {what}: its columns {names} are not the allowlist of "
            f"{dataset.domain} {list(allowed)}" + (f" (not allowed: {extra})" if extra else "")
        )


def coarsen_locations(table: pa.Table, devices: set[str], decimals: int = CITIZEN_DECIMALS) -> pa.Table:
    """Round lat/lon of the rows of `devices` (citizen-hosted) to `decimals` decimals."""
    if not devices or table.num_rows == 0:
        return table
    mask = pc.is_in(table["device_id"], value_set=pa.array(sorted(devices), pa.string()))
    for c in LOCATION_COLUMNS:
        i = table.schema.get_field_index(c.name)
        col = table[c.name]
        table = table.set_column(i, table.schema.field(i), pc.if_else(mask, pc.round(col, decimals), col))
    return table


def sort_keys(dataset: Dataset) -> list[tuple[str, str]]:
    """Device, then (lane and) time: rows of a device are contiguous, so row groups can be skipped."""
    return [(n, "ascending") for n in dataset.natural_key if n != "council"]


def write_parquet(table: pa.Table, path: Path, row_group_rows: int = ROW_GROUP_ROWS) -> None:
    """Parquet with zstd, row groups of `row_group_rows` and min/max statistics on every column."""
    pq.write_table(table, path, compression="zstd", row_group_size=row_group_rows, write_statistics=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _csv_select(columns: tuple[Column, ...]) -> str:
    """Render datetimes as RFC 3339 UTC (`Z`), with microseconds only where there are any."""
    parts = []
    for c in columns:
        if c.type == "datetime":
            parts.append(
                f"CASE WHEN epoch_us({c.name}) % 1000000 = 0 "
                f"THEN strftime({c.name}, '%Y-%m-%dT%H:%M:%SZ') "
                f"ELSE strftime({c.name}, '%Y-%m-%dT%H:%M:%S.%fZ') END AS {c.name}"
            )
        else:
            parts.append(c.name)
    return ", ".join(parts)


def replace_into_place(tmp: Path, final: Path) -> None:
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def write_files(
    con: duckdb.DuckDBPyConnection,
    table: pa.Table,
    columns: tuple[Column, ...],
    target: Path,
    stem: str,
    base: Path,
    *,
    allowed: Dataset | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> dict[str, dict]:
    """Write `table` as `<stem>.parquet` and `<stem>.csv` under `target`, each renamed into place.

    With `allowed`, the bytes about to be published, not the table they came from, are held to
    that dataset's allowlist before they are renamed into place.

    Returns, per format, the path relative to `base` (the dataset folder), byte size and sha256.
    """
    target.mkdir(parents=True, exist_ok=True)
    parquet_path, csv_path = target / f"{stem}.parquet", target / f"{stem}.csv"
    tmp_parquet, tmp_csv = parquet_path.with_suffix(".parquet.tmp"), csv_path.with_suffix(".csv.tmp")
    table = table.select([c.name for c in columns]).cast(arrow_schema(columns))
    write_parquet(table, tmp_parquet, row_group_rows)
    con.register("file_rows", table)
    try:
        con.execute(
            f"COPY (SELECT {_csv_select(columns)} FROM file_rows) TO '{tmp_csv}' (FORMAT csv, HEADER true)"
        )
    finally:
        con.unregister("file_rows")
    if allowed is not None:
        _check_allowlist(pq.read_schema(tmp_parquet).names, allowed, str(tmp_parquet))
        with tmp_csv.open(encoding="utf-8") as fh:
            _check_allowlist(fh.readline().rstrip("\r\n").split(","), allowed, str(tmp_csv))
    replace_into_place(tmp_parquet, parquet_path)
    replace_into_place(tmp_csv, csv_path)
    return {
        fmt: {
            "path": path.relative_to(base).as_posix(),
            "bytes": path.stat().st_size,
            "sha256": _sha256(path),
        }
        for fmt, path in (("parquet", parquet_path), ("csv", csv_path))
    }


def table_schema(dataset: Dataset) -> dict:
    """The Frictionless Table Schema of a published dataset, units included."""
    return columns_schema(dataset.published_columns, dataset.natural_key)


def columns_schema(columns: tuple[Column, ...], primary_key: tuple[str, ...]) -> dict:
    """A Frictionless Table Schema for any published table: types, units, constraints, key."""
    fields = []
    for c in columns:
        f: dict = {"name": c.name, "type": c.type, "description": c.description}
        if c.unit:
            f["unit"] = c.unit
        if c.fiware:
            f["rdfType"] = f"https://smartdatamodels.org/{c.fiware}"
        constraints: dict = {}
        if c.required:
            constraints["required"] = True
        if c.minimum is not None:
            constraints["minimum"] = c.minimum
        if c.maximum is not None:
            constraints["maximum"] = c.maximum
        if c.enum:
            constraints["enum"] = list(c.enum)
        if constraints:
            f["constraints"] = constraints
        fields.append(f)
    return {"fields": fields, "primaryKey": list(primary_key), "missingValues": [""]}
