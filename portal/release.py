"""What a release holds, read from its own files (docs/publication.md).

Every request resolves `published/latest` once (or the release it pins, while it is kept) and reads
only under what it resolved to, so a page or an API answer never mixes two releases. Nothing here
reads the staged zone or the publisher's working tree.

A release directory never changes once cut (publish/release.py), so what was read of one is
kept in memory and reused until `latest` points elsewhere: a year of a domain's data packages is
tens of MiB of JSON, which is parsed once per release, not once per request.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path

import orjson

from civicflow.contract import DATASETS, LICENCE, Domain
from civicflow.publish.datapackage import archive_of, council_package_file, rights
from civicflow.publish.devices import DEVICES_FILE
from civicflow.publish.release import DATA_DOCS, DATA_DOCS_STYLESHEET, RELEASE_RE, latest_release, releases
from civicflow.warehouse.layout import Layout

KINDS = ("readings", "hourly", "daily", "council_daily")
"""What the API and downloads serve: the readings and the three aggregates (docs/queries.md)."""
PARTITION_RE = re.compile(r"(?:^|/)council=([^/]+)/date=(\d{4}-\d{2}-\d{2})/")
METADATA_FILES = ("datapackage.json", "schema.json", "quality.json", DEVICES_FILE)
DATA_DOCS_CSS = f"{DATA_DOCS}/{DATA_DOCS_STYLESHEET}"
SCHEMA_FILES = tuple(f"schema-{kind}.json" for kind in KINDS[1:])
"""The aggregates' Table Schemas, which their resources name by path (docs/publication.md)."""


RELEASE_ID = r"^[0-9]{6}-[0-9]{8}T[0-9]{6}Z$"
"""What a release id looks like (`<number>-<UTC time>`), in ASCII digits: checked before any path."""


class NoRelease(LookupError):
    """Nothing has been published yet: `published/latest` does not exist."""


class UnknownRelease(LookupError):
    """No release has this id, and none was removed under it: it never existed (HTTP 404)."""


class ReleaseGone(LookupError):
    """The release is no longer kept: newer releases made it old, or an erasure removed it (HTTP 410)."""

    def __init__(self, release_id: str, latest: str) -> None:
        super().__init__(release_id)
        self.release_id = release_id
        self.latest = latest


@dataclass(frozen=True)
class Resource:
    """One published file of a dataset, as its data package lists it."""

    path: str  # relative to the dataset's folder in the release
    kind: str
    council: str
    day: date
    format: str
    bytes: int
    hash: str
    licence: dict
    attribution: str | None
    schema: dict


