"""The portal serves a release's monthly and yearly archives (publish/archives.py) as they are stored."""

from __future__ import annotations

import gzip
import hashlib
import json

from civicflow.publish.release import latest_release


def test_archives_are_served_with_their_media_types_and_bytes(released, client):
    release = latest_release(released)
    package = json.loads((release / "parking" / "datapackage.json").read_text())
    archives = {r["path"]: r for r in package["resources"] if "archive" in r.get("civicflow", {})}
    folder = "archives/council=testtown"
    assert set(archives) == {
        f"{folder}/parking-testtown-{p}{s}" for p in ("2016-10", "2016") for s in (".parquet", ".csv.gz")
    }
    types = {".parquet": "application/vnd.apache.parquet", ".csv.gz": "application/gzip"}
    for path, r in archives.items():
        answer = client.get(f"/releases/{release.name}/parking/{path}", headers={"Accept-Encoding": "gzip"})
        assert answer.status_code == 200, path
        assert answer.headers["content-type"] == types[path[path.index(".") :]]
        assert "content-encoding" not in answer.headers  # the stored bytes, never gzip over gzip
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert (len(answer.content), f"sha256:{hashlib.sha256(answer.content).hexdigest()}") == (
            r["bytes"],
            r["hash"],
        )
        # Validated by the sha256 the data package lists, as the day files are.
        etag = f'"{r["hash"].removeprefix("sha256:")}"'
        assert answer.headers["etag"] == etag, path
        again = client.get(f"/releases/{release.name}/parking/{path}", headers={"If-None-Match": etag})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag), path
    month = client.get(f"/releases/{release.name}/parking/{folder}/parking-testtown-2016-10.csv.gz").content
    lines = gzip.decompress(month).decode().splitlines()
    assert len(lines) == 1 + 8 + 8 + 4  # header; p1 on two days, p2 on one
    assert (
        client.get(f"/releases/{release.name}/parking/{folder}/parking-testtown-2016-09.csv.gz").status_code
        == 404
    )
