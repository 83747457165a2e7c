"""Entry points of the batch tasks: read settings once, then call the stage packages.

DAG tasks (dags/) and the CLI (app/) call these, so that what a DAG run does and what a data
engineer runs by hand are the same code. Stage packages are imported inside each job, so a DAG file
that imports this package stays quick to parse and loads Great Expectations only in the task that
needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from civicflow.settings import Settings


def stage_job(settings: Settings | None = None, registry_dir: Path | None = None) -> dict:
    """Stage every closed raw segment not yet staged, in this one process: decode them all into
    `staged.increments` (one shard), then merge. Returns the merge's StageResult as a dict.

    The device registry is read from `registry_dir`, by default `registry/` of the checkout
    (civicflow.registry.DEFAULT_REGISTRY_DIR); a malformed registry fails the task (terminal).
    """
    settings = settings or Settings()
    decode_job(0, shards=1, settings=settings, registry_dir=registry_dir)
    return merge_job(settings)


def decode_job(
    shard: int,
    *,
    shards: int | None = None,
    settings: Settings | None = None,
    registry_dir: Path | None = None,
) -> dict:
    """Decode the raw segments of one staging shard into `staged.increments` (warehouse/lake.py).

    Many of these run at once, one per shard (`CIVICFLOW_STAGE__SHARDS`); none opens the DuckDB
    warehouse, so they need not take turns.
    """
    from civicflow.registry import DEFAULT_REGISTRY_DIR, load_registry
    from civicflow.transforms.stage import decode_shard
    from civicflow.warehouse.layout import Layout

    settings = settings or Settings()
    registry = load_registry(registry_dir or settings.registry_dir or DEFAULT_REGISTRY_DIR)
    return decode_shard(
        Layout(settings.data_root),
        open_lake(settings),
        _limits(settings),
        shard=shard,
        shards=shards or settings.stage.shards,
        registry=registry,
        store=_store(settings),
    ).to_dict()


def merge_job(settings: Settings | None = None) -> dict:
    """Merge every decoded increment into the warehouse (the one writer), then fold what it took:
    ledger rows to `raw.segments`, data files out of `staged.increments`, snapshots expired."""
    from civicflow.transforms.stage import merge_increments
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.layout import Layout

    settings = settings or Settings()
    layout = Layout(settings.data_root)
    lake = open_lake(settings)
    con = connect(layout.warehouse)
    try:
        result, consumed = merge_increments(
            layout,
            con,
            lake,
            store=_store(settings),
            close_after=timedelta(hours=settings.stage.close_after_hours),
        )
    finally:
        con.close()
    lake.fold(consumed)
    return result.to_dict()


def feedback_job(settings: Settings | None = None, now: datetime | None = None) -> dict:
    """Publish each device's rejection summary to its gateway's feedback topic (docs/mqtt-contract.md,
    Feedback): retained, QoS 1, only for devices quarantined since their previous summary, so a
    second run publishes nothing. Rows naming no device (bad topics) are counted in the result.

    Uses the listener's broker (`CIVICFLOW_MQTT__*`) with `CIVICFLOW_FEEDBACK__*`'s account; does
    nothing when there is no broker (`CIVICFLOW_MQTT__HOST` unset) or `CIVICFLOW_FEEDBACK__ENABLED`
    is false.
    """
    from dataclasses import replace

    from civicflow.ingest.feedback import FeedbackTarget, publish_summaries, summary_topic
    from civicflow.ingest.listener import BrokerAddress
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.feedback import pending_summaries, record_published
    from civicflow.warehouse.layout import Layout

    settings = settings or Settings()
    feedback = settings.feedback
    if not feedback.enabled:
        return {"skipped": "CIVICFLOW_FEEDBACK__ENABLED is false", "published": []}
    if settings.mqtt.host is None:
        return {"skipped": "no broker to publish to: CIVICFLOW_MQTT__HOST is unset", "published": []}
    broker = BrokerAddress.from_settings(settings)
    if feedback.username is not None:
        password = feedback.password.get_secret_value() if feedback.password else None
        broker = replace(broker, username=feedback.username, password=password)
    target = FeedbackTarget(broker, settings.mqtt.topic_prefix, feedback.client_id, feedback.timeout_s)
    now = now or datetime.now(tz=UTC)
    con = connect(Layout(settings.data_root).warehouse)
    try:
        pending = pending_summaries(con, now, timedelta(hours=feedback.window_hours))
        published = publish_summaries(target, pending.summaries)
        record_published(con, published)
    finally:
        con.close()
    return {
        "skipped": None,
        "devices": len(pending.summaries),
        "published": [summary_topic(target.prefix, s) for s in published],
        "unaddressable": pending.unaddressable,
        "unaddressable_by_reason": pending.unaddressable_by_reason,
    }


def _store(settings: Settings):
    """The object store of `CIVICFLOW_STORAGE__URL`, or None: the zones are under the data root."""
    if not settings.storage.url:
        return None
    from civicflow.warehouse.storage import open_store

    return open_store(settings.storage, settings.data_root)


def open_lake(settings: Settings):
    """The Iceberg catalogue of the staged increments: `CIVICFLOW_CATALOG__URI` (SQLite beside the
    warehouse by default), tables under the data root or `<CIVICFLOW_STORAGE__URL>/warehouse/iceberg`."""
    from civicflow.warehouse.lake import open_lake as open_catalog

    properties: dict[str, str] = {}
    if (store := _store(settings)) is not None:
        location = store.location("warehouse/iceberg")
        properties = store.iceberg_properties()
    else:
        directory = settings.data_root / "warehouse" / "iceberg"
        directory.mkdir(parents=True, exist_ok=True)
        location = directory.resolve().as_uri()
    if not settings.catalog.uri:
        (settings.data_root / "warehouse").mkdir(parents=True, exist_ok=True)
    return open_catalog(
        settings.catalog_uri, location, properties=properties, commit_retries=settings.catalog.commit_retries
    )


def publish_job(settings: Settings | None = None) -> dict:
    """A whole publish run in one call: judge what changed, publish what passes, cut the release.

    Thresholds are `CIVICFLOW_QUALITY__*`, overridden per council by its registry file's
    `[quality]` table. Each council's data is published under the licence its registry file
    names (the Open Government Licence unless it says otherwise).
    """
    from civicflow.jobs.publication import gate_and_publish

    settings = settings or Settings()
    with _warehouse(settings) as (layout, con, registry):
        return gate_and_publish(
            layout,
            con,
            licences=registry.licences(),
            quality=settings.quality,
            registry=registry,
            publication=settings.publish,
            storage=settings.storage,
        ).to_dict()


def plan_gate_job(settings: Settings | None = None) -> list[list[dict]]:
    """The staged partition versions the gate must judge, in groups: one judging task each."""
    from civicflow.jobs.publication import plan

    settings = settings or Settings()
    with _warehouse(settings) as (_layout, con, _registry):
        return plan(con, per_task=settings.publish.partitions_per_task)


def judge_job(refs: list[dict], settings: Settings | None = None) -> dict:
    """Judge a group of partition versions; keep each decision for `release_job` to publish.

    Opens the warehouse read-only, so the judging tasks of a run go at once, on as many workers as
    there are (they need the data root: the warehouse and the staged zone).
    """
    from civicflow.jobs.publication import judge_step
    from civicflow.registry import DEFAULT_REGISTRY_DIR, load_registry
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.layout import Layout
    from civicflow.warehouse.partitions import PartitionRef

    settings = settings or Settings()
    layout = Layout(settings.data_root)
    registry = load_registry(settings.registry_dir or DEFAULT_REGISTRY_DIR)
    con = connect(layout.warehouse, read_only=True)
    try:
        return judge_step(
            layout,
            con,
            [PartitionRef.from_json(r) for r in refs],
            now=datetime.now(tz=UTC),
            quality=settings.quality,
            registry=registry,
        ).to_dict()
    finally:
        con.close()


def release_job(
    settings: Settings | None = None, judged: list[str] | None = None, refs: list[dict] | None = None
) -> dict:
    """Publish what the judging tasks decided for `refs`, then cut the release that holds every
    pending publication (nothing if nothing changed)."""
    from civicflow.jobs.publication import publish_judged, release_step
    from civicflow.warehouse.partitions import PartitionRef

    settings = settings or Settings()
    now = datetime.now(tz=UTC)
    with _warehouse(settings) as (layout, con, registry):
        gate = publish_judged(
            layout, con, [PartitionRef.from_json(r) for r in refs or []], now=now, registry=registry
        )
        outcome = release_step(
            layout,
            con,
            now=now,
            licences=registry.licences(),
            publication=settings.publish,
            judged=sorted({*(judged or ()), *(r["domain"] for r in refs or [])}),
            storage=settings.storage,
            registry=registry,
        )
    return {
        "release": outcome.release,
        "cut": outcome.cut,
        "released": outcome.marked,
        "published": gate.published,
        "held_back": gate.held_back,
    }


@contextmanager
def _warehouse(settings: Settings):
    """The data root's layout, the warehouse opened for writing, and the device registry."""
    from civicflow.registry import DEFAULT_REGISTRY_DIR, load_registry
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.layout import Layout

    layout = Layout(settings.data_root)
    registry = load_registry(settings.registry_dir or DEFAULT_REGISTRY_DIR)
    con = connect(layout.warehouse)
    try:
        yield layout, con, registry
    finally:
        con.close()


