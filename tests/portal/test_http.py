"""The API over HTTP: paging pinned to a release, validators and caching, gzip, CORS, media types."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from civicflow.contract import Zone
from civicflow.portal.app import create_app
from civicflow.publish.release import latest_release, prune_releases, switch_latest
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration

IMMUTABLE = "public, max-age=31536000, immutable"
LATEST = "public, no-cache"
READINGS = "/api/datasets/parking/readings"
P1 = [f"2016-10-0{d}T{h:02d}:{m:02d}:00Z" for d in (4, 5) for h in range(8, 12) for m in (0, 30)]
DAY = "council=testtown/date=2016-10-04/parking-testtown-2016-10-04"


def republish(layout: Layout, new_id: str, *, drop: str) -> Path:
    """Cut the next release as the publisher would leave it: the latest one's files without the
    partitions of day `drop`, then `latest` switched to it."""
    old = latest_release(layout)
    new = old.with_name(new_id)
    shutil.copytree(old, new)
    meta = json.loads((new / "release.json").read_text())
    (new / "release.json").write_text(json.dumps(meta | {"release": new_id, "path": f"releases/{new_id}"}))
    package = json.loads((new / "parking" / "datapackage.json").read_text())
    package["resources"] = [r for r in package["resources"] if f"date={drop}" not in r["path"]]
    (new / "parking" / "datapackage.json").write_text(json.dumps(package))
    manifest = json.loads((new / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["date"] != drop]
    manifest["partitions"] = [p for p in manifest["partitions"] if p["event_date"] != drop]
    (new / "manifest.json").write_text(json.dumps(manifest | {"release": new_id}))
    switch_latest(layout, new)
    return new


@pytest.fixture
def copied(released, tmp_path) -> Layout:
    """The shared release's published zone, copied: a test may publish over it."""
    layout = Layout(tmp_path / "data")
    shutil.copytree(released.root / "published", layout.zone(Zone.PUBLISHED), symlinks=True)
    return layout


def test_a_paged_download_stays_on_its_release_while_another_is_published(copied):
    client = TestClient(create_app(copied))
    first_id = latest_release(copied).name
    first = client.get(READINGS, params={"device_id": "p1", "limit": 6})
    body = first.json()
    assert body["next"] == f"{READINGS}?device_id=p1&limit=6&release={first_id}&offset=6"
    assert first.headers["link"] == f'<{body["next"]}>; rel="next"'
    assert (first.headers["x-civicflow-release"], first.headers["cache-control"]) == (first_id, LATEST)

    # A release without 2016-10-05 is published between the first page and the second.
    second_id = "000002-20261124T120000Z"
    republish(copied, second_id, drop="2016-10-05")
    latest = client.get(READINGS, params={"device_id": "p1", "limit": 100}).json()
    assert (latest["release"], latest["count"]) == (second_id, 8)

    seen, url, releases = [r["observed_at"] for r in body["rows"]], body["next"], set()
    while url:
        page = client.get(url)
        assert page.headers["cache-control"] == IMMUTABLE  # a pinned release never changes
        releases.add(page.headers["x-civicflow-release"])
        seen += [r["observed_at"] for r in page.json()["rows"]]
        url = page.json()["next"]
        assert url is None or f"release={first_id}" in page.headers["link"]
    assert (seen, releases) == (P1, {first_id})  # every row of the first release, once, in order

    # Once the first release is removed, its pages and files answer 410, saying what to do.
    assert prune_releases(copied, keep=1) == [first_id]
    gone = client.get(body["next"])
    assert gone.status_code == 410
    assert gone.json()["detail"] == (
        f"release {first_id} is no longer kept (older releases are removed as new ones are published): "
        f"start again from the first page, without release=, to read the latest release, {second_id}"
    )
    old_file = client.get(f"/releases/{first_id}/parking/{DAY}.parquet")
    assert old_file.status_code == 410 and second_id in old_file.json()["detail"]
    assert client.get(f"/releases/{second_id}/parking/{DAY}.parquet").status_code == 200


def test_a_release_that_never_was_is_a_404_and_a_malformed_one_a_422(client):
    unknown = client.get(READINGS, params={"release": "000009-20300101T000000Z"})
    assert (unknown.status_code, unknown.json()["detail"]) == (
        404,
        "there is no release 000009-20300101T000000Z: start again from the first page, without "
        "release=, to read the latest release instead",
    )
    malformed = client.get(READINGS, params={"release": "../../latest"})
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == ["query", "release"]
    assert (
        "release must be a release id such as 000042-20261123T120000Z" in malformed.json()["detail"][0]["msg"]
    )


