"""The portal reads a release once and keeps it, and follows `latest` to the next release at once."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from civicflow.contract import Zone
from civicflow.portal.app import create_app
from civicflow.portal.release import load_release
from civicflow.publish.release import latest_release, switch_latest
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration


def test_a_release_is_read_once_and_the_next_one_is_served_as_soon_as_latest_moves(released, tmp_path):
    layout = Layout(tmp_path / "data")
    shutil.copytree(released.root / "published", layout.zone(Zone.PUBLISHED), symlinks=True)
    first = load_release(layout)
    assert load_release(layout) is first  # nothing re-read while latest stays put
    client = TestClient(create_app(layout))
    assert f"release {first.id}" in client.get("/").text

    # The publisher cuts a new release (here: the same files under the next id) and moves latest.
    old = latest_release(layout)
    new_id = "000002-20261124T120000Z"
    new = old.with_name(new_id)
    shutil.copytree(old, new)
    meta = json.loads((new / "release.json").read_text())
    (new / "release.json").write_text(json.dumps(meta | {"release": new_id, "path": f"releases/{new_id}"}))
    switch_latest(layout, new)

    second = load_release(layout)
    assert second.id == new_id and second is not first
    assert second.datasets["parking"].directory == new / "parking"
    page = client.get("/").text
    assert f"release {new_id}" in page
    answer = client.get("/api/datasets/parking/readings", params={"device_id": "p2"})
    assert answer.headers["x-civicflow-release"] == new_id
    assert answer.json()["count"] == 4
