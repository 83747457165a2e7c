"""Where the sensors are: each dataset's devices as GeoJSON, `<dataset>/devices.geojson`.

One RFC 7946 FeatureCollection per dataset, rebuilt with its data package and listed there (a file
resource with `bytes` and `hash`), so every release holds the listing of the readings it publishes.
One feature per device (council and device id) with a published reading:

- `geometry`: a Point, `[lon, lat]` in WGS84, from the device's latest published reading with a
  position, else from its registry entry; `null` when neither gives one (nothing is guessed). The
  position of a citizen-hosted device is rounded as its readings are (`civicflow.publish.files.
  coarsen_locations`, 3 decimals) and `position_decimals` says so.
- `properties`: `dataset`, `council`, `device_id`, `model` (the registry's, else null),
  `citizen_hosted`, `position_decimals`, `reporting_interval_s` and where it comes from
  (`registry`: the council's `[quality.reporting_interval_s]`; `readings`: the median of the
  intervals the daily aggregates inferred), `total_spots` (parking: the latest capacity), the first
  and last published reading (RFC 3339 UTC), `readings`, `days` (the council's published days in
  the release) and `coverage`: the device's daily coverage (`published.device_coverage`) summed and
  divided by those days (and by its lanes, for traffic), so a day it sent nothing counts as 0.

Everything is read from the warehouse's published tables and the publication ledger, so the file
describes exactly what the release holds, and the same publications give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from civicflow.contract import Dataset, Domain
from civicflow.publish.files import CITIZEN_DECIMALS, coarsen_locations, replace_into_place
from civicflow.registry import Registry
from civicflow.warehouse.partitions import publications

DEVICES_FILE = "devices.geojson"
MEDIA_TYPE = "application/geo+json"
"""GeoJSON's media type (RFC 7946, section 12)."""


def _instant(epoch_us: int | None) -> str | None:
    """RFC 3339 UTC with `Z`, with microseconds only where there are any (as the CSV files)."""
    if epoch_us is None:
        return None
    at = datetime.fromtimestamp(epoch_us / 1e6, tz=UTC).replace(microsecond=epoch_us % 1_000_000)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if at.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def _whole(seconds: float | None) -> float | int | None:
    """An interval in seconds, as an integer when it is one."""
    return int(seconds) if seconds is not None and seconds == int(seconds) else seconds


def device_rows(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, registry: Registry | None = None
) -> list[dict[str, Any]]:
    """Every device of a dataset with a published reading, by council and device id (see the module)."""
    domain = dataset.domain.value
    days: dict[str, set] = {}
    for pub in publications(con, domain):
        days.setdefault(pub.ref.council, set()).add(pub.ref.event_date)
    parking = dataset.domain == Domain.PARKING
    lanes = "count(DISTINCT lane_id)" if dataset.domain == Domain.TRAFFIC else "1"
    spots = "arg_max(total_spots, observed_at) FILTER (WHERE total_spots IS NOT NULL)" if parking else "NULL"
    table = con.sql(
        f"""WITH r AS (
                SELECT council, device_id, epoch_us(min(observed_at)) AS first_us,
                       epoch_us(max(observed_at)) AS last_us, count(*) AS readings,
                       arg_max(lat, observed_at) FILTER (WHERE lat IS NOT NULL AND lon IS NOT NULL) AS lat,
                       arg_max(lon, observed_at) FILTER (WHERE lat IS NOT NULL AND lon IS NOT NULL) AS lon,
                       {spots} AS total_spots
                FROM published.{domain} GROUP BY council, device_id
            ), d AS (
                SELECT council, device_id, sum(coverage) AS coverage_sum, {lanes} AS lanes,
                       quantile_disc(expected_interval_s, 0.5) AS interval_s
                FROM published.{domain}_daily GROUP BY council, device_id
            )
            SELECT r.*, d.coverage_sum, d.lanes, d.interval_s
            FROM r LEFT JOIN d USING (council, device_id) ORDER BY council, device_id"""
    ).to_arrow_table()
    if registry is not None:  # a position only the registry gives
        lat, lon = table["lat"].to_pylist(), table["lon"].to_pylist()
        for i, (council, device_id) in enumerate(
            zip(table["council"].to_pylist(), table["device_id"].to_pylist(), strict=True)
        ):
            entry = registry.device(council, device_id)
            if lat[i] is None and entry is not None and entry.lat is not None:
                lat[i], lon[i] = entry.lat, entry.lon
        table = table.set_column(
            table.schema.get_field_index("lat"), "lat", pa.array(lat, pa.float64())
        ).set_column(table.schema.get_field_index("lon"), "lon", pa.array(lon, pa.float64()))
    citizen = (
        set()
        if registry is None
        else {
            (c, d)
            for c, d in zip(table["council"].to_pylist(), table["device_id"].to_pylist(), strict=True)
            if registry.citizen_hosted(c, d)
        }
    )
    # Rounded exactly as the device's published readings are: one council at a time, by device id.
    if citizen:
        parts = []
        for council in sorted(set(table["council"].to_pylist())):
            part = table.filter(pc.equal(table["council"], council))
            parts.append(coarsen_locations(part, {d for c, d in citizen if c == council}))
        table = pa.concat_tables(parts)
    out = []
    for row in table.to_pylist():
        council, device_id = row["council"], row["device_id"]
        entry = registry.device(council, device_id) if registry is not None else None
        declared = None
        if registry is not None and council in registry.councils:
            declared = registry.councils[council].quality.reporting_interval_s.get(device_id)
        council_days = len(days.get(council, ()))
        coverage = None
        if row["coverage_sum"] is not None and council_days:
            coverage = round(min(1.0, row["coverage_sum"] / (council_days * max(1, row["lanes"]))), 4)
        hosted = None if registry is None else (council, device_id) in citizen
        properties: dict[str, Any] = {
            "dataset": dataset.domain.value,
            "council": council,
            "device_id": device_id,
            "model": entry.model if entry is not None else None,
            "citizen_hosted": hosted,
            "position_decimals": CITIZEN_DECIMALS if hosted and row["lat"] is not None else None,
            "reporting_interval_s": declared if declared is not None else _whole(row["interval_s"]),
            "reporting_interval_from": "registry"
            if declared is not None
            else ("readings" if row["interval_s"] is not None else None),
        }
        if parking:
            total = row["total_spots"]
            properties["total_spots"] = total if total is not None or entry is None else entry.total_spots
        properties |= {
            "first_reading": _instant(row["first_us"]),
            "last_reading": _instant(row["last_us"]),
            "readings": row["readings"],
            "days": council_days,
            "coverage": coverage,
        }
        out.append(properties | {"lat": row["lat"], "lon": row["lon"]})
    return out


