"""A data engineer's override: publish a held-back partition, with a recorded reason.

Approving is for a partition the gate is right to doubt but a person knows to be sound (a real
spike in traffic, a known outage day). The approval is for one version: it is validated again as
it stands, so the release records the current failures, and published with every row a failed
row-level rule names flagged in `qc_flag` (contract rules included). Who approved it ($USER),
when, why and what failed are kept in `published.approvals`. A later version of the partition
goes through the gate like any other.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import duckdb
import pyarrow.parquet as pq

from civicflow.contract import DATASETS, Domain
from civicflow.errors import TerminalError
from civicflow.registry import Registry
from civicflow.settings import QualitySettings
from expectations.release import (
    evaluate_council_partition,
    insert_validation,
    prepare_warehouse,
    record_evaluation,
    with_qc_flag,
)
from expectations.summary import held_back_partitions, write_quality_summary
from warehouse.aggregates import refresh_aggregates
from warehouse.layout import Layout
from warehouse.publish import publish_partition, write_datapackage


class ApprovalError(TerminalError):
    """The partition cannot be approved as asked (not held back, no reason): fix the request."""


def approve_partition(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    domain: Domain,
    council: str,
    day: date,
    *,
    reason: str,
    who: str,
    now: datetime,
    quality: QualitySettings | None = None,
    registry: Registry | None = None,
    licences: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """Publish a held-back partition's current version on a data engineer's word, and record it.

    Raises:
        ApprovalError: If the reason is blank or the partition is not held back.
    """
    if not reason.strip():
        raise ApprovalError('an approval needs a reason: --reason "why this partition can be published"')
    domain = Domain(domain)
    prepare_warehouse(con)
    held = {(h.council, h.event_date): h for h in held_back_partitions(con, domain.value)}
    target = held.get((council, day))
    if target is None:
        raise ApprovalError(
            f"{domain} {council} {day.isoformat()} is not held back; `civicflow release list` shows "
            "the partitions that are"
        )
    dataset = DATASETS[domain]
    rows = pq.read_table(layout.staged_file(domain, council, day))
    evaluation = evaluate_council_partition(con, dataset, council, day, rows, now, quality, registry)
    failed = [f["rule"] for f in evaluation.report.failed]
    approval = {"approved_by": who, "approved_at": now.isoformat(), "reason": reason, "failed": failed}
    report = record_evaluation(layout, dataset, council, day, target.version, evaluation)
    report["approval"] = approval
    rows = with_qc_flag(rows, evaluation)
    publish_partition(con, layout, dataset, council, day, target.version, rows, now, registry=registry)
    con.execute(
        "INSERT INTO published.approvals VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [domain.value, council, day, target.version, who, now, reason, json.dumps(failed)],
    )
    insert_validation(con, domain, council, day, target.version, now, evaluation.report.success, True, report)
    refresh_aggregates(con, layout)
    write_quality_summary(con, layout, domain, now)
    package = write_datapackage(con, layout, dataset, licences)
    return {
        "domain": domain.value,
        "council": council,
        "date": day.isoformat(),
        "version": target.version,
        "failed": failed,
        "flagged_rows": evaluation.report.metrics["flagged_rows"],
        "data_docs": report["data_docs"],
        "datapackage": str(package),
    } | approval
