"""Monthly and yearly archives of a dataset's readings, per council (docs/publication.md).

A consumer who wants a month of a council's readings downloads one file instead of one per day.
In the publisher's working tree (and so in every release), beside the day files:

    <dataset>/archives/council=<c>/<dataset>-<c>-<YYYY-MM>.parquet | .csv.gz    one calendar month
    <dataset>/archives/council=<c>/<dataset>-<c>-<YYYY>.parquet | .csv.gz       one calendar year

An archive holds exactly the rows of the day files of its period, in their order: day after day,
each day sorted as its file is (device, lane for traffic, then time), with the same columns (the
dataset's allowlist). The Parquet is built from the day Parquet files (zstd, row groups of at most
8,192 rows, statistics on every column); the CSV is the day CSV files one after another under one
header, gzip-compressed with no name and time in its header. Both are deterministic: the same day
files give the same bytes.

An archive is rebuilt only when the day files of its period changed: `archives/index.json` (in the
working tree, never released) records, per archive, a digest of the day files it was built from
(their dates and sha256 as the publication ledger lists them). A partition published or replaced
in the release being cut changes that digest for its month and year, so a late reading that
changes a closed month rebuilds that month (and its year); every other archive is left as it is,
and a release links the very same file as the release before it, as it does unchanged day files
(publish/release.py). An archive whose period no longer has any published day (an erasure) is
deleted.
"""

from __future__ import annotations

import calendar
import gzip
import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq

from civicflow.contract import Dataset
from civicflow.publish.files import ROW_GROUP_ROWS, _check_allowlist, _sha256, replace_into_place
from civicflow.warehouse.partitions import Publication
from civicflow.warehouse.tables import arrow_schema

ARCHIVES = "archives"
INDEX = f"{ARCHIVES}/index.json"
FORMAT = 1
"""How archives are built: part of every digest, so a change to how they are built rebuilds them all."""
GZIP_LEVEL = 6
READINGS = "readings"
SUFFIXES = {"parquet": ".parquet", "csv": ".csv.gz"}


@dataclass(frozen=True)
class DayFiles:
    """One published day of a council: its readings files (relative to the dataset's folder)."""

    day: date
    parquet: str
    csv: str
    parquet_sha256: str
    csv_sha256: str
    rows: int


def archive_stem(domain: str, council: str, period: str) -> str:
    """`<dataset>-<council>-<YYYY-MM>` or `<dataset>-<council>-<YYYY>`."""
    return f"{domain}-{council}-{period}"


def archive_path(domain: str, council: str, period: str, fmt: str) -> str:
    """An archive's path relative to the dataset's folder (`fmt`: parquet or csv)."""
    return f"{ARCHIVES}/council={council}/{archive_stem(domain, council, period)}{SUFFIXES[fmt]}"


def period_bounds(period: str) -> tuple[date, date]:
    """The first and last day of a calendar month (`YYYY-MM`) or year (`YYYY`)."""
    if len(period) == 4:
        year = int(period)
        return date(year, 1, 1), date(year, 12, 31)
    year, month = int(period[:4]), int(period[5:7])
    return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])


def _days_by_period(ledger: list[Publication]) -> dict[tuple[str, str], list[DayFiles]]:
    """(council, period) -> the published days of that month or year, in date order."""
    out: dict[tuple[str, str], list[DayFiles]] = {}
    for pub in sorted(ledger, key=lambda p: (p.ref.council, p.ref.event_date)):
        entries = {e["format"]: e for e in pub.files["files"] if e["kind"] == READINGS}
        if set(entries) != {"parquet", "csv"}:
            continue
        day = pub.ref.event_date
        files = DayFiles(
            day,
            entries["parquet"]["path"],
            entries["csv"]["path"],
            entries["parquet"]["sha256"],
            entries["csv"]["sha256"],
            entries["parquet"]["rows"],
        )
        for period in (f"{day:%Y-%m}", f"{day:%Y}"):
            out.setdefault((pub.ref.council, period), []).append(files)
    return out


