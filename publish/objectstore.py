"""Releases on the object store: every file of a release, then its manifest, then `latest.json`.

An object store has no symlinks, renames or hard links, so a release is published there in an
order that a reader can never catch half done (docs/scaling.md, "Object storage"):

1. Read `published/latest.json` and its ETag. If it already names this release, there is nothing
   to do; if it names a newer one, stop: `latest` never moves back.
2. Upload every file of `published/releases/<id>/` but `manifest.json`, at the same keys. A file the
   store's current release holds with the same sha256 (its manifest says so) is copied inside the
   store instead of uploaded again.
3. Write `published/releases/<id>/manifest.json`, byte for byte the local one (every data file with
   its size and sha256), only if absent: a release whose manifest is on the store is complete.
4. Write `published/latest.json` (the release's `release.json`) on condition that it still has the
   ETag read in step 1 (`If-Match`, or `If-None-Match: *` for the first release). A concurrent
   publisher that switched it in between wins; this one gets `LatestMoved` and the pointer names
   one whole release either way.

Then releases the data root no longer keeps (`CIVICFLOW_PUBLISH__KEEP_RELEASES`, or removed by
an erasure) are deleted from the store too, manifest first, never the one `latest.json` names.

Re-running after a failure is safe at any step: uploads are idempotent, the manifest is compared,
and the pointer is switched only once. The local release (publish/release.py) is unchanged; this
runs after it, from the release step (jobs/publication.py), when `CIVICFLOW_STORAGE__URL` is set.
"""

from __future__ import annotations

import json
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from civicflow.errors import TerminalError, TransientError
from civicflow.publish.release import MANIFEST, RELEASE_RE, releases
from civicflow.settings import StorageSettings
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.storage import Store, open_store

log = logging.getLogger(__name__)

RELEASES_PREFIX = "published/releases"
LATEST_KEY = "published/latest.json"
UPLOAD_WORKERS = 8
"""Files of a release uploaded (or copied inside the store) at once."""

_conditional_checked: set[str] = set()


class LatestMoved(TransientError):
    """Another publisher switched `latest.json` while this one published: it lost the race."""


class StoreConflict(TerminalError):
    """The store holds a release that contradicts this one: two publishers write the same store."""


@dataclass(frozen=True)
class StorePublication:
    """What publishing a release to the store did."""

    release: str
    store: str
    uploaded: int
    copied: int
    switched: bool
    removed: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "release": self.release,
            "store": self.store,
            "uploaded": self.uploaded,
            "copied": self.copied,
            "switched": self.switched,
            "removed": list(self.removed),
        }


def release_key(release_id: str, path: str = "") -> str:
    return f"{RELEASES_PREFIX}/{release_id}" + (f"/{path}" if path else "")


def _number(release_id: str) -> int | None:
    match = RELEASE_RE.match(release_id)
    return int(match.group(1)) if match else None


def check_conditional_writes(store: Store) -> None:
    """Refuse a store that ignores `If-None-Match`/`If-Match` (some S3-compatible stores do): on
    it `latest.json` could not be switched safely. Checked once per process and store."""
    if store.url in _conditional_checked:
        return
    probe = f"published/.conditional-write-probe-{uuid.uuid4().hex}"
    try:
        first = store.put_if_absent(probe, b"1")
        again = store.put_if_absent(probe, b"2")
        wrong = store.replace_if(probe, b"3", '"civicflow-not-the-etag"')
    finally:
        store.delete(probe)
    if not first or again or wrong:
        raise TerminalError(
            f"the object store {store.url} does not honour conditional writes (If-None-Match: * and "
            "If-Match on PUT), so two publishers could switch published/latest.json over each other. "
            "Use a store that supports them (AWS S3 does; check your S3-compatible store's version)"
        )
    _conditional_checked.add(store.url)


def _release_files(release_dir: Path) -> list[str]:
    """Every file of a local release, as paths relative to it, manifest last (excluded here)."""
    return sorted(
        p.relative_to(release_dir).as_posix()
        for p in release_dir.rglob("*")
        if p.is_file() and p.name != MANIFEST
    )


def _hashes(manifest: dict) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in manifest.get("files", ())}


