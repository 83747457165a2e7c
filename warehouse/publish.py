"""Publish validated partitions as open data: Parquet, CSV and a Frictionless data package.

Files are written into the publisher's working tree, `data/published/<domain>/`, each next to its
final name and renamed into place; a partition that fails the gate changes nothing. The
`datapackage.json` of a dataset is rebuilt from `published.releases` (and the aggregate files in
`published.aggregate_releases`, see warehouse/aggregates.py) and lists each file with its byte
size and sha256. Consumers read releases, immutable snapshots of the working tree switched in one
step (warehouse/releases.py, docs/publication.md).

Privacy is decided here, at write time: only a dataset's published columns (its allowlist) are
written, checked again on the written files, and the position of a citizen-hosted device is
rounded to 3 decimals (about 100 m).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from civicflow import __version__
from civicflow.contract import CONTRACT_VERSION, LICENCE, LOCATION_COLUMNS, Column, Dataset, Zone
from civicflow.errors import TerminalError
from civicflow.registry import Registry
from warehouse.layout import Layout
from warehouse.tables import arrow_schema

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


def _replace_into_place(tmp: Path, final: Path) -> None:
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
) -> dict[str, dict]:
    """Write `table` as `<stem>.parquet` and `<stem>.csv` under `target`, each renamed into place.

    Returns, per format, the path relative to `base` (the dataset folder), byte size and sha256.
    """
    target.mkdir(parents=True, exist_ok=True)
    parquet_path, csv_path = target / f"{stem}.parquet", target / f"{stem}.csv"
    table = table.select([c.name for c in columns]).cast(arrow_schema(columns))
    write_parquet(table, parquet_path.with_suffix(".parquet.tmp"))
    con.register("file_rows", table)
    tmp_csv = csv_path.with_suffix(".csv.tmp")
    try:
        con.execute(
            f"COPY (SELECT {_csv_select(columns)} FROM file_rows) TO '{tmp_csv}' (FORMAT csv, HEADER true)"
        )
    finally:
        con.unregister("file_rows")
    _replace_into_place(parquet_path.with_suffix(".parquet.tmp"), parquet_path)
    _replace_into_place(tmp_csv, csv_path)
    return {
        fmt: {
            "path": path.relative_to(base).as_posix(),
            "bytes": path.stat().st_size,
            "sha256": _sha256(path),
        }
        for fmt, path in (("parquet", parquet_path), ("csv", csv_path))
    }


def publish_partition(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    dataset: Dataset,
    council: str,
    day: date,
    version: int,
    rows: pa.Table,
    now: datetime,
    registry: Registry | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> dict[str, dict]:
    """Write one validated partition as Parquet and CSV and record the release.

    Only the dataset's allowlist of columns is written, sorted by device and time; devices the
    registry marks citizen-hosted have their position rounded. The files are checked against the
    allowlist before they are renamed into place.
    """
    columns = dataset.published_columns
    table = rows.select(list(allowlist(dataset))).cast(arrow_schema(columns)).sort_by(sort_keys(dataset))
    if registry is not None:
        devices = {
            d for d in pc.unique(table["device_id"]).to_pylist() if registry.citizen_hosted(council, d)
        }
        table = coarsen_locations(table, devices)
    _check_allowlist(table.column_names, dataset, f"{dataset.domain} {council} {day}")
    target = layout.partition_dir(Zone.PUBLISHED, dataset.domain, council, day)
    target.mkdir(parents=True, exist_ok=True)
    stem = f"{dataset.domain}-{council}-{day.isoformat()}"
    parquet_path, csv_path = target / f"{stem}.parquet", target / f"{stem}.csv"
    tmp_parquet, tmp_csv = parquet_path.with_suffix(".parquet.tmp"), csv_path.with_suffix(".csv.tmp")
    write_parquet(table, tmp_parquet, row_group_rows)
    con.register("release_rows", table)
    con.execute(
        f"COPY (SELECT {_csv_select(columns)} FROM release_rows) TO '{tmp_csv}' (FORMAT csv, HEADER true)"
    )
    # The bytes about to be published, not the table they came from, are held to the allowlist.
    _check_allowlist(pq.read_schema(tmp_parquet).names, dataset, str(tmp_parquet))
    with tmp_csv.open(encoding="utf-8") as fh:
        _check_allowlist(fh.readline().rstrip("\r\n").split(","), dataset, str(tmp_csv))
    _replace_into_place(tmp_parquet, parquet_path)
    _replace_into_place(tmp_csv, csv_path)
    files = {
        fmt: {
            "path": path.relative_to(layout.published_dataset(dataset.domain)).as_posix(),
            "bytes": path.stat().st_size,
            "sha256": _sha256(path),
        }
        for fmt, path in (("parquet", parquet_path), ("csv", csv_path))
    }
    names = ", ".join(c.name for c in columns)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            f"DELETE FROM published.{dataset.domain} WHERE council = ? AND CAST(observed_at AS DATE) = ?",
            [council, day],
        )
        con.execute(f"INSERT INTO published.{dataset.domain} ({names}) SELECT {names} FROM release_rows")
        con.execute(
            """INSERT OR REPLACE INTO published.releases
                       (domain, council, event_date, partition_version, rows, published_at, files)
                       VALUES (?, ?, ?, ?, ?, ?, ?)""",
            [dataset.domain.value, council, day, version, table.num_rows, now, json.dumps(files)],
        )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("release_rows")
    return files


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


def resource_name(*parts: str) -> str:
    """A Frictionless resource name (lower case, digits, `-._/`): `air_quality` becomes `air-quality`."""
    return "-".join(parts).lower().replace("_", "-")


def _profiled(resource: dict) -> dict:
    """Declare what Frictionless can check of a resource.

    CSV is a `tabular-data-resource`: its rows are validated against the Table Schema. Parquet
    keeps the same schema for consumers but is declared a plain `data-resource` of type `file`:
    Frictionless reads Parquet through pyarrow without counting bytes, so as a table its `bytes`
    and `hash` could never be checked; as a file they are (and `rows`, which a file has not, is
    left to the CSV twin, which carries the same rows).
    """
    out = {k: v for k, v in resource.items() if k not in ("profile", "type")}
    if resource["format"] == "csv":
        return out | {"profile": "tabular-data-resource"}
    return {k: v for k, v in out.items() if k != "rows"} | {"profile": "data-resource", "type": "file"}


def file_resources(name: str, files: dict[str, dict], rows: int, schema: dict) -> list[dict]:
    """The Parquet and CSV resources of one published table, as listed in `datapackage.json`."""
    resources = []
    for fmt in ("parquet", "csv"):
        meta = files[fmt]
        resource = {
            "name": name + ("" if fmt == "parquet" else "-csv"),
            "path": meta["path"],
            "format": fmt,
            "mediatype": MEDIA_TYPES[fmt],
            "bytes": meta["bytes"],
            "hash": f"sha256:{meta['sha256']}",
            "rows": rows,
            "schema": schema,
        }
        if fmt == "csv":
            resource["encoding"] = "utf-8"
        resources.append(_profiled(resource))
    return resources


def _licensed(resource: dict, licence: dict | None) -> dict:
    if licence is None:
        return resource
    out = resource | {"licenses": [{k: licence[k] for k in ("name", "path", "title")}]}
    if licence.get("attribution"):
        out["sources"] = [{"title": licence["attribution"]}]
    return out


def write_datapackage(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    dataset: Dataset,
    licences: Mapping[str, dict] | None = None,
) -> Path:
    """Rebuild `datapackage.json` for a dataset from its current releases.

    `licences` maps a council to the licence its data must carry when that is not the Open
    Government Licence (citizen-science data under ODbL, say). Those councils' resources, and the
    aggregates built from them, name their own licence; the package lists every licence used.
    """
    licences = licences or {}
    releases = con.execute(
        "SELECT council, event_date, rows, files FROM published.releases WHERE domain = ? "
        "ORDER BY council, event_date",
        [dataset.domain.value],
    ).fetchall()
    schema = table_schema(dataset)
    resources = []
    used = {LICENCE["name"]: LICENCE} if any(c not in licences for c, *_ in releases) else {}
    for council, day, rows, files_json in releases:
        name = resource_name(dataset.domain, council, day.isoformat())
        licence = licences.get(council)
        resources.extend(
            _licensed(r, licence) for r in file_resources(name, json.loads(files_json), rows, schema)
        )
        if licence is not None:
            used[licence["name"]] = {k: licence[k] for k in ("name", "path", "title")}
    # Aggregates record their own resources (schema included) when they are written.
    for council, aggregate_json in con.execute(
        "SELECT council, resources FROM published.aggregate_releases WHERE domain = ? "
        "ORDER BY kind, council, event_date",
        [dataset.domain.value],
    ).fetchall():
        resources.extend(_licensed(_profiled(r), licences.get(council)) for r in json.loads(aggregate_json))
    package = {
        # Not `tabular-data-package`: that profile requires every resource to be tabular, and the
        # Parquet files are declared as files (see _profiled).
        "profile": "data-package",
        "name": f"civicflow-{dataset.domain}",
        "title": dataset.title,
        "description": dataset.description,
        "version": f"contract-{CONTRACT_VERSION}",
        "licenses": list(used.values()) or [LICENCE],
        "keywords": ["smart city", str(dataset.domain), *dataset.fiware_types],
        "sources": [{"title": "Council sensor gateways, via Civicflow", "path": "docs/mqtt-contract.md"}],
        "civicflow": {"version": __version__, "fiware_types": list(dataset.fiware_types)},
        "resources": resources,
    }
    path = layout.published_dataset(dataset.domain) / "datapackage.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # The readings' Table Schema on its own, for catalogues to point at (dct:conformsTo).
    schema_path = path.with_name("schema.json")
    tmp = schema_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    _replace_into_place(tmp, schema_path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(package, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    _replace_into_place(tmp, path)
    return path