@dataclass
class DatasetRelease:
    """A dataset of the release: its package, quality summary and files by council."""

    domain: Domain
    directory: Path
    package: dict
    quality: dict
    resources: list[Resource] = field(default_factory=list)
    archives: dict[str, dict] = field(default_factory=dict)
    """Path -> the package's resource of a monthly or yearly archive (publish/archives.py)."""
    data_docs: dict[tuple[str, date], str] = field(default_factory=dict)
    """(council, day) -> the Data Docs page of the version the release publishes, relative to the
    dataset's folder (the manifest names it)."""
    held_docs: frozenset[str] = frozenset()
    """The Data Docs pages of versions held back now, relative to the dataset's folder."""

    def listed_hash(self, relpath: str) -> str | None:
        """The sha256 (hex) the data package lists for a file, day file or archive, if it lists it."""
        listed = self._by_path.get(relpath)
        found = listed.hash if listed is not None else self.archives.get(relpath, {}).get("hash")
        return found.removeprefix("sha256:") if found else None

    def has_page(self, relpath: str) -> bool:
        """Whether the release holds this Data Docs page (relative to the dataset's folder), as
        `quality.json` names a held-back day's."""
        return relpath in self.held_docs or relpath in self.data_docs.values()

    @cached_property
    def _index(self) -> dict[tuple[str, str, str | None], list[Resource]]:
        """Resources by (kind, format, council), each list in package order and by day.

        `None` as council holds every council's, in package order.
        """
        index: dict[tuple[str, str, str | None], list[Resource]] = {}
        for r in self.resources:
            index.setdefault((r.kind, r.format, None), []).append(r)
            index.setdefault((r.kind, r.format, r.council), []).append(r)
        for key, found in index.items():
            if key[2] is not None:
                found.sort(key=lambda r: r.day)
        return index

    @cached_property
    def _by_council(self) -> dict[str, list[Resource]]:
        out: dict[str, list[Resource]] = {}
        for r in self.resources:
            out.setdefault(r.council, []).append(r)
        return out

    @cached_property
    def _by_path(self) -> dict[str, Resource]:
        return {r.path: r for r in self.resources}

    @cached_property
    def paths(self) -> frozenset[str]:
        return frozenset(self._by_path)

    def resource(self, path: str) -> Resource | None:
        """The listed file at `path` (relative to the dataset's folder), if the package lists one."""
        return self._by_path.get(path)

    @cached_property
    def councils(self) -> list[str]:
        return sorted(self._by_council)

    def files(self, kind: str, council: str | None = None, fmt: str = "parquet") -> list[Resource]:
        return list(self._index.get((kind, fmt, council), ()))

    def files_between(
        self, kind: str, council: str | None, first: date | None, last: date | None, fmt: str = "parquet"
    ) -> list[Resource]:
        """Files of a kind (and council) whose day, from their path, is within [first, last]."""
        if council is None:
            return [
                r
                for r in self._index.get((kind, fmt, None), ())
                if (first is None or r.day >= first) and (last is None or r.day <= last)
            ]
        found = self._index.get((kind, fmt, council), [])
        days = [r.day for r in found]
        lo = 0 if first is None else bisect.bisect_left(days, first)
        hi = len(found) if last is None else bisect.bisect_right(days, last)
        return found[lo:hi]

    def coverage(self, council: str) -> tuple[date, date]:
        days = [r.day for r in self._by_council[council]]
        return min(days), max(days)

    def of_council(self, council: str) -> list[Resource]:
        return list(self._by_council.get(council, ()))

    def days(self, council: str) -> list[date]:
        return sorted({r.day for r in self._by_council.get(council, ())})

    def licence(self, council: str) -> tuple[dict, str | None]:
        for r in self._by_council.get(council, ()):
            return r.licence, r.attribution
        return LICENCE, None

    def schema(self, kind: str) -> dict:
        found = self.files(kind) or self.files(kind, fmt="csv")
        return found[0].schema if found else {"fields": []}


@dataclass
class ReleaseView:
    """The latest release, resolved once."""

    id: str
    path: Path
    published_at: str
    datasets: dict[str, DatasetRelease]


def _kind(path: str) -> str:
    parts = path.split("/")
    return parts[1] if parts[0] == "aggregates" else "readings"


def _described(manifest: dict[str, dict] | None, path: str) -> tuple[str, date, str] | None:
    """A file's council, day and kind: from the release's manifest, or, for a release cut before
    manifests existed, from its `council=`/`date=` folders."""
    if manifest is not None:
        entry = manifest.get(path)
        return None if entry is None else (entry["council"], date.fromisoformat(entry["date"]), entry["kind"])
    match = PARTITION_RE.search(path)
    return None if match is None else (match.group(1), date.fromisoformat(match.group(2)), _kind(path))


def _dataset(domain: Domain, directory: Path, manifest: dict[str, dict] | None = None) -> DatasetRelease:
    package = orjson.loads((directory / "datapackage.json").read_bytes())
    quality_file = directory / "quality.json"
    quality = orjson.loads(quality_file.read_bytes()) if quality_file.is_file() else {}
    result = DatasetRelease(domain, directory, package, quality)
    files: dict[str, dict] = {}
    schemas: dict[bytes, dict] = {}  # thousands of resources share a few Table Schemas: keep one of each
    for res in package["resources"]:
        described = _described(manifest, res["path"])
        if described is None:
            if archive_of(res) is not None:  # a month's or a year's archive: a download, not a day
                result.archives[res["path"]] = res
            continue
        council, day, kind = described
        licence, attribution = rights(res)
        schema = res.get("schema", {"fields": []})
        if isinstance(schema, str):  # a Table Schema file beside the package, shared by a kind's files
            if schema not in files:
                files[schema] = orjson.loads((directory / schema).read_bytes())
            schema = files[schema]
        schema = schemas.setdefault(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS), schema)
        result.resources.append(
            Resource(
                path=res["path"],
                kind=kind,
                council=council,
                day=day,
                format=res["format"],
                bytes=res["bytes"],
                hash=res["hash"],
                licence=licence,
                attribution=attribution,
                schema=schema,
            )
        )
        res["schema"] = schema
    result.files("readings")  # build the indexes now, once, rather than in a request
    result.resource("")
    return result


CACHED_RELEASES = 2
"""Releases kept in memory: the current one, and the one before while requests still read it."""
_cache: OrderedDict[tuple[str, int, int], ReleaseView] = OrderedDict()
_cache_lock = threading.Lock()