def _digest(days: list[DayFiles]) -> str:
    """What an archive is built from: its days' files, by date and sha256."""
    sources = [FORMAT, *([d.day.isoformat(), d.parquet_sha256, d.csv_sha256] for d in days)]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def write_archives(folder: Path, dataset: Dataset, ledger: list[Publication]) -> list[dict]:
    """Bring a dataset's archives in `folder` (its working tree) up to date with the ledger.

    Returns one entry per archive file, by council, period (months, then years) and format:
    council, period (`YYYY-MM` or `YYYY`), start, end, days, format, path, bytes, sha256, rows.
    """
    domain = dataset.domain.value
    index_path = folder / INDEX
    try:
        old = json.loads(index_path.read_text(encoding="utf-8"))["archives"]
    except (OSError, ValueError, KeyError):
        old = {}
    new: dict[str, dict] = {}
    built = 0
    periods = _days_by_period(ledger)
    order = sorted(periods, key=lambda k: (k[0], len(k[1]) == 4, k[1]))  # a council's months, then years
    for council, period in order:
        days = periods[(council, period)]
        key = archive_stem(domain, council, period)
        digest = _digest(days)
        known = old.get(key)
        if known is None or known["sources"] != digest or not _intact(folder, known):
            known = _build(folder, dataset, council, period, days) | {"sources": digest}
            built += 1
        new[key] = known
    for key, entry in old.items():  # archives of periods with no published day left
        if key not in new:
            for f in entry["files"].values():
                (folder / f["path"]).unlink(missing_ok=True)
    if new != old or not index_path.is_file():
        index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = index_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "archives": new}, indent=1) + "\n", encoding="utf-8")
        replace_into_place(tmp, index_path)
    return [
        {k: v for k, v in entry.items() if k not in ("files", "sources")} | {"format": fmt} | meta
        for entry in new.values()
        for fmt, meta in entry["files"].items()
    ]


def _intact(folder: Path, entry: dict) -> bool:
    """Whether an archive's files are still there, at the size the index gives."""
    for meta in entry["files"].values():
        path = folder / meta["path"]
        if not path.is_file() or path.stat().st_size != meta["bytes"]:
            return False
    return True


def _build(folder: Path, dataset: Dataset, council: str, period: str, days: list[DayFiles]) -> dict:
    """Write one archive, Parquet and CSV, each renamed into place; what the index records of it."""
    domain = dataset.domain.value
    start, end = period_bounds(period)
    files = {}
    for fmt in ("parquet", "csv"):
        final = folder / archive_path(domain, council, period, fmt)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp")
        if fmt == "parquet":
            _concat_parquet(folder, dataset, [d.parquet for d in days], tmp)
        else:
            _concat_csv(folder, dataset, [d.csv for d in days], tmp)
        replace_into_place(tmp, final)
        files[fmt] = {
            "path": final.relative_to(folder).as_posix(),
            "bytes": final.stat().st_size,
            "sha256": _sha256(final),
            "rows": sum(d.rows for d in days),
        }
    return {
        "council": council,
        "period": period,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "days": len(days),
        "files": files,
    }


def _concat_parquet(folder: Path, dataset: Dataset, sources: list[str], target: Path) -> None:
    """The day Parquet files one after another, one day in memory at a time."""
    schema = arrow_schema(dataset.published_columns)
    names = [c.name for c in dataset.published_columns]
    with pq.ParquetWriter(target, schema, compression="zstd", write_statistics=True) as writer:
        for source in sources:
            table = pq.read_table(folder / source).select(names).cast(schema)
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
    _check_allowlist(pq.read_schema(target).names, dataset, str(target))


def _concat_csv(folder: Path, dataset: Dataset, sources: list[str], target: Path) -> None:
    """The day CSV files under one header, gzip-compressed deterministically (no name, mtime 0)."""
    header = ",".join(c.name for c in dataset.published_columns)
    with (
        target.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL) as out,
    ):
        out.write(f"{header}\n".encode())
        for source in sources:
            with (folder / source).open("rb") as fh:
                _check_allowlist(fh.readline().decode("utf-8").rstrip("\r\n").split(","), dataset, source)
                shutil.copyfileobj(fh, out, 1 << 20)
