"""What the latest release holds, read from its own files (docs/publication.md).

Every request resolves `published/latest` once and reads only under what it resolved to, so a page
or an API answer never mixes two releases. Nothing here reads the staged zone or the publisher's
working tree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from civicflow.contract import DATASETS, LICENCE, Domain
from warehouse.layout import Layout
from warehouse.releases import latest_release

KINDS = ("readings", "hourly", "daily", "council_daily")
"""What the API and downloads serve: the readings and the three aggregates (docs/queries.md)."""
PARTITION_RE = re.compile(r"(?:^|/)council=([^/]+)/date=(\d{4}-\d{2}-\d{2})/")
METADATA_FILES = ("datapackage.json", "schema.json", "quality.json")


class NoRelease(LookupError):
    """Nothing has been published yet: `published/latest` does not exist."""


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

    @property
    def councils(self) -> list[str]:
        return sorted({r.council for r in self.resources})

    def files(self, kind: str, council: str | None = None, fmt: str = "parquet") -> list[Resource]:
        return [
            r
            for r in self.resources
            if r.kind == kind and r.format == fmt and (council is None or r.council == council)
        ]

    def coverage(self, council: str) -> tuple[date, date]:
        days = [r.day for r in self.resources if r.council == council]
        return min(days), max(days)

    def licence(self, council: str) -> tuple[dict, str | None]:
        for r in self.resources:
            if r.council == council:
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


def _dataset(domain: Domain, directory: Path) -> DatasetRelease:
    package = json.loads((directory / "datapackage.json").read_text(encoding="utf-8"))
    quality_file = directory / "quality.json"
    quality = json.loads(quality_file.read_text(encoding="utf-8")) if quality_file.is_file() else {}
    package_licence = package.get("licenses", [LICENCE])[0]
    result = DatasetRelease(domain, directory, package, quality)
    for res in package["resources"]:
        match = PARTITION_RE.search(res["path"])
        if match is None:
            continue
        sources = res.get("sources") or [{}]
        result.resources.append(
            Resource(
                path=res["path"],
                kind=_kind(res["path"]),
                council=match.group(1),
                day=date.fromisoformat(match.group(2)),
                format=res["format"],
                bytes=res["bytes"],
                hash=res["hash"],
                licence=(res.get("licenses") or [package_licence])[0],
                attribution=sources[0].get("title"),
                schema=res.get("schema", {"fields": []}),
            )
        )
    return result


def load_release(layout: Layout) -> ReleaseView:
    """Resolve `latest` once and read the release's data packages and quality summaries."""
    path = latest_release(layout)
    if path is None or not (path / "release.json").is_file():
        raise NoRelease(f"nothing published yet under {layout.latest}")
    meta = json.loads((path / "release.json").read_text(encoding="utf-8"))
    datasets = {
        name: _dataset(DATASETS[Domain(name)].domain, path / name)
        for name in meta["datasets"]
        if name in {d.value for d in Domain} and (path / name / "datapackage.json").is_file()
    }
    return ReleaseView(meta["release"], path, meta["published_at"], datasets)


def released_file(release: ReleaseView, dataset: str, relpath: str) -> Path | None:
    """A file of the release that its data package lists (or one of its metadata files), else None.

    Only listed paths are served, so no request can reach outside the release.
    """
    found = release.datasets.get(dataset)
    if found is None:
        return None
    if relpath in METADATA_FILES or any(r.path == relpath for r in found.resources):
        path = found.directory / relpath
        return path if path.is_file() else None
    return None