def publish_release(layout: Layout, store: Store, release_id: str) -> StorePublication:
    """Publish the local release `release_id` to `store` and switch its `latest.json` to it.

    Raises:
        LatestMoved: Another publisher switched `latest.json` meanwhile (transient: a re-run
            publishes again unless the store's release is newer by then).
        StoreConflict: The store's `latest.json` names a newer release, or holds a different
            release under this id: more than one publisher writes this store.
        TerminalError / TransientError: The store failed (see warehouse/storage.py).
    """
    release_dir = layout.releases / release_id
    local_manifest = release_dir / MANIFEST
    pointer = release_dir / "release.json"
    if not local_manifest.is_file() or not pointer.is_file():
        raise TerminalError(
            f"cannot publish release {release_id} to {store.url}: {release_dir} has no {MANIFEST} or "
            "release.json. Re-run the release step (civicflow batch) to cut a complete release"
        )
    manifest_bytes = local_manifest.read_bytes()
    pointer_bytes = pointer.read_bytes()
    if not store.is_local:
        check_conditional_writes(store)

    # 1. Where latest.json points now, and the ETag to switch it on.
    current = store.get_with_etag(LATEST_KEY)
    etag = current[1] if current else None
    current_id: str | None = None
    if current is not None:
        try:
            current_id = json.loads(current[0])["release"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreConflict(
                f"{store.location(LATEST_KEY)} is not a Civicflow release pointer; inspect it and "
                "delete it if nothing else writes it, then re-run the release step"
            ) from exc
        if current_id == release_id:
            _check_same_release(store, release_id, manifest_bytes)
            return StorePublication(
                release_id, store.url, 0, 0, False, prune_store(layout, store, release_id)
            )
        ours, theirs = _number(release_id), _number(current_id)
        if ours is not None and theirs is not None and theirs > ours:
            raise StoreConflict(
                f"{store.location(LATEST_KEY)} names release {current_id}, newer than this publisher's "
                f"{release_id}: another publisher writes this store. Run one publisher per store "
                "(one civicflow_publish DAG over one data root); latest.json was left as it is"
            )

    # 2-3. The release's files, then its manifest.
    uploaded, copied = _upload_release(store, release_dir, release_id, manifest_bytes, current_id)

    # 4. The pointer, on condition that nobody moved it since step 1.
    if not store.replace_if(LATEST_KEY, pointer_bytes, etag):
        now = store.get_with_etag(LATEST_KEY)
        holder = json.loads(now[0]).get("release") if now else None
        raise LatestMoved(
            f"another publisher switched {store.location(LATEST_KEY)} (to {holder or 'nothing'}) while "
            f"this one published release {release_id}; latest.json was not touched by this run and "
            f"names one whole release. Run one publisher per store; re-running the release step "
            f"switches it to {release_id} unless the store's release is newer by then"
        )
    log.info(
        "published release %s to %s (%d files uploaded, %d copied in the store); latest.json switched "
        "from %s",
        release_id,
        store.url,
        uploaded,
        copied,
        current_id or "nothing",
    )
    return StorePublication(
        release_id, store.url, uploaded, copied, True, prune_store(layout, store, release_id)
    )


def prune_store(layout: Layout, store: Store, latest: str) -> tuple[str, ...]:
    """Delete from the store the releases the data root no longer has (retention, erasure), but
    never `latest`: each one's manifest first, so a release half deleted is visibly incomplete."""
    kept = {p.name for p in releases(layout)} | {latest}
    removed = []
    for release_id in store.children(f"{RELEASES_PREFIX}/"):
        if release_id in kept or not RELEASE_RE.match(release_id):
            continue
        keys = store.list(release_key(release_id) + "/")
        manifest = release_key(release_id, MANIFEST)
        store.delete_many([k for k in keys if k == manifest])
        store.delete_many([k for k in keys if k != manifest])
        removed.append(release_id)
    if removed:
        log.info(
            "removed %d releases from %s that the data root no longer keeps: %s",
            len(removed),
            store.url,
            ", ".join(removed),
        )
    return tuple(removed)


def _check_same_release(store: Store, release_id: str, manifest_bytes: bytes) -> None:
    try:
        theirs = store.get_bytes(release_key(release_id, MANIFEST))
    except FileNotFoundError as exc:
        raise StoreConflict(
            f"{store.location(LATEST_KEY)} names release {release_id} but the store has no "
            f"{release_key(release_id, MANIFEST)}: another publisher wrote it. Run one publisher per store"
        ) from exc
    if theirs != manifest_bytes:
        raise StoreConflict(
            f"the store's release {release_id} ({store.location(release_key(release_id))}) differs from "
            "this publisher's release of the same id: two publishers write this store. Run one "
            "publisher per store; the store was left as it is"
        )


def _upload_release(
    store: Store, release_dir: Path, release_id: str, manifest_bytes: bytes, current_id: str | None
) -> tuple[int, int]:
    """Upload (or copy in the store) every file of the release but its manifest, then the manifest."""
    manifest_key = release_key(release_id, MANIFEST)
    existing = store.get_with_etag(manifest_key)
    if existing is not None:
        if existing[0] != manifest_bytes:
            raise StoreConflict(
                f"the store already has a different release {release_id} "
                f"({store.location(manifest_key)}): two publishers write this store. Run one publisher "
                "per store; the store was left as it is"
            )
        return 0, 0  # the manifest is written last: the release is already whole on the store
    ours = _hashes(json.loads(manifest_bytes))
    previous: dict[str, str] = {}
    if current_id is not None:
        try:
            previous = _hashes(json.loads(store.get_bytes(release_key(current_id, MANIFEST))))
        except (FileNotFoundError, ValueError):
            previous = {}
    done = set(store.list(release_key(release_id) + "/"))  # a re-run after a failure skips these
    todo = [p for p in _release_files(release_dir) if release_key(release_id, p) not in done]

    def one(path: str) -> str:
        key = release_key(release_id, path)
        if current_id is not None and path in ours and previous.get(path) == ours[path]:
            try:
                store.copy(release_key(current_id, path), key)
                return "copied"
            except FileNotFoundError:
                pass  # the previous release lost that file: upload it

        store.put_file(key, release_dir / path)
        return "uploaded"

    with ThreadPoolExecutor(max_workers=UPLOAD_WORKERS) as pool:
        outcomes = list(pool.map(one, todo))
    if (
        not store.put_if_absent(manifest_key, manifest_bytes)
        and store.get_bytes(manifest_key) != manifest_bytes
    ):
        raise StoreConflict(
            f"another publisher wrote a different {store.location(manifest_key)} while this one uploaded "
            "the release: two publishers write this store. Run one publisher per store"
        )
    return outcomes.count("uploaded"), outcomes.count("copied")


def publish_to_store(
    layout: Layout, storage: StorageSettings, release_id: str | None
) -> StorePublication | None:
    """The release step's object-storage stage: publish `release_id` when a store is configured.

    Nothing happens without `CIVICFLOW_STORAGE__URL` (the data root is the store) or a release.
    """
    if storage.url is None or release_id is None:
        return None
    return publish_release(layout, open_store(storage, layout.root), release_id)