def release_number(release_id: str) -> int:
    return int(release_id.split("-", 1)[0])


def _kept(layout: Layout, release_id: str, latest: Path | None) -> Path:
    """The directory of a release by its id, while it is kept; else why not (raised)."""
    if latest is None:
        raise NoRelease(f"nothing published yet under {layout.latest}")
    if not re.fullmatch(RELEASE_ID, release_id) or RELEASE_RE.match(release_id) is None:
        raise UnknownRelease(release_id)
    path = layout.releases / release_id
    if (path / "release.json").is_file():
        return path
    # Release numbers only grow: one at or below the latest's that is not here was removed
    # (releases beyond the retention, or those an erasure deleted), unless a kept one has it.
    number = release_number(release_id)
    taken = {release_number(p.name) for p in releases(layout)}
    if 1 <= number <= release_number(latest.name) and number not in taken:
        raise ReleaseGone(release_id, latest.name)
    raise UnknownRelease(release_id)


def load_release(layout: Layout, release_id: str | None = None) -> ReleaseView:
    """What a release holds (read once per release, then kept): `latest`, resolved once, or the
    release named `release_id` while it is kept (UnknownRelease or ReleaseGone otherwise)."""
    path = latest_release(layout)
    if release_id is not None and (path is None or path.name != release_id):
        path = _kept(layout, release_id, path)
    meta_file = path / "release.json" if path is not None else None
    try:
        stat = meta_file.stat() if meta_file is not None else None
    except FileNotFoundError:
        stat = None
    if path is None or stat is None:
        raise NoRelease(f"nothing published yet under {layout.latest}")
    # The directory and the identity of its release.json: a release cut again under the same
    # name (a test rebuilding a data root, say) is read again.
    key = (str(path.resolve()), stat.st_ino, stat.st_mtime_ns)
    with _cache_lock:  # one reader parses a new release; concurrent requests wait for it
        view = _cache.get(key)
        if view is None:
            view = _read_release(path)
            _cache[key] = view
            while len(_cache) > CACHED_RELEASES:
                _cache.popitem(last=False)
        else:
            _cache.move_to_end(key)
        return view


def _read_release(path: Path) -> ReleaseView:
    meta = orjson.loads((path / "release.json").read_bytes())
    manifest_file = path / "manifest.json"
    by_dataset: dict[str, dict[str, dict]] = {}
    docs: dict[str, dict[tuple[str, date], str]] = {}
    held_docs: dict[str, set[str]] = {}
    if manifest_file.is_file():  # what each file is, as the publisher recorded it
        manifest = orjson.loads(manifest_file.read_bytes())
        for f in manifest["files"]:
            by_dataset.setdefault(f["dataset"], {})[f["path"].split("/", 1)[1]] = f
        for p in manifest.get("partitions", []):
            if p.get("data_docs"):
                key = (p["council"], date.fromisoformat(p["event_date"]))
                docs.setdefault(p["domain"], {})[key] = p["data_docs"].split("/", 1)[1]
        for p in manifest.get("held_back", []):
            held_docs.setdefault(p["domain"], set()).add(p["data_docs"].split("/", 1)[1])
    datasets = {
        name: _dataset(
            DATASETS[Domain(name)].domain,
            path / name,
            by_dataset.get(name, {}) if manifest_file.is_file() else None,
        )
        for name in meta["datasets"]
        if name in {d.value for d in Domain} and (path / name / "datapackage.json").is_file()
    }
    for name, found in datasets.items():
        found.data_docs = docs.get(name, {})
        found.held_docs = frozenset(held_docs.get(name, ()))
    return ReleaseView(meta["release"], path, meta["published_at"], datasets)


def released_file(release: ReleaseView, dataset: str, relpath: str) -> Path | None:
    """A file of the release that its data package lists, one of its metadata files (the data
    package, a council's package, the Table Schemas it names, the quality summary), or a Data Docs
    page its manifest names and their stylesheet, else None.

    Only these names are served, so no request can reach outside the release.
    """
    found = release.datasets.get(dataset)
    if found is None:
        return None
    packages = {council_package_file(council) for council in found.councils}
    pages = relpath == DATA_DOCS_CSS or found.has_page(relpath)
    if (
        relpath in METADATA_FILES
        or relpath in SCHEMA_FILES
        or relpath in packages
        or relpath in found.paths
        or relpath in found.archives
        or pages
    ):
        path = found.directory / relpath
        return path if path.is_file() else None
    return None