def replay_job(
    start: str,
    end: str,
    settings: Settings | None = None,
    registry_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Re-stage the raw segments opened between `start` and `end` (UTC dates or date-times).

    Every partition those segments touch is rebuilt from all the raw segments that feed it
    (transforms/replay.py); the ones whose rows changed get a new version, so the next
    `civicflow_publish` run re-validates exactly those. A bad bound fails the task (terminal).
    """
    from civicflow.registry import DEFAULT_REGISTRY_DIR, load_registry
    from civicflow.transforms.replay import parse_bound, replay_segments
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.layout import Layout

    settings = settings or Settings()
    layout = Layout(settings.data_root)
    limits = _limits(settings)
    lower, upper = parse_bound(start, upper=False), parse_bound(end, upper=True)
    registry = load_registry(registry_dir or settings.registry_dir or DEFAULT_REGISTRY_DIR)
    con = connect(layout.warehouse)
    try:
        return replay_segments(
            layout, con, limits, lower, upper, registry=registry, progress=progress
        ).to_dict()
    finally:
        con.close()


def retention_job(settings: Settings | None = None) -> dict:
    """Enforce the retention periods (`CIVICFLOW_RETENTION__*`): delete staged raw segments, strip
    quarantine payloads and delete quarantine rows past theirs (docs/security.md, Personal data),
    under the data root and in the object store (`CIVICFLOW_STORAGE__URL`) when there is one.
    Then compact the staged files of closed days and maintain the Iceberg tables.

    When the warehouse changed, its file is rewritten so that no freed block keeps what was removed.
    """
    from civicflow.jobs.privacy import enforce_retention
    from civicflow.transforms.stage import compact_closed
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.layout import Layout
    from civicflow.warehouse.privacy import compact

    settings = settings or Settings()
    layout = Layout(settings.data_root)
    con = connect(layout.warehouse)
    now = datetime.now(tz=UTC)
    try:
        result = enforce_retention(layout, con, settings.retention, now=now, storage=settings.storage)
        if result["warehouse_changed"]:
            compact(con, layout.warehouse)
        # Merges compact a closed day's staged files; here too, for days no merge came after.
        close_after = timedelta(hours=settings.stage.close_after_hours)
        result["staged_partitions_compacted"] = len(compact_closed(con, layout, now, close_after))
    finally:
        con.close()
    result["lake"] = open_lake(settings).maintain()
    return result


def erase_job(
    council: str,
    device: str,
    *,
    start: str | None = None,
    end: str | None = None,
    who: str,
    reference: str,
    keep_old_releases: bool = False,
    settings: Settings | None = None,
) -> dict:
    """Erase what a device sent in a window (UTC dates or date-times of receipt; None: unbounded)
    from the raw zone, quarantine and staging (in the object store too, when there is one),
    republish what changes and record the erasure.

    Bounds are read as replay's are (a date as `end` means the end of that day). The warehouse file
    is rewritten afterwards, so that no freed block keeps an erased value.
    """
    from civicflow.jobs.privacy import erase_device
    from civicflow.transforms.replay import parse_bound
    from civicflow.warehouse.privacy import compact

    settings = settings or Settings()
    merge_job(settings)  # what the decoders staged goes into the warehouse first, so erasure sees it
    lower = parse_bound(start, upper=False) if start else None
    upper = parse_bound(end, upper=True) if end else None
    with _warehouse(settings) as (layout, con, registry):
        result = erase_device(
            layout,
            con,
            _limits(settings),
            council,
            device,
            start=lower,
            end=upper,
            who=who,
            reference=reference,
            now=datetime.now(tz=UTC),
            registry=registry,
            quality=settings.quality,
            publication=settings.publish,
            licences=registry.licences(),
            keep_old_releases=keep_old_releases,
            storage=settings.storage,
        )
        compact(con, layout.warehouse)
    return result.to_dict()


def _limits(settings: Settings):
    """The decoder's limits, from the settings (staging and replay decode alike)."""
    from civicflow.transforms.decode import Limits

    return Limits(
        topic_prefix=settings.mqtt.topic_prefix,
        max_payload_bytes=settings.max_payload_bytes,
        max_batch_readings=settings.max_batch_readings,
    )
