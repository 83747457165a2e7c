"""Publication as jobs: plan the gate, judge and publish partitions, cut the release, approve.

This is where the quality gate (`expectations`, which decides and reports) meets the publish stage
(`publish`, which writes files, the ledger and releases). A publish run is three steps, each an
Airflow task a data engineer can retry on its own (dags/civicflow_publish.py):

1. `plan`: the staged partition versions the gate has to judge, in small groups.
2. `judge_and_publish`, once per group: judge the group's partitions and publish what each
   decision lets through. A partition that raises is held back with `gate_error`; the others go on.
3. `release_step`, whatever the judging tasks' states: rebuild the data packages and quality
   summaries and put every pending publication into a release that `latest` points at.

`gate_and_publish` runs the three in one call (`civicflow batch` without Airflow, tests, and
`approve`, which publishes the approved partition through the same path and cuts the release).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb

from civicflow.contract import Domain
from civicflow.errors import TerminalError
from civicflow.registry import Registry
from civicflow.settings import PublishSettings, QualitySettings, Settings, StorageSettings
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import (
    GATE_ERROR,
    Decision,
    Hold,
    PartitionRef,
    current,
    domains_published,
    held_back,
    record_approval,
    to_validate,
    transaction,
)

log = logging.getLogger(__name__)

MAX_MAPPED_TASKS = 256
"""Judging tasks one publish run maps at most (Airflow refuses more than `max_map_length`, 1024)."""


class ApprovalError(TerminalError):
    """The partition cannot be approved as asked (not held back, no reason): fix the request."""


@dataclass
class GateResult:
    """What one publish run judged, published, held back and released."""

    validated: int = 0
    passed: int = 0
    failed: int = 0
    published: int = 0
    held_back: list[dict] = field(default_factory=list)
    devices_held: list[dict] = field(default_factory=list)
    warned: list[dict] = field(default_factory=list)
    gate_errors: list[dict] = field(default_factory=list)
    release: str | None = None
    released: int = 0

    def add(self, other: GateResult) -> None:
        for name in ("validated", "passed", "failed", "published"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("held_back", "devices_held", "warned", "gate_errors"):
            getattr(self, name).extend(getattr(other, name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "validated": self.validated,
            "passed": self.passed,
            "failed": self.failed,
            "published": self.published,
            "held_back": self.held_back,
            "devices_held": self.devices_held,
            "warned": self.warned,
            "gate_errors": self.gate_errors,
            "release": self.release,
            "released": self.released,
        }


def plan(con: duckdb.DuckDBPyConnection, *, per_task: int = 1) -> list[list[dict]]:
    """The partition versions to judge, in groups of `per_task` (more if there are very many).

    One partition per group by default, so that a judging task is one council's day in Airflow; a
    backfill of thousands of days is spread over at most `MAX_MAPPED_TASKS` groups.
    """
    refs = to_validate(con)
    size = max(per_task, math.ceil(len(refs) / MAX_MAPPED_TASKS)) if refs else 1
    return [[r.to_json() for r in refs[i : i + size]] for i in range(0, len(refs), size)]


def judge_and_publish(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    refs: Iterable[PartitionRef],
    *,
    now: datetime,
    quality: QualitySettings | None = None,
    registry: Registry | None = None,
) -> GateResult:
    """Judge partition versions and carry out each decision; never raises for one partition."""
    from civicflow.expectations.judge import judge_partitions
    from civicflow.publish.partition import publish_decisions

    decisions = judge_partitions(con, layout, refs, now=now, quality=quality, registry=registry)
    return gate_result(publish_decisions(con, layout, decisions, now=now, registry=registry))


def judge_step(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    refs: Iterable[PartitionRef],
    *,
    now: datetime,
    quality: QualitySettings | None = None,
    registry: Registry | None = None,
) -> GateResult:
    """Judge partition versions and keep each decision beside its report, for `publish_judged`.

    Reads the warehouse only, so many judging tasks run at once (civicflow_publish's mapped
    `judge`). Returns what was decided (before publication, which may still hold a partition back).
    """
    from civicflow.expectations.judge import judge_partitions

    decisions = judge_partitions(con, layout, refs, now=now, quality=quality, registry=registry)
    for decision in decisions:
        _save_decision(layout, decision)
    return gate_result(decisions)


def publish_judged(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    refs: Iterable[PartitionRef],
    *,
    now: datetime,
    registry: Registry | None = None,
) -> GateResult:
    """Carry out the decisions `judge_step` kept for these versions (the one writer of the warehouse).

    A version with no kept decision (its judging task failed) is left unjudged: the next run plans
    it again. Each decision's files are removed once it is recorded.
    """
    from civicflow.publish.partition import publish_decisions

    decisions = [d for d in (_load_decision(layout, ref) for ref in refs) if d is not None]
    recorded = publish_decisions(con, layout, decisions, now=now, registry=registry)
    for decision in recorded:
        for path in _decision_files(layout, decision.ref):
            path.unlink(missing_ok=True)
    return gate_result(recorded)


def _decision_files(layout: Layout, ref: PartitionRef) -> tuple[Path, Path]:
    from civicflow.expectations.docs import validation_dir

    where = validation_dir(layout, ref.domain, ref.council, ref.event_date) / f"v{ref.version}"
    return where / "decision.json", where / "decision.parquet"


def _save_decision(layout: Layout, decision: Decision) -> None:
    import orjson
    import pyarrow.parquet as pq

    meta, rows = _decision_files(layout, decision.ref)
    meta.parent.mkdir(parents=True, exist_ok=True)
    if decision.rows is not None:
        pq.write_table(decision.rows, rows.with_suffix(".tmp"), compression="zstd")
        os.replace(rows.with_suffix(".tmp"), rows)
    else:
        rows.unlink(missing_ok=True)
    doc = {
        "ref": decision.ref.to_json(),
        "success": decision.success,
        "report": decision.report,
        "holds": [h.__dict__ for h in decision.holds],
        "rows": decision.rows is not None,
    }
    meta.with_suffix(".tmp").write_bytes(orjson.dumps(doc, default=str))
    os.replace(meta.with_suffix(".tmp"), meta)


def _load_decision(layout: Layout, ref: PartitionRef) -> Decision | None:
    import orjson
    import pyarrow.parquet as pq

    meta, rows = _decision_files(layout, ref)
    if not meta.exists():
        log.warning("no decision kept for %s (its judging task failed?): it is judged again next run", ref)
        return None
    doc = orjson.loads(meta.read_bytes())
    holds = [Hold(h["device_id"], tuple(h["rules"]), h["detail"], h["rows"]) for h in doc["holds"]]
    table = pq.read_table(rows) if doc["rows"] else None
    return Decision(ref, doc["success"], doc["report"], holds, table)


def gate_result(decisions: Iterable[Decision]) -> GateResult:
    """What the decisions judged, published, held back and warned of."""
    result = GateResult()
    for decision in decisions:
        ref = decision.ref
        where = {"dataset": ref.domain, "council": ref.council, "date": ref.event_date.isoformat()}
        result.validated += 1
        published, report = decision.publishes, decision.report
        result.published += int(published)
        if decision.success:
            result.passed += 1
        else:
            result.failed += 1
        whole = [h for h in decision.holds if h.device_id is None]
        if any(GATE_ERROR in h.rules for h in whole):
            result.gate_errors.append(where | {"error": whole[0].detail})
        if not published:
            result.held_back.append(
                where
                | {
                    "failed": sorted({r for h in decision.holds for r in h.rules}),
                    "data_docs": report.get("data_docs"),
                }
            )
        for hold in decision.holds:
            if hold.device_id is not None:
                result.devices_held.append(
                    where | {"device_id": hold.device_id, "failed": list(hold.rules), "rows": hold.rows}
                )
        if published and report.get("warnings"):
            result.warned.append(
                where
                | {
                    "warnings": [w["rule"] for w in report["warnings"]],
                    "flagged_rows": report.get("metrics", {}).get("flagged_rows"),
                }
            )
    return result


def release_step(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    *,
    now: datetime,
    licences: Mapping[str, dict] | None = None,
    publication: PublishSettings | None = None,
    judged: Iterable[str] = (),
    storage: StorageSettings | None = None,
    registry: Registry | None = None,
):
    """Rebuild quality summaries, data packages and Data Docs; cut the release (`civicflow.publish.release`).

    With an object store (`storage.url`; None: `CIVICFLOW_STORAGE__URL` from the environment), the
    release `latest` points at is then published there (`civicflow.publish.objectstore`).
    """
    from civicflow.expectations.docs import write_pages
    from civicflow.expectations.summary import quality_summary
    from civicflow.publish.objectstore import publish_to_store
    from civicflow.publish.release import release

    pub = publication or PublishSettings()
    domains = {Domain(d) for d in judged} | set(domains_published(con))
    summaries = {d.value: quality_summary(con, d, now) for d in sorted(domains)}
    docs = write_pages(con, layout)  # the Data Docs of every partition the release holds
    outcome = release(
        con,
        layout,
        now=now,
        quality=summaries,
        licences=licences,
        keep=pub.keep_releases,
        base_url=pub.base_url,
        ckan=pub.ckan,
        data_docs=docs.pages,
        stylesheets=docs.stylesheets,
        councils=registry.councils if registry is not None else None,
    )
    # Object storage (docs/scaling.md): the local release is cut; publish it to the store and switch
    # the store's latest.json. Idempotent, so a re-run after a failure here completes it.
    publish_to_store(layout, storage if storage is not None else Settings().storage, outcome.release)
    return outcome


def gate_and_publish(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    *,
    now: datetime | None = None,
    licences: Mapping[str, dict] | None = None,
    quality: QualitySettings | None = None,
    registry: Registry | None = None,
    publication: PublishSettings | None = None,
    refs: Iterable[PartitionRef] | None = None,
    storage: StorageSettings | None = None,
) -> GateResult:
    """Plan, judge and publish, release: a whole publish run in one call."""
    now = now or datetime.now(tz=UTC)
    refs = to_validate(con) if refs is None else list(refs)
    result = judge_and_publish(layout, con, refs, now=now, quality=quality, registry=registry)
    outcome = release_step(
        layout,
        con,
        now=now,
        licences=licences,
        publication=publication,
        judged={r.domain for r in refs},
        storage=storage,
        registry=registry,
    )
    result.release, result.released = outcome.release, outcome.marked
    return result


def approve(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    domain: Domain | str,
    council: str,
    day: date,
    *,
    reason: str,
    who: str,
    now: datetime,
    device: str | None = None,
    quality: QualitySettings | None = None,
    registry: Registry | None = None,
    licences: Mapping[str, dict] | None = None,
    publication: PublishSettings | None = None,
    storage: StorageSettings | None = None,
) -> dict[str, Any]:
    """Lift a hold on the current version of a partition (or one device's day) and publish it.

    The approval is recorded first; the partition is then judged again and published through the
    same path as any other, and the release is cut, so consumers see it in `latest` at once.

    Raises:
        ApprovalError: If the reason is blank or nothing of that partition (or device) is held back.
    """
    if not reason.strip():
        raise ApprovalError('an approval needs a reason: --reason "why this can be published"')
    domain = Domain(domain)
    holds = [
        h
        for h in held_back(con, domain.value)
        if h.council == council and h.event_date == day and (device is None or h.device_id == device)
    ]
    ref = current(con, domain.value, council, day)
    what = f"{domain} {council} {day.isoformat()}" + (f" device {device}" if device else "")
    if ref is None or not holds:
        raise ApprovalError(
            f"{what} is not held back; `civicflow release list` shows the partitions and devices that are"
        )
    failed = sorted({r for h in holds for r in h.rules})
    with transaction(con):
        record_approval(con, ref, device_id=device, who=who, now=now, reason=reason, failed=failed)
    result = gate_and_publish(
        layout,
        con,
        now=now,
        licences=licences,
        quality=quality,
        registry=registry,
        publication=publication,
        refs=[ref],
        storage=storage,
    )
    return {
        "domain": domain.value,
        "council": council,
        "date": day.isoformat(),
        "device_id": device,
        "version": ref.version,
        "failed": failed,
        "published": result.published == 1,
        "release": result.release,
        "approved_by": who,
        "approved_at": now.isoformat(),
        "reason": reason,
    }
