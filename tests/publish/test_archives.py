"""Monthly and yearly archives of a council's readings in every release (publish/archives.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from datetime import UTC, date, datetime, timedelta

import duckdb
import frictionless
import pyarrow as pa
import pyarrow.parquet as pq

from civicflow.contract import DATASETS, Domain
from civicflow.publish.datapackage import archive_of, write_datapackage
from civicflow.publish.files import allowlist
from civicflow.publish.partition import publish_partition
from civicflow.publish.release import latest_release, release

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
PARKING = DATASETS[Domain.PARKING]
DAYS = [date(2026, 2, 27), date(2026, 2, 28), date(2026, 3, 1), date(2026, 3, 2)]


def rows_of(day: date, extra: int = 0) -> pa.Table:
    """Three car parks, four readings each (out of order: the publisher sorts them), `extra` more."""
    start = datetime(day.year, day.month, day.day, 8, tzinfo=UTC)
    readings = [(f"p{d}", start + timedelta(minutes=30 * i)) for i in range(4 + extra) for d in (3, 1, 2)]
    n = len(readings)
    table = pa.table(
        {
            "council": ["testtown"] * n,
            "device_id": [d for d, _ in readings],
            "observed_at": pa.array([t for _, t in readings], pa.timestamp("us", tz="UTC")),
            "occupied_spots": [(7 * i + day.day) % 100 for i in range(n)],
            "total_spots": [100] * n,
        }
    )
    for c in allowlist(PARKING):
        if c not in table.column_names:
            table = table.append_column(c, pa.nulls(n))
    return table


def publish(con, layout, days, now, version=1, extra=0):
    for day in days:
        publish_partition(con, layout, PARKING, "testtown", day, version, rows_of(day, extra), now)
    return release(con, layout, now=now)


def package_of(path):
    return json.loads((path / "parking" / "datapackage.json").read_text())


def archives_of(package) -> dict[str, dict]:
    return {r["path"]: r for r in package["resources"] if archive_of(r) is not None}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_archives_hold_their_days_rows_are_listed_exactly_and_only_a_changed_month_is_rebuilt(wh):
    layout, con = wh
    publish(con, layout, DAYS, NOW)
    first = latest_release(layout)
    base = first / "parking"
    package = package_of(first)
    archives = archives_of(package)
    folder = "archives/council=testtown"
    assert sorted(archives) == sorted(
        f"{folder}/parking-testtown-{p}{s}"
        for p in ("2026-02", "2026-03", "2026")
        for s in (".parquet", ".csv.gz")
    )

    # Every archive's bytes and sha256 are those the package lists; the package is valid as a whole.
    for path, r in archives.items():
        data = (base / path).read_bytes()
        assert (len(data), r["hash"]) == (r["bytes"], f"sha256:{sha256(data)}"), path
    march = archives[f"{folder}/parking-testtown-2026-03.csv.gz"]
    assert (march["format"], march["compression"], march["mediatype"]) == ("csv", "gz", "text/csv")
    assert march["civicflow"] == {
        "archive": "month",
        "council": "testtown",
        "period": "2026-03",
        "start": "2026-03-01",
        "end": "2026-03-31",
        "days": 2,
    }
    assert archives[f"{folder}/parking-testtown-2026.parquet"]["civicflow"]["days"] == 4
    report = frictionless.validate(str(base / "datapackage.json"))
    assert report.valid, report.flatten(["rowNumber", "fieldName", "type", "note"])

    # A month's archive holds exactly its days' rows, in their order, with their columns.
    def day_files(days, suffix):
        return [base / f"council=testtown/date={d}/parking-testtown-{d}{suffix}" for d in days]

    for period, days in (("2026-03", DAYS[2:]), ("2026-02", DAYS[:2]), ("2026", DAYS)):
        archive = pq.read_table(base / f"{folder}/parking-testtown-{period}.parquet")
        assert archive.column_names == list(allowlist(PARKING))
        assert archive.equals(pa.concat_tables(pq.read_table(p) for p in day_files(days, ".parquet")))
        # (rows: the CSV's resource says, as a day's CSV does for its Parquet twin)
        assert (
            archive.num_rows
            == 12 * len(days)
            == archives[f"{folder}/parking-testtown-{period}.csv.gz"]["rows"]
        )
        # The gzipped CSV is the day CSV files under one header, and reads as the same rows.
        text = gzip.decompress((base / f"{folder}/parking-testtown-{period}.csv.gz").read_bytes()).decode()
        csvs = [p.read_text() for p in day_files(days, ".csv")]
        assert text == csvs[0].split("\n", 1)[0] + "\n" + "".join(c.split("\n", 1)[1] for c in csvs)
        csv_rows = duckdb.sql(
            f"SELECT * FROM read_csv('{base / folder}/parking-testtown-{period}.csv.gz')"
        ).fetchall()
        assert len(csv_rows) == archive.num_rows
        assert [r[1] for r in csv_rows] == archive["device_id"].to_pylist()

    # A late reading changes 28 February: February and 2026 are rebuilt, March is carried over
    # (the same file, linked into the new release).
    publish(con, layout, [DAYS[1]], NOW + timedelta(hours=1), version=2, extra=1)
    second = latest_release(layout)
    assert second != first
    again = archives_of(package_of(second))
    assert sorted(again) == sorted(archives)
    changed = {p for p in archives if again[p]["hash"] != archives[p]["hash"]}
    assert changed == {
        f"{folder}/parking-testtown-{p}{s}" for p in ("2026-02", "2026") for s in (".parquet", ".csv.gz")
    }
    for path in archives:
        old, new = (first / "parking" / path), (second / "parking" / path)
        assert sha256(new.read_bytes()) == again[path]["hash"].removeprefix("sha256:")
        if path not in changed:
            assert new.read_bytes() == old.read_bytes()
            assert os.stat(new).st_ino == os.stat(old).st_ino  # one file, in both releases
    february = pq.read_table(second / "parking" / f"{folder}/parking-testtown-2026-02.parquet")
    assert february.num_rows == 12 + 15
    assert pq.read_table(first / "parking" / f"{folder}/parking-testtown-2026-02.parquet").num_rows == 24

    # Built again from the same day files, every archive has the same bytes.
    work = layout.published_dataset("parking")
    shutil.rmtree(work / "archives")
    write_datapackage(con, layout, PARKING)
    for path in archives:
        assert (work / path).read_bytes() == (second / "parking" / path).read_bytes(), path


def test_the_catalogue_lists_each_archive_with_its_period_size_and_checksum(wh):
    layout, con = wh
    publish(con, layout, DAYS[2:], NOW)
    catalog = json.loads(layout.catalog("jsonld").read_text())
    dists = {
        d["@id"].rsplit("/", 1)[1]: d
        for node in catalog["@graph"]
        if node.get("@type") == "dcat:Dataset"
        for d in node["dcat:distribution"]
    }
    package = package_of(latest_release(layout))
    for path, r in archives_of(package).items():
        dist = dists[path.rsplit("/", 1)[1]]
        assert dist["dcat:byteSize"]["@value"] == str(r["bytes"])
        assert dist["spdx:checksum"]["spdx:checksumValue"]["@value"] == r["hash"].removeprefix("sha256:")
        start, end = r["civicflow"]["start"], r["civicflow"]["end"]
        assert (
            dist["dct:temporal"]["dcat:startDate"]["@value"],
            dist["dct:temporal"]["dcat:endDate"]["@value"],
        ) == (
            start,
            end,
        )
        if path.endswith(".csv.gz"):
            assert dist["dcat:mediaType"]["@id"].endswith("/text/csv")
            assert dist["dcat:compressFormat"]["@id"].endswith("/application/gzip")
        else:
            assert dist["dcat:mediaType"]["@id"].endswith("/application/vnd.apache.parquet")
    assert dists["parking-testtown-2026-03.parquet"]["dct:temporal"]["dcat:endDate"]["@value"] == "2026-03-31"
    assert dists["parking-testtown-2026.csv.gz"]["dct:temporal"]["dcat:startDate"]["@value"] == "2026-01-01"
