"""What changed from one kept release to the next, read from the releases' own files.

Each release records, in `manifest.json`, every partition it holds (dataset, council, day, version,
rows) and every file with its sha256, and in each dataset's `quality.json` the days and devices'
days held back. Comparing a release with the one before it gives, per partition:

- added: a day no earlier release held;
- replaced: a day held before, now from another version or with other files (a late reading, a
  replay after a fix);
- approved: a day, or a device's readings of a day, that was held back and is now published at
  the version that was held (`civicflow release approve`);
- held back: a day or a device's day whose new version failed a blocking rule (an earlier release
  of that day stays published);
- removed: a day no longer published (an erasure).

The oldest kept release is compared with nothing when the one before it is no longer kept: its
changes are unknown (`changes` is null), except for release 1, where everything was added.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import orjson

from civicflow.portal.release import release_number
from civicflow.publish.release import MANIFEST, releases
from civicflow.warehouse.layout import Layout

PartitionKey = tuple[str, str, str]  # dataset, council, date
HoldKey = tuple[str, str, str, int, str | None]  # dataset, council, date, version, device (None: the day)
CHANGES = ("added", "replaced", "approved", "held_back", "removed")


@dataclass(frozen=True)
class Snapshot:
    """What one release holds, as the changelog compares it."""

    id: str
    published_at: str
    datasets: tuple[str, ...]
    partitions: dict[PartitionKey, dict] | None  # None: a release cut before manifests existed
    holds: dict[HoldKey, dict]


def _snapshot(path: Path) -> Snapshot:
    meta = orjson.loads((path / "release.json").read_bytes())
    datasets = tuple(meta.get("datasets", {}))
    partitions: dict[PartitionKey, dict] | None = None
    if (path / MANIFEST).is_file():
        manifest = orjson.loads((path / MANIFEST).read_bytes())
        files: dict[PartitionKey, set[str]] = {}
        for f in manifest.get("files", []):
            files.setdefault((f["dataset"], f["council"], f["date"]), set()).add(f["sha256"])
        partitions = {}
        for p in manifest.get("partitions", []):
            key = (p["domain"], p["council"], p["event_date"])
            partitions[key] = {
                "version": int(p["version"]),
                "rows": p.get("rows"),
                "files": frozenset(files.get(key, ())),
            }
    holds: dict[HoldKey, dict] = {}
    for dataset in datasets:
        quality_file = path / dataset / "quality.json"
        if not quality_file.is_file():
            continue
        quality = orjson.loads(quality_file.read_bytes())
        for council, summary in quality.get("councils", {}).items():
            for hold in summary.get("held_back", []):
                key = (dataset, council, hold["date"], int(hold["version"]), hold.get("device_id"))
                holds[key] = hold
    return Snapshot(meta["release"], meta["published_at"], datasets, partitions, holds)


def _partition(key: PartitionKey, now: dict, before: dict | None) -> dict:
    dataset, council, day = key
    entry = {
        "dataset": dataset,
        "council": council,
        "date": day,
        "version": now["version"],
        "rows": now["rows"],
    }
    if before is not None:
        entry |= {"previous_version": before["version"], "previous_rows": before["rows"]}
    return entry


def compare(release: Snapshot, before: Snapshot | None) -> dict[str, list[dict]] | None:
    """The changes from `before` (None: nothing was published before) to `release`."""
    if release.partitions is None or (before is not None and before.partitions is None):
        return None
    old_partitions = before.partitions if before is not None else {}
    old_holds = before.holds if before is not None else {}
    lifted: dict[tuple[str, str, str, int], list[str | None]] = {}
    for dataset, council, day, version, device in sorted(
        old_holds.keys() - release.holds.keys(), key=lambda k: (k[:4], k[4] or "")
    ):
        lifted.setdefault((dataset, council, day, version), []).append(device)
    changes: dict[str, list[dict]] = {name: [] for name in CHANGES}
    for key in sorted(release.partitions):
        now, was = release.partitions[key], old_partitions.get(key)
        if was is not None and (was["version"], was["files"]) == (now["version"], now["files"]):
            continue
        entry = _partition(key, now, was)
        devices = lifted.get((*key, now["version"]))
        if devices is not None:
            # None among them: the whole day was held; else these devices' readings of it
            changes["approved"].append(entry | {"devices": None if None in devices else devices})
        elif was is None:
            changes["added"].append(entry)
        else:
            changes["replaced"].append(entry)
    for key in sorted(release.holds.keys() - old_holds.keys(), key=lambda k: (k[:4], k[4] or "")):
        hold = release.holds[key]
        dataset, council, day, version, device = key
        changes["held_back"].append(
            {
                "dataset": dataset,
                "council": council,
                "date": day,
                "version": version,
                "device_id": device,
                "rows": hold.get("rows"),
                "failed": hold.get("failed", []),
                "reasons": hold.get("reasons"),
            }
        )
    for key in sorted(old_partitions.keys() - release.partitions.keys()):
        changes["removed"].append(_partition(key, old_partitions[key], None))
    return changes


_cache: dict[tuple[str, ...], list[dict]] = {}
_cache_lock = threading.Lock()


def changelog(layout: Layout, latest: str) -> list[dict]:
    """Every kept release, newest first, with what changed from the kept release before it.

    Kept releases never change, so the answer is read once per set of kept releases.
    """
    paths = releases(layout)
    key = (latest, *(p.name for p in paths))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        entries = []
        before: Snapshot | None = None
        for path in paths:
            snapshot = _snapshot(path)
            number = release_number(snapshot.id)
            if before is not None and release_number(before.id) == number - 1:
                compared, changes = before.id, compare(snapshot, before)
            elif number == 1:
                compared, changes = None, compare(snapshot, None)
            else:  # the release before is no longer kept
                compared, changes = None, None
            entries.append(
                {
                    "release": snapshot.id,
                    "published_at": snapshot.published_at,
                    "latest": snapshot.id == latest,
                    "datasets": [
                        {"dataset": d, "datapackage": f"/releases/{snapshot.id}/{d}/datapackage.json"}
                        for d in snapshot.datasets
                    ],
                    "partitions": None if snapshot.partitions is None else len(snapshot.partitions),
                    "compared_with": compared,
                    "summary": None if changes is None else {name: len(changes[name]) for name in CHANGES},
                    "changes": changes,
                }
            )
            before = snapshot
        entries.reverse()
        _cache.clear()
        _cache[key] = entries
        return entries
