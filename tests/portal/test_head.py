"""HEAD wherever GET: same status and headers, no body, over a real uvicorn (they were a 405)."""

from __future__ import annotations

import httpx
import pytest

from civicflow.publish.release import latest_release

pytestmark = pytest.mark.integration

# Headers that describe the body or the answer; Date may tick between the two requests.
SAME = ("content-length", "content-type", "etag", "last-modified", "link", "x-civicflow-release")


@pytest.fixture(scope="module")
def http(portal_url):
    # HEAD describes the uncompressed answer (gzip would need the body): compare it with that.
    with httpx.Client(base_url=portal_url, timeout=30, headers={"Accept-Encoding": "identity"}) as session:
        yield session


def paths(released) -> list[str]:
    release = latest_release(released).name
    return [
        "/",
        "/?q=occupancy",
        "/datasets/parking",
        "/datasets/parking?council=testtown&device=p2&measure=occupancy",
        f"/releases/{release}/parking/data-docs/council=testtown/date=2016-10-04/v1.html",
        f"/releases/{release}/parking/data-docs/data-docs.css",
        f"/releases/{release}/parking/datapackage.json",
        f"/releases/{release}/parking/council=testtown/date=2016-10-04/parking-testtown-2016-10-04.parquet",
        f"/releases/{release}/parking/council=testtown/date=2016-10-04/parking-testtown-2016-10-04.csv",
        "/catalog.jsonld",
        "/catalog.ttl",
        "/docs",
        "/openapi.json",
        "/api/datasets",
        "/api/datasets/parking/readings?device_id=p1&limit=3",
        "/api/datasets/parking/hourly?format=csv&limit=2",
        "/api/datasets/air_quality/council_daily?format=parquet",
    ]


def test_head_answers_what_get_answers_without_the_body(http, released):
    for path in paths(released):
        get, head = http.get(path), http.head(path)
        assert (get.status_code, head.status_code) == (200, 200), path
        assert head.content == b"", path
        assert int(head.headers["content-length"]) == len(get.content) > 0, path
        assert {h: head.headers.get(h) for h in SAME} == {h: get.headers.get(h) for h in SAME}, path


def test_head_of_a_download_has_its_etag_and_size(http, released):
    release = latest_release(released)
    relpath = "council=testtown/date=2016-10-05/parking-testtown-2016-10-05.parquet"
    head = http.head(f"/releases/{release.name}/parking/{relpath}")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == (release / "parking" / relpath).stat().st_size
    assert head.headers["etag"] == http.get(f"/releases/{release.name}/parking/{relpath}").headers["etag"]
    catalogue = http.head("/catalog.jsonld")
    assert int(catalogue.headers["content-length"]) == released.catalog("jsonld").stat().st_size
    assert catalogue.headers["etag"] == http.get("/catalog.jsonld").headers["etag"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/datasets/traffic", 404),
        ("/releases/000000-20000101T000000Z/parking/datapackage.json", 404),
        ("/api/datasets/traffic/readings", 404),
        ("/api/datasets/parking/readings?start=0001-01-01", 422),
        ("/api/datasets/parking/readings?limit=0", 422),
        ("/no/such/page", 404),
    ],
)
def test_head_of_a_refusal_is_the_same_refusal_without_the_body(http, path, status):
    get, head = http.get(path), http.head(path)
    assert (get.status_code, head.status_code) == (status, status)
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(get.content) > 0


def test_other_methods_are_still_refused(http):
    answer = http.post("/api/datasets")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, HEAD"