def test_released_files_are_immutable_and_validated_by_their_sha256(client, released):
    release = latest_release(released)
    url = f"/releases/{release.name}/parking/{DAY}.parquet"
    data = (release / "parking" / f"{DAY}.parquet").read_bytes()
    answer = client.get(url)
    assert answer.content == data
    assert answer.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert answer.headers["cache-control"] == IMMUTABLE
    assert answer.headers["content-type"] == "application/vnd.apache.parquet"
    assert "content-encoding" not in answer.headers  # zstd inside: gzip would save nothing
    again = client.get(url, headers={"If-None-Match": answer.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")
    assert (again.headers["etag"], again.headers["cache-control"]) == (answer.headers["etag"], IMMUTABLE)
    other = client.get(url, headers={"If-None-Match": '"0000", W/"1111"'})
    assert (other.status_code, other.content) == (200, data)
    # The Table Schemas and council packages that a data package names by path are served too.
    for name in ("schema-hourly.json", "testtown.package.json", "datapackage.json"):
        meta = client.get(f"/releases/{release.name}/parking/{name}")
        assert meta.status_code == 200, name
        assert meta.content == (release / "parking" / name).read_bytes()
        assert (meta.headers["content-type"], meta.headers["cache-control"]) == (
            "application/json",
            IMMUTABLE,
        )


def test_latest_answers_are_revalidated_and_a_304_costs_no_query(client, released, monkeypatch):
    release = latest_release(released).name
    answer = client.get(READINGS, params={"device_id": "p2", "limit": 3})
    tag = answer.headers["etag"]
    assert (answer.headers["cache-control"], answer.headers["x-civicflow-release"]) == (LATEST, release)

    def no_query(*args, **kwargs):
        raise AssertionError("a 304 must not run the query")

    monkeypatch.setattr("civicflow.portal.app.run_query", no_query)
    again = client.get(READINGS, params={"device_id": "p2", "limit": 3}, headers={"If-None-Match": tag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", tag)
    monkeypatch.undo()
    other = client.get(READINGS, params={"device_id": "p2", "limit": 2}, headers={"If-None-Match": tag})
    assert other.status_code == 200 and other.headers["etag"] != tag  # another query, another answer
    pinned = client.get(READINGS, params={"device_id": "p2", "limit": 3, "release": release})
    assert pinned.headers["cache-control"] == IMMUTABLE
    for path in ("/api/datasets", "/api/releases", "/catalog.jsonld", "/catalog.ttl"):
        first = client.get(path)
        assert first.headers["cache-control"] == LATEST, path
        assert client.get(path, headers={"If-None-Match": first.headers["etag"]}).status_code == 304, path
    for path in ("/", "/datasets/parking", "/releases", "/docs"):
        assert client.get(path).headers["cache-control"] == LATEST, path


def test_answers_are_gzipped_when_accepted_except_parquet_and_head(client):
    params = {"limit": 20}
    plain = client.get(READINGS, params=params, headers={"Accept-Encoding": "identity"})
    packed = client.get(READINGS, params=params, headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in packed.headers["vary"]
    assert packed.content == plain.content  # the same answer, decoded
    assert int(packed.headers["content-length"]) == packed.num_bytes_downloaded < len(plain.content) / 3
    # The compressed answer's ETag is weak, and answers If-None-Match as the plain one does.
    assert packed.headers["etag"] == f"W/{plain.headers['etag']}"
    for sent in (packed.headers["etag"], plain.headers["etag"]):
        assert client.get(READINGS, params=params, headers={"If-None-Match": sent}).status_code == 304
    revalidated = client.get(
        READINGS, params=params, headers={"If-None-Match": packed.headers["etag"], "Accept-Encoding": "gzip"}
    )
    assert revalidated.headers["etag"] == packed.headers["etag"]
    parquet = client.get(
        READINGS, params={**params, "format": "parquet"}, headers={"Accept-Encoding": "gzip"}
    )
    assert "content-encoding" not in parquet.headers
    head = client.head(READINGS, params=params, headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in head.headers
    assert int(head.headers["content-length"]) == len(plain.content)


def test_any_site_may_read_but_not_write_nor_send_credentials(client):
    origin = {"Origin": "https://maps.example.org"}
    answer = client.get(READINGS, params={"limit": 2}, headers=origin)
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in answer.headers
    exposed = {h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert {"link", "etag", "x-civicflow-release", "retry-after"} <= exposed
    preflight = client.options(
        READINGS,
        headers=origin
        | {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "If-None-Match"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert preflight.headers["access-control-allow-methods"] == "GET, HEAD, OPTIONS"
    refused = client.options(READINGS, headers=origin | {"Access-Control-Request-Method": "POST"})
    assert refused.status_code == 400
    assert client.post(READINGS, headers=origin).status_code == 405


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        (f"{READINGS}?limit=2", "application/json"),
        (f"{READINGS}?limit=2&format=csv", "text/csv; charset=utf-8"),
        (f"{READINGS}?limit=2&format=parquet", "application/vnd.apache.parquet"),
        ("/api/datasets", "application/json"),
        ("/api/releases", "application/json"),
        (f"/releases/{{release}}/parking/{DAY}.csv", "text/csv; charset=utf-8"),
        (f"/releases/{{release}}/parking/{DAY}.parquet", "application/vnd.apache.parquet"),
        ("/releases/{release}/parking/datapackage.json", "application/json"),
        ("/catalog.jsonld", "application/ld+json"),
        ("/catalog.ttl", "text/turtle; charset=utf-8"),
        ("/releases", "text/html; charset=utf-8"),
        ("/datasets/parking/data-docs/testtown/2016-10-04", "text/html; charset=utf-8"),
    ],
)
def test_every_answer_names_its_media_type(client, released, path, media_type):
    answer = client.get(path.format(release=latest_release(released).name))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == media_type
