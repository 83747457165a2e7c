"""Publish one decided partition: its files, its published rows and aggregates, its ledger row.

The files are written first, each renamed into place in the publisher's working tree
(`data/published/<domain>/`); then one transaction replaces the partition's rows in
`published.<domain>` and its aggregate tables and records the decision and the publication
(`warehouse.partitions`), pending until a release holds it. If anything raises, nothing is
recorded but a `gate_error` hold with the error: the partition's earlier publication, if any,
stays in place, and every other partition is published as usual.

Privacy is decided here, at write time: only a dataset's published columns (its allowlist) are
written, checked again on the written files, and the position of a citizen-hosted device is
rounded to 3 decimals (about 100 m).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from civicflow.contract import DATASETS, Dataset, Domain, Zone
from civicflow.registry import Registry
from publish.files import ROW_GROUP_ROWS, allowlist, coarsen_locations, sort_keys, write_files
from warehouse.aggregates import KINDS, aggregate_rows, columns, replace_aggregates
from warehouse.layout import Layout
from warehouse.partitions import (
    GATE_ERROR,
    Decision,
    Hold,
    record_decision,
    record_publication,
    transaction,
)
from warehouse.tables import arrow_schema

log = logging.getLogger(__name__)

READINGS = "readings"


def publish_decision(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    decision: Decision,
    *,
    now: datetime,
    registry: Registry | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> Decision:
    """Carry out a decision: publish what it lets through, record what it holds back.

    Returns the decision as recorded: the one given, or, if publishing it raised, a `gate_error`
    hold of the whole partition (`publishes` is then False). Raises only if the warehouse itself
    cannot be written.
    """
    if decision.publishes:
        try:
            _publish(con, layout, decision, now, registry, row_group_rows)
            return decision
        except Exception as exc:  # noqa: BLE001 - held back with the error; the others go on
            detail = f"publishing raised {type(exc).__name__}: {exc}"[:500]
            log.exception("held back %s: %s", decision.ref.label, detail)
            hold = Hold(None, (GATE_ERROR,), detail, decision.rows.num_rows)
            failed = {"rule": GATE_ERROR, "severity": "blocking", "grain": "partition", "detail": detail}
            report = decision.report | {
                "failed": [*decision.report.get("failed", []), failed],
                "holds": [{"device_id": None, "rules": [GATE_ERROR], "detail": detail, "rows": hold.rows}],
            }
            decision = Decision(decision.ref, False, report, [hold], None)
    with transaction(con):
        record_decision(
            con,
            decision.ref,
            now=now,
            success=decision.success,
            published=False,
            report=decision.report,
            holds=decision.holds,
        )
    return decision


def _publish(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    decision: Decision,
    now: datetime,
    registry: Registry | None,
    row_group_rows: int,
) -> None:
    ref = decision.ref
    dataset = DATASETS[Domain(ref.domain)]
    table = published_rows(dataset, ref.council, decision.rows, registry)
    base = layout.published_dataset(dataset.domain)
    day = ref.event_date.isoformat()
    files = _file_entries(
        READINGS,
        table.num_rows,
        write_files(
            con,
            table,
            dataset.published_columns,
            layout.partition_dir(Zone.PUBLISHED, dataset.domain, ref.council, ref.event_date),
            f"{dataset.domain}-{ref.council}-{day}",
            base,
            allowed=dataset,
            row_group_rows=row_group_rows,
        ),
    )
    names = ", ".join(c.name for c in dataset.published_columns)
    con.register("release_rows", table)
    try:
        with transaction(con):
            con.execute(
                f"DELETE FROM published.{dataset.domain} WHERE council = ? AND CAST(observed_at AS DATE) = ?",
                [ref.council, ref.event_date],
            )
            con.execute(f"INSERT INTO published.{dataset.domain} ({names}) SELECT {names} FROM release_rows")
            replace_aggregates(con, dataset, [(ref.council, ref.event_date)])
            for kind in KINDS:
                rows = aggregate_rows(con, dataset, kind, ref.council, ref.event_date)
                target = base / "aggregates" / kind / f"council={ref.council}" / f"date={day}"
                written = write_files(
                    con,
                    rows,
                    columns(dataset, kind),
                    target,
                    f"{dataset.domain}-{kind}-{ref.council}-{day}",
                    base,
                )
                files += _file_entries(kind, rows.num_rows, written)
            record_publication(con, ref, rows=table.num_rows, now=now, files={"files": files})
            record_decision(
                con,
                ref,
                now=now,
                success=decision.success,
                published=True,
                report=decision.report,
                holds=decision.holds,
            )
    finally:
        con.unregister("release_rows")
    log.info(
        "published %s: %d rows%s",
        ref.label,
        table.num_rows,
        f", {len(decision.holds)} devices held back" if decision.holds else "",
    )


def published_rows(dataset: Dataset, council: str, rows: pa.Table, registry: Registry | None) -> pa.Table:
    """The rows as published: the allowlist's columns, sorted, citizen-hosted positions rounded."""
    table = rows.select(list(allowlist(dataset))).cast(arrow_schema(dataset.published_columns))
    table = table.sort_by(sort_keys(dataset))
    if registry is not None:
        devices = {
            d for d in pc.unique(table["device_id"]).to_pylist() if registry.citizen_hosted(council, d)
        }
        table = coarsen_locations(table, devices)
    return table


def _file_entries(kind: str, rows: int, written: dict[str, dict]) -> list[dict[str, Any]]:
    """The ledger's (and the manifest's) description of a table's files: kind, format, path, size, hash."""
    return [{"kind": kind, "format": fmt, "rows": rows, **meta} for fmt, meta in written.items()]


def publish_partition(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    dataset: Dataset,
    council: str,
    day,
    version: int,
    rows: pa.Table,
    now: datetime,
    registry: Registry | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> list[dict[str, Any]]:
    """Publish rows already judged fit as a partition's version (loaders and benchmarks); its files.

    Raises:
        PublicationError: If what would be written breaks a publication rule.
    """
    from warehouse.partitions import PartitionRef, publication

    ref = PartitionRef(dataset.domain.value, council, day, version)
    report = {"dataset": ref.domain, "now": now.isoformat(), "success": True, "failed": [], "warnings": []}
    _publish(con, layout, Decision(ref, True, report, [], rows), now, registry, row_group_rows)
    return publication(con, ref).files["files"]
