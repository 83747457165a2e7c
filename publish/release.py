"""Atomic, versioned releases of the published zone.

The publisher writes into its working tree, `data/published/<domain>/` (publish/partition.py), which
changes file by file during a publish. Consumers never read it. `release` is the last step of every
publish run: if the ledger has publications no release holds yet (`civicflow.warehouse.partitions`), or a
dataset's metadata changed, it rebuilds the data packages and snapshots what they list into a new,
immutable directory `data/published/releases/<id>/` (hard links: files are only ever replaced by
rename, so a released file never changes), then switches `data/published/latest` to it by renaming a
new symlink over the old one - one atomic step - and writes `latest.json`, the same pointer for
consumers that cannot follow symlinks (HTTP mirrors, object stores). The DCAT-AP catalogue of the
new release replaces `catalog.jsonld` and `catalog.ttl`, and releases beyond the retention are
removed last. Each release carries `manifest.json`: every file it holds with its dataset, council,
date, kind, format, bytes, sha256 and the partition version it came from, and the Data Docs page
of every partition version it publishes or holds back (`<domain>/data-docs/`, linked from
`data/validations/`; the manifest names each). Only once `latest` points
at the new release are the ledger's pending publications marked as in it, so the ledger never claims
a publication no release holds; after a crash in between, the next run finds the pending
publications already in `latest`'s manifest and marks them, or cuts the release they need. A
consumer that resolves `latest` once and reads everything under what it resolved sees one release,
whole (docs/publication.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from civicflow.contract import DATASETS, Domain, Zone
from civicflow.errors import TerminalError
from civicflow.publish.catalog import build_catalog, to_turtle
from civicflow.publish.datapackage import council_package_file, write_datapackage
from civicflow.registry import CouncilRegistry
from civicflow.settings import CkanSettings
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import (
    PartitionRef,
    domains_published,
    mark_released,
    pending,
    publication,
    publications,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DATA_DOCS = "data-docs"
"""A dataset's Data Docs in a release: `<dataset>/data-docs/council=<c>/date=<d>/v<version>.html`."""
DATA_DOCS_STYLESHEET = "data-docs.css"
RELEASE_RE = re.compile(r"^(\d{6})-(\d{8}T\d{6}Z)$")


class ReleaseError(TerminalError):
    """The working tree does not match its data packages: a file is missing or has changed."""


@dataclass(frozen=True)
class Release:
    """One release: `releases/<id>/`, with the data packages of every published dataset."""

    id: str
    path: Path
    published_at: datetime
    datasets: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "release": self.id,
            "path": f"releases/{self.id}",
            "published_at": self.published_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "datasets": {d: f"releases/{self.id}/{d}/datapackage.json" for d in self.datasets},
        }


def releases(layout: Layout) -> list[Path]:
    """Every complete release directory, oldest first."""
    root = layout.releases
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and RELEASE_RE.match(p.name))


def latest_release(layout: Layout) -> Path | None:
    """The release `latest` points to, resolved once (read everything from what this returns)."""
    link = layout.latest
    if not link.is_symlink():
        return None
    return layout.zone(Zone.PUBLISHED) / os.readlink(link)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links: copy (same bytes, more space)
        shutil.copy2(src, dst)


def _snapshot_dataset(work: Path, target: Path) -> None:
    """Link a dataset's datapackage.json and every file it lists, checking each file's size."""
    package_path = work / "datapackage.json"
    package = json.loads(package_path.read_text(encoding="utf-8"))
    for resource in package["resources"]:
        src = work / resource["path"]
        if not src.is_file() or src.stat().st_size != resource["bytes"]:
            raise ReleaseError(
                f"cannot release {src}: datapackage.json lists {resource['bytes']} bytes but the file "
                f"{'has ' + str(src.stat().st_size) if src.is_file() else 'is missing'}; re-run the publish"
            )
        _link_or_copy(src, target / resource["path"])
    metadata = sorted(p.name for p in (*work.glob("schema*.json"), *work.glob("*.package.json")))
    for extra in [*metadata, "quality.json", "datapackage.json"]:
        if (work / extra).is_file():
            _link_or_copy(work / extra, target / extra)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_catalog(
    layout: Layout,
    release: Release,
    base_url: str | None = None,
    councils: Mapping[str, CouncilRegistry] | None = None,
) -> dict:
    """Write `catalog.jsonld` and `catalog.ttl` of a release, each renamed into place."""
    catalog = build_catalog(layout, release, base_url, councils)
    _write_atomically(layout.catalog("jsonld"), json.dumps(catalog, indent=2, ensure_ascii=False) + "\n")
    _write_atomically(layout.catalog("ttl"), to_turtle(catalog, base_url))
    return catalog


