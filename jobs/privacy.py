"""Personal data as jobs: enforce the retention periods, and erase one device's data on request.

`enforce_retention` is what the daily `civicflow_maintenance` DAG runs; `erase_device` is what
`civicflow erase` runs. The warehouse side of both is `civicflow.warehouse.privacy` (the only writer of what
they change there, and of the record of erasures); the raw side is `civicflow.warehouse.segments`.

An erasure removes a device's messages received in a window from every zone that holds them:

1. the raw records are rewritten in place as tombstones of the same length (every other record
   keeps its offset, which is its lineage identity), so a replay gives the same result for
   everything else and nothing for them;
2. its quarantine rows (warehouse and files), staged rows and corrections are deleted, and the
   staged partitions that lost rows get a new version, exported like any other;
3. those versions go through the quality gate and the publish path, and a release is cut; if the
   gate holds a new version back, the device's rows are still withdrawn from the publication it
   replaces (the earlier publication is published again without them), so no release after
   the erasure carries them;
4. the releases kept as snapshots before the erasure are deleted, unless asked to keep them;
5. the erasure is recorded (`published.erasures`) and the warehouse file is rewritten so that
   no freed block keeps an erased value.

With an object store (`CIVICFLOW_STORAGE__URL`, docs/scaling.md) both also reach what is there:
the raw segments the listeners uploaded and staging's quarantine files are purged, stripped,
tombstoned and rewritten by the same rules (only the objects that change are written), and after
an erasure the store's `latest.json` names the data root's latest release and the releases the
data root no longer has are deleted from the store at once (`civicflow.publish.objectstore`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from civicflow.contract import DATASETS, Domain, Zone
from civicflow.errors import TerminalError
from civicflow.registry import Registry
from civicflow.settings import PublishSettings, QualitySettings, RetentionSettings, Settings, StorageSettings
from civicflow.warehouse.layout import Layout

if TYPE_CHECKING:
    from civicflow.warehouse.privacy import StoredObject
    from civicflow.warehouse.storage import Store

log = logging.getLogger(__name__)


class ErasureError(TerminalError):
    """The erasure cannot be done as asked (no council or device, a reversed window): fix the request."""


def enforce_retention(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    retention: RetentionSettings,
    *,
    now: datetime,
    storage: StorageSettings | None = None,
) -> dict[str, Any]:
    """Delete staged raw segments, quarantine payloads and quarantine rows past their periods.

    Under the data root, and in the object store when there is one (`storage.url`; None:
    `CIVICFLOW_STORAGE__URL` from the environment): its raw segments and quarantine files.
    Returns what was done, and whether the warehouse changed (then the caller compacts it).
    """
    from civicflow.warehouse.partitions import transaction
    from civicflow.warehouse.privacy import (
        expire_quarantine_files,
        expire_quarantine_rows,
        expire_stored_quarantine,
        purge_raw_segments,
        purge_stored_segments,
    )

    raw_before = now - timedelta(days=retention.raw_segment_days)
    payload_before = now - timedelta(days=retention.quarantine_payload_days)
    record_before = now - timedelta(days=retention.quarantine_record_days)
    staged = {sid for (sid,) in con.execute("SELECT segment_id FROM raw.segments").fetchall()}
    segments, torn = purge_raw_segments(layout.raw, staged, raw_before)
    with transaction(con):
        stripped, deleted = expire_quarantine_rows(con, payload_before, record_before)
    files_stripped, files_deleted, rewritten = expire_quarantine_files(
        _quarantine_root(layout), payload_before, record_before
    )
    stored: list[str] = []
    stored_stripped = stored_deleted = stored_rewritten = 0
    if (store := object_store(layout, storage)) is not None:
        stored = purge_stored_segments(store, staged, raw_before)
        stored_stripped, stored_deleted, stored_rewritten = expire_stored_quarantine(
            store, payload_before, record_before
        )
    result = {
        "raw_segments_deleted": len(segments),
        "torn_files_deleted": len(torn),
        "raw_before": raw_before.isoformat(),
        "quarantine_payloads_stripped": stripped,
        "quarantine_rows_deleted": deleted,
        "quarantine_file_rows_stripped": files_stripped,
        "quarantine_file_rows_deleted": files_deleted,
        "quarantine_files_rewritten": rewritten,
        "payload_before": payload_before.isoformat(),
        "record_before": record_before.isoformat(),
        "warehouse_changed": bool(stripped or deleted),
        "store": store.url if store is not None else None,
        "store_raw_segments_deleted": len(stored),
        "store_quarantine_file_rows_stripped": stored_stripped,
        "store_quarantine_file_rows_deleted": stored_deleted,
        "store_quarantine_files_rewritten": stored_rewritten,
    }
    log.info(
        "retention: deleted %d staged raw segments opened before %s and %d torn tails; stripped %d "
        "quarantine payloads collected before %s, deleted %d quarantine rows collected before %s; "
        "%d quarantine files rewritten",
        len(segments),
        raw_before,
        len(torn),
        stripped,
        payload_before,
        deleted,
        record_before,
        rewritten,
    )
    if store is not None:
        log.info(
            "retention in %s: deleted %d staged raw segments opened before %s; %d quarantine files "
            "rewritten (%d rows stripped, %d deleted)",
            store.url,
            len(stored),
            raw_before,
            stored_rewritten,
            stored_stripped,
            stored_deleted,
        )
    return result


def object_store(layout: Layout, storage: StorageSettings | None) -> Store | None:
    """The object store of `storage` (None: of the environment's settings), or None without one."""
    from civicflow.warehouse.storage import open_store

    storage = storage if storage is not None else Settings().storage
    if storage.url is None:
        return None
    return open_store(storage, layout.root)


def _quarantine_root(layout: Layout) -> Path:
    """Where the quarantine files of segments are (`Layout.quarantine_file`)."""
    return layout.zone(Zone.QUARANTINE) / "segments"


@dataclass
class ErasureResult:
    """What an erasure removed and republished; never the values."""

    erasure_id: str
    council: str
    device_id: str
    received_from: str | None
    received_to: str | None
    raw_segments: int = 0
    raw_records: int = 0
    quarantine_rows: int = 0
    quarantine_file_rows: int = 0
    staged_rows: int = 0
    corrections: int = 0
    published_rows: int = 0
    partitions: list[list[str]] = field(default_factory=list)
    republished: int = 0
    withdrawn: int = 0
    release: str | None = None
    releases_deleted: list[str] = field(default_factory=list)
    open_segments: list[str] = field(default_factory=list)
    store: str | None = None
    store_releases_deleted: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def erase_device(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    limits,
    council: str,
    device: str,
    *,
    start: datetime | None,
    end: datetime | None,
    who: str,
    reference: str,
    now: datetime,
    registry: Registry | None = None,
    quality: QualitySettings | None = None,
    publication: PublishSettings | None = None,
    licences: Mapping[str, dict] | None = None,
    keep_old_releases: bool = False,
    storage: StorageSettings | None = None,
) -> ErasureResult:
    """Erase what a device sent between `start` and `end` (received time; None: unbounded).

    With an object store (`storage.url`; None: `CIVICFLOW_STORAGE__URL` from the environment) its
    raw segments and quarantine files are erased as the data root's are, the release is published
    to it, and the releases deleted under the data root are deleted from it.

    Raises:
        ErasureError: If the council or device is blank or the window is empty.
    """
    from civicflow.jobs.publication import gate_and_publish, release_step
    from civicflow.publish.objectstore import publish_to_store
    from civicflow.publish.release import latest_release, prune_releases
    from civicflow.transforms.stage import export_partitions
    from civicflow.warehouse.partitions import current
    from civicflow.warehouse.privacy import (
        device_records,
        drop_quarantine_file_rows,
        drop_stored_quarantine_rows,
        erase_device_rows,
        erase_stored_records,
        erasure_scratch,
        in_parallel,
        record_erasure,
        stored_quarantine_files,
        stored_segments,
        update_ledger,
    )
    from civicflow.warehouse.segments import OPEN_SUFFIX, erase_records

    if not council.strip() or not device.strip():
        raise ErasureError("an erasure needs a council and a device: --council C --device D")
    if start is not None and end is not None and start >= end:
        raise ErasureError(f"the erasure window is empty or reversed: from {start} to {end}")
    # What is received after the erasure starts is new: the window ends then at the latest, here and
    # in its record, which is also what every later merge drops (warehouse/privacy.py erasure_windows).
    end = now if end is None or end > now else end
    if start is not None and start >= end:
        raise ErasureError(f"the erasure window starts at {start}, after the erasure itself ({now})")
    result = ErasureResult(
        str(uuid.uuid4()),
        council,
        device,
        start.isoformat() if start else None,
        end.isoformat() if end else None,
    )
    published_before = _published_rows(con, council, device)
    storage = storage if storage is not None else Settings().storage
    store = object_store(layout, storage)
    in_store = {s.segment_id: s for s in stored_segments(store)} if store is not None else {}
    result.store = store.url if store is not None else None

    # 1. raw: what the decoder says is the device's, and what the warehouse traces to it
    records = _raw_records(layout, limits, registry, council, device, start, end)
    if store is not None:
        for sid, offsets in _stored_records(store, in_store, limits, registry, council, device, start, end):
            records.setdefault(sid, set()).update(offsets)
    for sid, offsets in device_records(con, council, device, start, end).items():
        records.setdefault(sid, set()).update(offsets)
    staged_ids = {sid for (sid,) in con.execute("SELECT segment_id FROM raw.segments").fetchall()}
    rewritten: dict[str, tuple[str, int]] = {}  # segment id -> (its new sha256, records erased)
    for sid, offsets in sorted(records.items()):
        path = layout.raw / f"{sid}.seg"
        if not path.is_file():  # deleted at the end of its retention period, or in the store
            continue
        digest, erased = erase_records(path, offsets)
        if erased:
            rewritten[sid] = (digest, erased)
    if store is not None:  # the store's copy is the one staged (a local one is about to go)
        todo = [in_store[sid] for sid in sorted(records) if sid in in_store]
        with erasure_scratch(layout.root) as scratch:
            done = in_parallel(lambda s: erase_stored_records(store, s, records[s.segment_id], scratch), todo)
        for seg, (digest, erased) in zip(todo, done, strict=True):
            if erased:
                rewritten[seg.segment_id] = (digest, max(erased, rewritten.get(seg.segment_id, ("", 0))[1]))
    for sid, (digest, erased) in sorted(rewritten.items()):
        result.raw_segments += 1
        result.raw_records += erased
        if sid in staged_ids:
            update_ledger(con, sid, digest, erased)
    # A segment the listener is still writing is its own: it is erased on a later run, once closed.
    result.open_segments = sorted(
        p.relative_to(layout.raw).as_posix()
        for p in layout.raw.glob(f"*/*{OPEN_SUFFIX}")
        if _holds_device(p, limits, registry, council, device, start, end)
    )

    # 2. quarantine files, then the warehouse in one transaction
    for path in sorted(_quarantine_root(layout).rglob("*.parquet")):
        sid = path.relative_to(_quarantine_root(layout)).as_posix().removesuffix(".parquet")
        result.quarantine_file_rows += drop_quarantine_file_rows(
            path, council, device, start, end, records.get(sid, set())
        )
    if store is not None:  # a segment opened at or after `end` cannot hold a record of the window
        files = [
            q for q in stored_quarantine_files(store) if end is None or q.opened is None or q.opened < end
        ]
        result.quarantine_file_rows += sum(
            in_parallel(
                lambda q: drop_stored_quarantine_rows(
                    store, q.key, council, device, start, end, records.get(q.segment_id, set())
                ),
                files,
            )
        )
    erased_rows = erase_device_rows(con, council, device, start, end, records, now)
    result.quarantine_rows = erased_rows.quarantine_rows
    result.staged_rows = erased_rows.staged_rows
    result.corrections = erased_rows.corrections
    result.partitions = [list(p) for p in erased_rows.partitions]
    export_partitions(con, layout)

    # 3. the changed partitions through the gate and the publish path, and a release
    refs = [
        ref
        for domain, c, day in erased_rows.partitions
        if (ref := current(con, domain, c, datetime.fromisoformat(day).date())) is not None
    ]
    if refs:
        gated = gate_and_publish(
            layout,
            con,
            now=now,
            licences=licences,
            quality=quality,
            registry=registry,
            publication=publication,
            refs=refs,
            storage=storage,
        )
        result.republished = gated.published
        result.release = gated.release
    result.withdrawn = _withdraw_remaining(con, layout, council, device, now, registry)
    if result.withdrawn:
        outcome = release_step(
            layout,
            con,
            now=now,
            licences=licences,
            publication=publication,
            judged={d for d, _, _ in erased_rows.partitions},
            storage=storage,
            registry=registry,
        )
        result.release = outcome.release
    result.published_rows = published_before - _published_rows(con, council, device)

    # 4. older releases that may still carry the device's published readings
    if published_before and not keep_old_releases:
        result.releases_deleted = prune_releases(layout, keep=1)
    # ... and from the store at once: `latest.json` names the data root's latest release (published
    # again if it lags), then the releases the data root no longer has go (`prune_store`).
    if store is not None and (latest := latest_release(layout)) is not None:
        published = publish_to_store(layout, storage, latest.name)
        result.store_releases_deleted = list(published.removed) if published is not None else []

    # 5. the record of the erasure
    from civicflow.warehouse.partitions import transaction

    with transaction(con):
        record_erasure(
            con,
            erasure_id=result.erasure_id,
            now=now,
            who=who,
            reference=reference,
            council=council,
            device=device,
            start=start,
            end=end,
            raw_segments=result.raw_segments,
            raw_records=result.raw_records,
            erased=erased_rows,
            published_rows=result.published_rows,
            release_id=result.release,
        )
    log.info(
        "erased device %s of %s (erasure %s): %d raw records in %d segments, %d quarantine rows, %d "
        "staged rows, %d corrections, %d published rows; %d partitions republished",
        device,
        council,
        result.erasure_id,
        result.raw_records,
        result.raw_segments,
        result.quarantine_rows,
        result.staged_rows,
        result.corrections,
        result.published_rows,
        len(refs),
    )
    return result


def _owns(record, limits, registry: Registry | None, council: str, device: str) -> bool:
    """Whether a raw record decodes to a reading or a rejection of the device."""
    from civicflow.transforms.decode import decode_message

    decoded = decode_message(
        record.topic, record.payload, limits, received_at=record.received_at, registry=registry
    )
    owners = {(r.get("council"), r.get("device_id")) for r in decoded.readings}
    owners |= {(r.council, r.device_id) for r in decoded.rejections}
    return (council, device) in owners


def _holds_device(
    path: Path,
    limits,
    registry: Registry | None,
    council: str,
    device: str,
    start: datetime | None,
    end: datetime | None,
) -> bool:
    from civicflow.warehouse.segments import read_segment_lenient

    records, _, _ = read_segment_lenient(path)
    return any(
        (start is None or r.received_at >= start)
        and (end is None or r.received_at < end)
        and _owns(r, limits, registry, council, device)
        for r in records
    )


def _raw_records(
    layout: Layout,
    limits,
    registry: Registry | None,
    council: str,
    device: str,
    start: datetime | None,
    end: datetime | None,
) -> dict[str, set[int]]:
    """The records of closed segments that decode to the device's readings or rejections, received
    in the window (a segment opened at or after `end` cannot hold one)."""
    from civicflow.warehouse.privacy import segment_opened_at
    from civicflow.warehouse.segments import CLOSED_SUFFIX, list_closed_segments

    found: dict[str, set[int]] = {}
    for path in list_closed_segments(layout.raw):
        opened = segment_opened_at(path)
        if end is not None and opened is not None and opened >= end:
            continue
        offsets = _device_offsets(path.read_bytes(), limits, registry, council, device, start, end)
        if offsets:
            sid = path.relative_to(layout.raw).as_posix().removesuffix(CLOSED_SUFFIX)
            found[sid] = offsets
    return found


def _stored_records(
    store: Store,
    segments: Mapping[str, StoredObject],
    limits,
    registry: Registry | None,
    council: str,
    device: str,
    start: datetime | None,
    end: datetime | None,
) -> list[tuple[str, set[int]]]:
    """`_raw_records` over the closed segments in the store (read several at once)."""
    todo = [s for s in segments.values() if end is None or s.opened is None or s.opened < end]

    def offsets(seg: StoredObject) -> set[int]:
        try:
            data = store.get_bytes(seg.key)
        except FileNotFoundError:  # deleted meanwhile by retention
            return set()
        return _device_offsets(data, limits, registry, council, device, start, end)

    from civicflow.warehouse.privacy import in_parallel

    return [(s.segment_id, o) for s, o in zip(todo, in_parallel(offsets, todo), strict=True) if o]


def _device_offsets(
    data: bytes,
    limits,
    registry: Registry | None,
    council: str,
    device: str,
    start: datetime | None,
    end: datetime | None,
) -> set[int]:
    """The offsets of a segment's live records received in the window that are the device's."""
    from civicflow.warehouse.segment_columns import scan_columns

    prefix = f"{limits.topic_prefix}/".encode()
    mine = f"{limits.topic_prefix}/{council}/".encode()
    lo = None if start is None else int(start.timestamp() * 1e9)
    hi = None if end is None else int(end.timestamp() * 1e9)
    found: set[int] = set()
    cols = scan_columns(data)
    erased = cols.erased
    for i in range(len(cols)):
        ns = int(cols.received_at_ns[i])
        if erased[i] or (lo is not None and ns < lo) or (hi is not None and ns >= hi):
            continue
        record = cols.record(i)
        # a city topic names its council and device: another's is not decoded (LoRaWAN ones are)
        parts = record.topic.split(b"/")
        if record.topic.startswith(prefix) and (
            not record.topic.startswith(mine) or len(parts) < 4 or parts[3] != device.encode()
        ):
            continue
        if _owns(record, limits, registry, council, device):
            found.add(record.offset)
    return found


def _published_rows(con: duckdb.DuckDBPyConnection, council: str, device: str) -> int:
    return sum(
        con.execute(
            f"SELECT count(*) FROM published.{d.domain} WHERE council = ? AND device_id = ?",
            [council, device],
        ).fetchall()[0][0]
        for d in DATASETS.values()
    )


def _withdraw_remaining(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    council: str,
    device: str,
    now: datetime,
    registry: Registry | None,
) -> int:
    """Withdraw the device's published readings that are no longer staged (the gate held back the
    version that dropped them): the earlier publication of each such day is published again,
    under its own version, without them. Returns how many partitions were withdrawn from."""
    from civicflow.publish.partition import publish_partition
    from civicflow.warehouse.partitions import publications

    withdrawn = 0
    for domain in DATASETS:
        dataset = DATASETS[Domain(domain)]
        names = ", ".join(c.name for c in dataset.published_columns)
        key = [k for k in dataset.natural_key if k not in ("council", "device_id")]
        gone = " AND ".join(f"s.{k} IS NOT DISTINCT FROM p.{k}" for k in key)
        days = con.execute(
            f"""SELECT DISTINCT CAST(observed_at AS DATE) FROM published.{domain} p
                WHERE council = $council AND device_id = $device
                  AND NOT EXISTS (SELECT 1 FROM staged.{domain} s
                                  WHERE s.council = p.council AND s.device_id = p.device_id AND {gone})
                ORDER BY 1""",
            {"council": council, "device": device},
        ).fetchall()
        ledger = {(p.ref.council, p.ref.event_date): p.ref for p in publications(con, domain.value)}
        for (day,) in days:
            ref = ledger.get((council, day))
            if ref is None:
                continue
            rows = con.sql(
                f"""SELECT {names} FROM published.{domain} p
                    WHERE council = $council AND CAST(observed_at AS DATE) = $day
                      AND NOT (device_id = $device AND NOT EXISTS (
                          SELECT 1 FROM staged.{domain} s
                          WHERE s.council = p.council AND s.device_id = p.device_id AND {gone}))""",
                params={"council": council, "device": device, "day": day},
            ).to_arrow_table()
            publish_partition(con, layout, dataset, council, day, ref.version, rows, now, registry)
            withdrawn += 1
            log.warning(
                "withdrew device %s from the publication of %s: the gate holds back the version "
                "that no longer has its readings",
                device,
                ref.label,
            )
    return withdrawn