def feature_collection(rows: list[dict[str, Any]]) -> dict:
    """RFC 7946 FeatureCollection of `device_rows`: Points as [lon, lat], null geometry if unknown."""
    features = []
    for row in rows:
        properties = {k: v for k, v in row.items() if k not in ("lat", "lon")}
        geometry = None if row["lat"] is None else {"type": "Point", "coordinates": [row["lon"], row["lat"]]}
        features.append(
            {
                "type": "Feature",
                "id": f"{row['council']}/{row['device_id']}",
                "geometry": geometry,
                "properties": properties,
            }
        )
    return {"type": "FeatureCollection", "features": features}


def geojson_bytes(collection: dict) -> bytes:
    """The file's bytes: compact, UTF-8, one line per feature (readable and diffable)."""
    head = '{"type": "FeatureCollection", "features": ['
    lines = [json.dumps(f, ensure_ascii=False, separators=(",", ":")) for f in collection["features"]]
    return (head + ("\n" + ",\n".join(lines) + "\n" if lines else "") + "]}\n").encode("utf-8")


def write_devices(
    con: duckdb.DuckDBPyConnection, folder: Path, dataset: Dataset, registry: Registry | None = None
) -> dict:
    """Write `<folder>/devices.geojson` (renamed into place); its path, bytes, sha256 and counts."""
    collection = feature_collection(device_rows(con, dataset, registry))
    data = geojson_bytes(collection)
    path = folder / DEVICES_FILE
    tmp = path.with_name(f".{DEVICES_FILE}.tmp")
    tmp.write_bytes(data)
    replace_into_place(tmp, path)
    features = collection["features"]
    return {
        "path": DEVICES_FILE,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "devices": len(features),
        "positioned": sum(f["geometry"] is not None for f in features),
    }


def devices_resource(domain: str, entry: dict) -> dict:
    """The data package resource of a dataset's `devices.geojson` (a file: bytes and hash checked)."""
    return {
        "name": f"{domain.replace('_', '-')}-devices",
        "path": entry["path"],
        "title": "Devices and where they are",
        "description": "GeoJSON FeatureCollection (RFC 7946): one feature per device with a published "
        "reading, its position ([lon, lat], null when unknown; rounded to 3 decimals for a "
        "citizen-hosted device), model, reporting interval, capacity, first and last reading and "
        "coverage over the release's days.",
        "format": "geojson",
        "mediatype": MEDIA_TYPE,
        "bytes": entry["bytes"],
        "hash": f"sha256:{entry['sha256']}",
        "profile": "data-resource",
        "type": "file",
        "civicflow": {"devices": entry["devices"], "positioned": entry["positioned"]},
    }


def is_devices(resource: dict) -> bool:
    """Whether a data package resource is the dataset's devices listing."""
    return resource.get("path") == DEVICES_FILE
