"""Publish validated partitions as open data: Parquet, CSV and a Frictionless data package.

A partition is written next to its final name and renamed into place, so a consumer never sees a
half-written file and a partition that fails the gate keeps its previous release untouched. The
`datapackage.json` of a dataset is rebuilt from `published.releases` (and the aggregate files in
`published.aggregate_releases`, see warehouse/aggregates.py) after every release and lists each
file with its byte size and sha256.
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
import pyarrow.parquet as pq

from civicflow import __version__
from civicflow.contract import CONTRACT_VERSION, LICENCE, Column, Dataset, Zone
from warehouse.layout import Layout
from warehouse.tables import arrow_schema

MEDIA_TYPES = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv"}


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
    pq.write_table(table, parquet_path.with_suffix(".parquet.tmp"), compression="zstd")
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
) -> dict[str, dict]:
    """Write one validated partition as Parquet and CSV and record the release."""
    columns = dataset.published_columns
    table = rows.select([c.name for c in columns]).cast(arrow_schema(columns))
    target = layout.partition_dir(Zone.PUBLISHED, dataset.domain, council, day)
    target.mkdir(parents=True, exist_ok=True)
    stem = f"{dataset.domain}-{council}-{day.isoformat()}"
    parquet_path, csv_path = target / f"{stem}.parquet", target / f"{stem}.csv"
    pq.write_table(table, parquet_path.with_suffix(".parquet.tmp"), compression="zstd")
    con.register("release_rows", table)
    tmp_csv = csv_path.with_suffix(".csv.tmp")
    con.execute(
        f"COPY (SELECT {_csv_select(columns)} FROM release_rows) TO '{tmp_csv}' (FORMAT csv, HEADER true)"
    )
    _replace_into_place(parquet_path.with_suffix(".parquet.tmp"), parquet_path)
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
            resource["profile"] = "tabular-data-resource"
        resources.append(resource)
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
        resources.extend(_licensed(r, licences.get(council)) for r in json.loads(aggregate_json))
    package = {
        "profile": "tabular-data-package",
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
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(package, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    _replace_into_place(tmp, path)
    return path