def switch_latest(layout: Layout, release: Path) -> None:
    """Point `latest` at a release in one step: a new symlink renamed over the old one."""
    tmp = layout.latest.with_name(f".latest-{release.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(release.relative_to(layout.zone(Zone.PUBLISHED)).as_posix(), tmp)
    os.replace(tmp, layout.latest)


def prune_releases(layout: Layout, keep: int) -> list[str]:
    """Remove all but the newest `keep` releases (never the one `latest` points to)."""
    current = latest_release(layout)
    existing = releases(layout)
    removed = []
    for path in existing[: max(0, len(existing) - keep)]:
        if current is not None and path.name == current.name:
            continue
        shutil.rmtree(path)
        removed.append(path.name)
    return removed


@dataclass(frozen=True)
class ReleaseOutcome:
    """What the release step did: the release it cut (or found), and the publications it marked."""

    release: str | None
    cut: bool
    marked: int


def release(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    *,
    now: datetime,
    quality: Mapping[str, dict] | None = None,
    licences: Mapping[str, dict] | None = None,
    keep: int = 5,
    base_url: str | None = None,
    ckan: CkanSettings | None = None,
    data_docs: Mapping[PartitionRef, Path] | None = None,
    stylesheets: Mapping[str, Path] | None = None,
    councils: Mapping[str, CouncilRegistry] | None = None,
) -> ReleaseOutcome:
    """Put every pending publication into a release that `latest` points at; mark the ledger.

    Args:
        quality: Dataset -> its quality summary (`civicflow.expectations.summary`), written as `quality.json`.
        licences: Council -> the licence its data carries, when not the Open Government Licence.
        data_docs: Partition version -> its Data Docs page (`civicflow.expectations.docs.write_pages`): the
            release holds the page of every version it publishes or holds back, which
            `manifest.json` names.
        stylesheets: Dataset -> the stylesheet its pages name, held once per dataset.
        councils: Council -> its registry file, for the catalogue's publishers, contact points and
            areas (`civicflow.publish.catalog.build_catalog`).

    Idempotent: with nothing pending and no metadata changed, nothing is cut; pending
    publications that `latest` already holds (a crash after the switch) are only marked.
    """
    waiting = pending(con)
    current = latest_release(layout)
    if waiting and current is not None and _holds_all(con, current, waiting):
        marked = mark_released(con, current.name, waiting)
        log.info("release %s already holds %d pending publications: marked them", current.name, marked)
        return ReleaseOutcome(current.name, False, marked)
    datasets = {p.domain for p in waiting} | {str(d) for d in (quality or {})}
    if current is None:
        datasets |= {str(d) for d in domains_published(con)}
    for name in sorted(datasets):
        dataset = DATASETS[Domain(name)]
        if name in (quality or {}):
            layout.published_dataset(dataset.domain).mkdir(parents=True, exist_ok=True)
            summary = _quality_pages(name, quality[name], data_docs or {}, stylesheets or {})
            _write_atomically(
                layout.published_dataset(dataset.domain) / "quality.json",
                json.dumps(summary, indent=2) + "\n",
            )
        if any(p.domain == name for p in waiting) or current is None:
            write_datapackage(con, layout, dataset, licences, councils)
    cut = None
    if _published_domains(layout) and (waiting or current is None or _changed(layout)):
        docs = _data_docs(data_docs or {}, stylesheets or {}, _published_domains(layout))
        cut = _cut(
            layout, now, keep, base_url, manifest=_manifest(con, docs), documents=docs, councils=councils
        )
    marked = mark_released(con, cut.id, waiting) if cut is not None else 0
    if ckan is not None and ckan.url:
        push_pending(layout, ckan, base_url, councils)
    return ReleaseOutcome(cut.id if cut else (current.name if current else None), cut is not None, marked)


def data_docs_file(ref: PartitionRef) -> str:
    """A partition version's Data Docs page in a release, relative to its dataset's folder.

    Two folders below `data-docs/`, where the dataset's stylesheet is: the pages name it
    `../../data-docs.css` (expectations/docs.py).
    """
    return f"{DATA_DOCS}/council={ref.council}/date={ref.event_date.isoformat()}/v{ref.version}.html"


def _quality_pages(
    domain: str, summary: dict, pages: Mapping[PartitionRef, Path], stylesheets: Mapping[str, Path]
) -> dict:
    """A quality summary whose held-back entries name their version's Data Docs page in the release.

    The path is relative to the dataset's folder, like every path in the release (`data_docs_file`);
    null when the release holds no page for that version.
    """
    councils = {}
    for council, found in summary.get("councils", {}).items():
        held = []
        for entry in found.get("held_back", []):
            ref = PartitionRef(domain, council, date.fromisoformat(entry["date"]), entry["version"])
            page = data_docs_file(ref) if ref in pages and domain in stylesheets else None
            held.append(entry | {"data_docs": page})
        councils[council] = found | {"held_back": held} if "held_back" in found else found
    return summary | {"councils": councils} if "councils" in summary else summary


def _data_docs(
    pages: Mapping[PartitionRef, Path], stylesheets: Mapping[str, Path], domains: list[str]
) -> dict[str, tuple[Path, PartitionRef | None]]:
    """The Data Docs a release links: release path -> (source file, the version it is about)."""
    out: dict[str, tuple[Path, PartitionRef | None]] = {}
    for ref, page in sorted(pages.items()):
        if ref.domain in domains and ref.domain in stylesheets:
            out[f"{ref.domain}/{data_docs_file(ref)}"] = (page, ref)
    for domain in sorted({ref.domain for _, ref in out.values() if ref is not None}):
        out[f"{domain}/{DATA_DOCS}/{DATA_DOCS_STYLESHEET}"] = (stylesheets[domain], None)
    return out


def _manifest(
    con: duckdb.DuckDBPyConnection, documents: Mapping[str, tuple[Path, PartitionRef | None]] | None = None
) -> dict:
    """Every file the ledger lists, with what it is: the release's manifest (paths in the release).

    Each partition names its Data Docs page when the release holds one; `held_back` lists the
    versions held back now whose page the release holds.
    """
    files, partitions = [], []
    packages: dict[str, dict[str, str]] = {}
    pages = {ref: path for path, (_, ref) in (documents or {}).items() if ref is not None}
    for pub in publications(con):
        ref = pub.ref
        page = {"data_docs": pages.pop(ref)} if ref in pages else {}
        partitions.append(ref.to_json() | {"rows": pub.rows} | page)
        packages.setdefault(ref.domain, {})[ref.council] = f"{ref.domain}/{council_package_file(ref.council)}"
        for entry in pub.files["files"]:
            files.append(
                {
                    "dataset": ref.domain,
                    "council": ref.council,
                    "date": ref.event_date.isoformat(),
                    "kind": entry["kind"],
                    "format": entry["format"],
                    "path": f"{ref.domain}/{entry['path']}",
                    "bytes": entry["bytes"],
                    "sha256": entry["sha256"],
                    "rows": entry["rows"],
                    "partition_version": ref.version,
                }
            )
    held = [ref.to_json() | {"data_docs": path} for ref, path in sorted(pages.items())]
    return {"packages": packages, "partitions": partitions, "files": files, "held_back": held}


def read_manifest(release_dir: Path) -> dict:
    """A release's manifest (`manifest.json`)."""
    return json.loads((release_dir / MANIFEST).read_text(encoding="utf-8"))


def _holds_all(con: duckdb.DuckDBPyConnection, release_dir: Path, refs: list[PartitionRef]) -> bool:
    """Whether a release already holds these pending publications: the same versions, file for file.

    The version alone does not say so (an approval publishes the same version again, with more
    rows), nor do the files alone (a replay can make a new version of the same rows).
    """
    try:
        manifest = read_manifest(release_dir)
        files = {(f["path"], f["sha256"]) for f in manifest["files"]}
        versions = {PartitionRef.from_json(p) for p in manifest["partitions"]}
    except (OSError, ValueError, KeyError):
        return False
    for ref in refs:
        if ref not in versions:
            return False
        pub = publication(con, ref)
        wanted = {(f"{ref.domain}/{f['path']}", f["sha256"]) for f in pub.files["files"]} if pub else set()
        if not wanted or not wanted <= files:
            return False
    return True


def push_pending(
    layout: Layout,
    ckan: CkanSettings,
    base_url: str | None,
    councils: Mapping[str, CouncilRegistry] | None = None,
) -> bool:
    """Push the latest release's catalogue to CKAN if it has not been pushed yet."""
    from civicflow.publish.ckan import CkanClient, packages_from_catalog, push_catalog

    if not layout.latest_pointer.is_file():
        return False
    latest = json.loads(layout.latest_pointer.read_text(encoding="utf-8"))
    state = layout.root / "ckan" / "pushed.json"
    if state.is_file() and json.loads(state.read_text(encoding="utf-8")).get("release") == latest["release"]:
        return False
    if base_url is None or ckan.api_key is None:
        raise TerminalError(
            "pushing to CKAN needs CIVICFLOW_PUBLISH__BASE_URL (where data/published/ is served) and "
            "CIVICFLOW_PUBLISH__CKAN__API_KEY"
        )
    release = Release(
        latest["release"],
        layout.releases / latest["release"],
        datetime.fromisoformat(latest["published_at"]),
        tuple(latest["datasets"]),
    )
    packages = packages_from_catalog(
        build_catalog(layout, release, base_url, councils), release.id, base_url, ckan.organization
    )
    client = CkanClient(ckan.url, ckan.api_key, ckan.timeout_s)
    try:
        push_catalog(client, packages)
    finally:
        client.close()
    state.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(state, json.dumps({"release": release.id}) + "\n")
    return True


def _published_domains(layout: Layout) -> list[str]:
    return [
        d.domain.value
        for d in DATASETS.values()
        if (layout.published_dataset(d.domain) / "datapackage.json").is_file()
    ]


def _changed(layout: Layout) -> bool:
    """Whether the working tree's data packages differ from the latest release's.

    A data package lists the sha256 of every file, so equal packages mean equal files: a re-run
    that rewrites the same bytes (rebuilt aggregates, say) makes no new release.
    """
    current = latest_release(layout)
    if current is None:
        return True
    for domain in _published_domains(layout):
        for name in ("datapackage.json", "quality.json"):
            released = current / domain / name
            work = layout.published_dataset(domain) / name
            if work.is_file() and (not released.is_file() or released.read_bytes() != work.read_bytes()):
                return True
    return False


def _cut(
    layout: Layout,
    now: datetime | None,
    keep: int,
    base_url: str | None,
    manifest: dict | None = None,
    documents: Mapping[str, tuple[Path, PartitionRef | None]] | None = None,
    councils: Mapping[str, CouncilRegistry] | None = None,
) -> Release:
    now = now or datetime.now(tz=UTC)
    existing = releases(layout)
    number = 1 + max((int(RELEASE_RE.match(p.name).group(1)) for p in existing), default=0)
    release_id = f"{number:06d}-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    layout.releases.mkdir(parents=True, exist_ok=True)
    building = layout.releases / f".building-{release_id}"
    if building.exists():
        shutil.rmtree(building)
    published = _published_domains(layout)
    for domain in published:
        _snapshot_dataset(layout.published_dataset(domain), building / domain)
    for path, (source, _) in (documents or {}).items():
        _link_or_copy(source, building / path)
    release = Release(release_id, layout.releases / release_id, now, tuple(published))
    _write_atomically(building / "release.json", json.dumps(release.to_dict(), indent=2) + "\n")
    if manifest is not None:
        body = {"release": release_id} | manifest
        _write_atomically(building / MANIFEST, json.dumps(body, indent=1) + "\n")
    os.rename(building, release.path)
    switch_latest(layout, release.path)
    _write_atomically(layout.latest_pointer, json.dumps(release.to_dict(), indent=2) + "\n")
    write_catalog(layout, release, base_url=base_url, councils=councils)
    removed = prune_releases(layout, keep)
    log.info("released %s (%s); removed %d old releases", release_id, ", ".join(published), len(removed))
    return release
