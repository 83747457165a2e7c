"""Where the sensors are, in the portal: each dataset's devices, their map and a page per device.

Everything is read from the release's `<dataset>/devices.geojson` (publish/devices.py) and its
readings and hourly files, so a page or an answer describes exactly one release:

- `GET /api/datasets/<dataset>/devices`: the devices as JSON (the features' properties with `lat`
  and `lon`), or with `format=geojson` the release's GeoJSON file itself, byte for byte;
  `council=` keeps one council's.
- `/datasets/<dataset>/devices/<council>/<device>`: a device's page: what the listing says of it,
  its latest readings, a chart of its hourly means (civicflow.portal.chart) and the rejection summary last
  published to its gateway (civicflow.portal.feedback: read from the warehouse, not the release).
- The dataset page's "Devices" section: per council, a map drawn on the server (civicflow.portal.map) beside
  the devices table that is its text alternative.
"""

import threading
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response

from civicflow.portal.chart import hourly_chart
from civicflow.portal.feedback import DeviceFeedback
from civicflow.portal.http import matches, not_modified
from civicflow.portal.map import Point, device_map
from civicflow.portal.query import MAX_LIMIT, run_query
from civicflow.portal.query import Query as RowQuery
from civicflow.portal.release import DatasetRelease, ReleaseView
from civicflow.publish.devices import DEVICES_FILE, MEDIA_TYPE

LATEST_READINGS = 10
"""Readings the device page shows, newest first."""
CHART_DAYS = 3
"""Days of hourly means, up to the device's last reading, the device page's chart draws."""
EMPTY = b'{"type": "FeatureCollection", "features": []}\n'


class DeviceFormat(StrEnum):
    JSON = "json"
    GEOJSON = "geojson"


_cache: dict[Path, tuple[bytes, dict]] = {}
_cache_lock = threading.Lock()


def listing(ds: DatasetRelease) -> tuple[bytes, dict]:
    """The dataset's `devices.geojson` in this release: its bytes and the collection they hold.

    A release never changes, so each file is read once; a release cut before devices were listed
    has none (an empty collection).
    """
    path = ds.directory / DEVICES_FILE
    with _cache_lock:
        found = _cache.get(path)
        if found is None:
            data = path.read_bytes() if path.is_file() else EMPTY
            found = (data, orjson.loads(data))
            _cache[path] = found
            while len(_cache) > 16:  # a few releases' datasets
                _cache.pop(next(iter(_cache)))
        return found


def device_records(ds: DatasetRelease, council: str | None = None) -> list[dict]:
    """Each device's properties with its `lat` and `lon` (None: no position), by council and id."""
    records = []
    for feature in listing(ds)[1]["features"]:
        props = feature["properties"]
        if council is not None and props["council"] != council:
            continue
        lon, lat = feature["geometry"]["coordinates"] if feature["geometry"] else (None, None)
        records.append({**props, "lat": lat, "lon": lon})
    return records


def device_href(dataset: str, council: str, device_id: str) -> str:
    return f"/datasets/{quote(dataset)}/devices/{quote(council)}/{quote(device_id)}"


