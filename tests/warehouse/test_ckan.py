"""CKAN push against a stand-in CKAN Action API on a free local port, which records every call."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from factories import LIMITS, car_park, land
from pydantic import SecretStr

from civicflow.contract import LICENCE, OGL_ATTRIBUTION
from civicflow.errors import TransientError
from civicflow.jobs.publication import gate_and_publish
from civicflow.registry import load_registry
from civicflow.settings import CkanSettings, PublishSettings
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration
NOW = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
KEY = "ckan-key-do-not-log-3f9a"
BASE = "https://data.example.org/civicflow/"
OGL = LICENCE["path"]


class StandIn(BaseHTTPRequestHandler):
    """package_show answers 404 until package_create; everything else succeeds."""

    def do_POST(self):  # noqa: N802 - http.server's name
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        action = self.path.removeprefix("/api/3/action/")
        server.calls.append((action, self.headers.get("Authorization"), body))
        if server.fail:
            return self._answer(503, {"success": False})
        if action == "package_show":
            package = server.packages.get(body["id"])
            if package is None:
                return self._answer(404, {"success": False, "error": {"__type": "Not Found Error"}})
            return self._answer(200, {"success": True, "result": package})
        if action == "package_create":
            server.packages[body["name"]] = {"id": f"id-{body['name']}", **body, "resources": []}
            return self._answer(200, {"success": True, "result": server.packages[body["name"]]})
        if action == "resource_create":
            package = next(p for p in server.packages.values() if p["id"] == body["package_id"])
            package["resources"].append({"id": f"r{len(package['resources'])}", **body})
        return self._answer(200, {"success": True, "result": {}})

    def _answer(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def ckan():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    server.calls, server.packages, server.fail = [], {}, False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_release_is_pushed_once_with_exact_calls_and_the_key_is_never_logged(tmp_path, ckan, caplog):
    caplog.set_level(logging.DEBUG)
    layout = Layout(tmp_path / "data")
    con = connect(layout.warehouse)
    settings = PublishSettings(
        base_url=BASE,
        ckan=CkanSettings(
            url=f"http://127.0.0.1:{ckan.server_port}",
            api_key=SecretStr(KEY),
            organization="testtown-council",
        ),
    )
    try:
        land(layout, [car_park("p1", "2026-03-02T08:00:00Z", 10), car_park("p1", "2026-03-02T09:00:00Z", 20)])
        stage_segments(layout, con, LIMITS, now=NOW)
        ckan.fail = True
        with pytest.raises(TransientError, match="CKAN package_show answered 503"):
            gate_and_publish(layout, con, now=NOW, publication=settings)
        assert layout.latest.is_symlink()  # the release stands; the push is retried by the next run
        ckan.fail, ckan.calls[:] = False, []
        assert gate_and_publish(layout, con, now=NOW, publication=settings).validated == 0
        calls = list(ckan.calls)
        assert gate_and_publish(layout, con, now=NOW, publication=settings).validated == 0
    finally:
        con.close()
    assert len(ckan.calls) == len(calls)  # pushed once: the next run found nothing new to push

    # a day's 8 files, and the month's and the year's archives (Parquet and gzipped CSV)
    assert [a for a, _, _ in calls] == ["package_show", "package_create"] + ["resource_create"] * (8 + 4)
    assert {auth for _, auth, _ in calls} == {KEY}
    name = "civicflow-parking-testtown"
    assert calls[0][2] == {"id": name}
    created = calls[1][2]
    assert created == {
        "name": name,
        "title": "Car park and parking bay occupancy: Testtown",
        "notes": created["notes"],
        "license_id": "uk-ogl",
        "tags": [
            {"name": t} for t in ("smart city", "parking", "testtown", "OffStreetParking", "ParkingSpot")
        ],
        "extras": [
            {"key": "licence", "value": LICENCE["title"]},
            {"key": "licence_url", "value": OGL},
            {"key": "attribution", "value": OGL_ATTRIBUTION},
        ],
        "owner_org": "testtown-council",
    }
    assert created["notes"].endswith(f"\n\nAttribution: {OGL_ATTRIBUTION}")
    package = json.loads((layout.latest / "parking" / "datapackage.json").read_text())
    # Every file but devices.geojson, which holds every council's devices: no council's distribution.
    listed = {r["name"]: r for r in package["resources"] if r["path"] != "devices.geojson"}
    for _, _, body in calls[2:]:
        r = listed[body["name"]]
        assert body == {
            "package_id": f"id-{name}",
            "name": r["name"],
            "description": body["description"],
            "url": f"{BASE}latest/parking/{r['path']}",
            "format": {"csv": "CSV", "parquet": "Parquet"}[r["format"]],
            "mimetype": "application/gzip" if r.get("compression") == "gz" else r["mediatype"],
            "size": r["bytes"],
            "hash": r["hash"],
        }
        assert body["description"].endswith(f"\n\nAttribution: {OGL_ATTRIBUTION}")
    assert sorted(b["name"] for _, _, b in calls[2:]) == sorted(listed)
    assert KEY not in caplog.text
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file() and path.suffix != ".duckdb":
            assert KEY.encode() not in path.read_bytes(), path


def test_the_shipped_registrys_licence_and_attribution_reach_ckan(tmp_path, ckan):
    """Aberdeen's citizen air-quality data is under ODbL with Sensor.Community's attribution
    (registry/aberdeen.toml); an Open Government Licence council carries the licence's statement."""
    registry = load_registry()
    aberdeen = registry.councils["aberdeen"]
    assert aberdeen.attribution and aberdeen.licence is not None
    layout = Layout(tmp_path / "data")
    con = connect(layout.warehouse)
    settings = PublishSettings(
        base_url=BASE, ckan=CkanSettings(url=f"http://127.0.0.1:{ckan.server_port}", api_key=SecretStr(KEY))
    )
    air = [
        (
            f"city/aberdeen/air_quality/esp8266-{i}",
            {"observed_at": f"2026-03-02T08:{m:02d}:00Z", "no2": 30.5, "lat": 57.14, "lon": -2.1},
        )
        for i in (1, 2)
        for m in (0, 30)
    ]
    try:
        land(layout, [*air, car_park("p1", "2026-03-02T08:00:00Z", 10)])
        stage_segments(layout, con, LIMITS, now=NOW)
        gate_and_publish(layout, con, now=NOW, licences=registry.licences(), publication=settings)
    finally:
        con.close()

    created = {body["name"]: body for action, _, body in ckan.calls if action == "package_create"}
    assert sorted(created) == ["civicflow-air_quality-aberdeen", "civicflow-parking-testtown"]
    expected = {
        "civicflow-air_quality-aberdeen": (
            "odc-odbl",
            aberdeen.licence.title,
            aberdeen.licence.path,
            aberdeen.attribution,
        ),
        "civicflow-parking-testtown": ("uk-ogl", LICENCE["title"], OGL, OGL_ATTRIBUTION),
    }
    for name, (licence_id, title, url, attribution) in expected.items():
        package = created[name]
        assert package["license_id"] == licence_id
        assert package["extras"] == [
            {"key": "licence", "value": title},
            {"key": "licence_url", "value": url},
            {"key": "attribution", "value": attribution},
        ]
        assert package["notes"].endswith(f"\n\nAttribution: {attribution}")
        resources = [
            b for a, _, b in ckan.calls if a == "resource_create" and b["package_id"] == f"id-{name}"
        ]
        assert len(resources) == 8 + 4
        for r in resources:
            assert r["description"].endswith(f"\n\nAttribution: {attribution}"), r["name"]