def devices_section(ds: DatasetRelease, dataset: str) -> list[dict]:
    """The dataset page's devices, per council: its table rows and its map (SVG, empty if no device
    has a position)."""
    out = []
    for council in ds.councils:
        records = device_records(ds, council)
        for r in records:
            r["href"] = device_href(dataset, council, r["device_id"])
        points = [
            Point(r["lat"], r["lon"], f"{r['device_id']} ({r['lat']}, {r['lon']})", r["href"])
            for r in records
            if r["lat"] is not None
        ]
        title = f"Map of the {len(points)} devices of {council} with a known position"
        out.append(
            {
                "council": council,
                "devices": records,
                "positioned": len(points),
                "map": device_map(points, title, map_id=f"map-{council}"),
            }
        )
    return out


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def add_devices(
    app: FastAPI,
    *,
    release: Callable[[], ReleaseView],
    dataset_of: Callable[[ReleaseView, str], DatasetRelease],
    validators: Callable[..., dict[str, str]],
    page: Callable[[Request, str, dict], Response],
    datasets: type[StrEnum],
    feedback: Callable[[str, str, str], DeviceFeedback],
) -> None:
    """The devices API and device pages. Add them before `/api/datasets/{dataset}/{kind}`, which
    would otherwise take `devices` for a kind. `feedback(council, domain, device)` is the device's
    published rejection summary."""

    @app.get(
        "/api/datasets/{dataset}/devices",
        summary="Devices of a dataset: where they are and what they report",
        description="Every device with a published reading in the latest release: position (WGS84; "
        "null when neither its readings nor the registry give one; rounded to 3 decimals for a "
        "citizen-hosted device), model, reporting interval, capacity (parking), first and last "
        "reading, and coverage over the release's days. `format=geojson` answers the release's "
        "`devices.geojson` (RFC 7946 FeatureCollection, coordinates [lon, lat]) byte for byte.",
        responses={
            200: {"content": {"application/json": {}, MEDIA_TYPE: {"schema": {"type": "object"}}}},
            304: {"description": "Not modified: the ETag in If-None-Match is still the answer's"},
            404: {"description": "The dataset is not in the release"},
            422: {"description": "A parameter cannot be used as given: `detail` names it"},
        },
    )
    # Without `from __future__ import annotations`: FastAPI reads these annotations at definition
    # time, and `datasets` is the app's enum of the datasets, known only here.
    def devices(
        request: Request,
        dataset: Annotated[datasets, PathParam(description="The dataset (domain)")],  # type: ignore[valid-type]
        council: Annotated[
            str | None, Query(max_length=64, description="Only this council's devices (JSON only)")
        ] = None,
        format: Annotated[
            DeviceFormat, Query(description="json, or geojson: the release's devices.geojson")
        ] = DeviceFormat.JSON,
    ) -> Response:
        current = release()
        ds = dataset_of(current, dataset.value)
        headers = validators(request, current, False)
        if matches(request, headers["ETag"]):
            return not_modified(headers)
        if format is DeviceFormat.GEOJSON:
            if council is not None:
                raise HTTPException(
                    422, "council= is for the JSON answer: the GeoJSON is the release's file, every council"
                )
            return Response(listing(ds)[0], media_type=MEDIA_TYPE, headers=headers)
        records = device_records(ds, council)
        body = {
            "dataset": dataset.value,
            "release": current.id,
            "geojson": f"/releases/{current.id}/{dataset.value}/{DEVICES_FILE}",
            "count": len(records),
            "devices": records,
        }
        return Response(orjson.dumps(body), media_type="application/json", headers=headers)

    @app.get(
        "/datasets/{dataset}/devices/{council}/{device}", response_class=HTMLResponse, include_in_schema=False
    )
    def device_page(request: Request, dataset: str, council: str, device: str, measure: str = ""):
        current = release()
        ds = dataset_of(current, dataset)
        found = next((r for r in device_records(ds, council) if r["device_id"] == device), None)
        if found is None:
            raise HTTPException(
                404, f"release {current.id} lists no device {device!r} of {council} in {dataset}"
            )
        last = _instant(found["last_reading"])
        readings: list[dict] = []
        columns: list[str] = []
        chart: dict[str, Any] = {"measures": [], "measure": "", "unit": "", "svg": "", "points": []}
        if last is not None:
            day = datetime.combine(last.date(), time(0), tzinfo=UTC)
            rows = run_query(
                ds, RowQuery("readings", council, device, start=day, limit=MAX_LIMIT)
            ).to_pylist()
            readings = rows[-LATEST_READINGS:][::-1]
            hidden = {"council", "device_id", "lat", "lon"}
            columns = [c for c in (readings[0] if readings else {}) if c not in hidden]
            columns = [c for c in columns if any(r[c] is not None for r in readings)]
            chart = _device_chart(ds, council, device, day - timedelta(days=CHART_DAYS - 1), measure)
        context = {
            "release": current,
            "dataset": dataset,
            "title": ds.package.get("title", dataset),
            "device": found,
            "readings": readings,
            "columns": columns,
            "chart": chart,
            "feedback": feedback(council, dataset, device),
            "geojson": f"/releases/{current.id}/{dataset}/{DEVICES_FILE}",
        }
        return page(request, "device.html", context)


def _device_chart(ds: DatasetRelease, council: str, device: str, start: datetime, measure: str) -> dict:
    """Hourly means of one measurement of a device from `start` on (the last CHART_DAYS days)."""
    schema = {f["name"]: f for f in ds.schema("hourly").get("fields", [])}
    measures = [name[: -len("_mean")] for name in schema if name.endswith("_mean")]
    rows = run_query(ds, RowQuery("hourly", council, device, start=start, limit=MAX_LIMIT)).to_pylist()
    usable = [m for m in measures if any(r.get(f"{m}_mean") is not None for r in rows)]
    chosen = measure if measure in usable else (usable or [""])[0]
    if not chosen:
        return {"measures": usable, "measure": "", "unit": "", "svg": "", "points": []}
    column = f"{chosen}_mean"
    points = [(r["hour"], r[column]) for r in rows if r[column] is not None]
    unit = schema[column].get("unit") or ""
    return {
        "measures": usable,
        "measure": chosen,
        "unit": unit,
        "points": points,
        "svg": hourly_chart(points, chosen, unit),
    }
