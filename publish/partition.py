"""Publish one decided partition: its files, its published rows and aggregates, its ledger row.

The files are written first, each renamed into place in the publisher's working tree
(`data/published/<domain>/`); then one transaction replaces the partition's rows in
`published.<domain>` and its aggregate tables and records the decision and the publication
(`civicflow.warehouse.partitions`), pending until a release holds it. If anything raises, nothing is
recorded but a `gate_error` hold with the error: the partition's earlier publication, if any,
stays in place, and every other partition is published as usual.

Privacy is decided here, at write time: only a dataset's published columns (its allowlist) are
written, checked again on the written files, and the position of a citizen-hosted device is
rounded to 3 decimals (about 100 m).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from civicflow.contract import DATASETS, Dataset, Domain, Zone
from civicflow.publish.files import ROW_GROUP_ROWS, allowlist, coarsen_locations, sort_keys, write_files
from civicflow.registry import Registry
from civicflow.warehouse.aggregates import KINDS, aggregate_rows_of, columns, replace_aggregates
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import (
    GATE_ERROR,
    Decision,
    Hold,
    record_decision,
    record_publication,
    transaction,
)
from civicflow.warehouse.tables import arrow_schema

log = logging.getLogger(__name__)

READINGS = "readings"


MAX_BATCH_ROWS = 250_000
"""Rows published in one transaction at most: many partitions share one pass over the aggregate
tables, and memory stays bounded."""


def publish_decisions(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    decisions: list[Decision],
    *,
    now: datetime,
    registry: Registry | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> list[Decision]:
    """Carry out many decisions: record the holds, publish what they let through in batches.

    Partitions of one dataset are published together, in one transaction and one pass over the
    aggregate tables. If a batch raises, its partitions are published one by one, so whatever
    raised holds back only its own partition (`gate_error`). Returns the decisions as recorded.
    """
    recorded: dict[Any, Decision] = {}
    held = [d for d in decisions if not d.publishes]
    if held:
        with transaction(con):
            for d in held:
                _record_decision(con, d, now)
                recorded[d.ref] = d
    by_domain: dict[str, list[Decision]] = {}
    for d in decisions:
        if d.publishes:
            by_domain.setdefault(d.ref.domain, []).append(d)
    for batch in (b for group in by_domain.values() for b in _batches(group)):
        try:
            _publish(con, layout, batch, now, registry, row_group_rows)
            recorded.update((d.ref, d) for d in batch)
        except Exception as exc:  # noqa: BLE001 - one by one, so the error stays with its partition
            if len(batch) == 1:
                recorded[batch[0].ref] = _held_for_error(con, batch[0], exc, now)
                continue
            log.warning("publishing %d partitions together raised (%s): one by one", len(batch), exc)
            for d in batch:
                recorded[d.ref] = publish_decision(con, layout, d, now=now, registry=registry)
    return [recorded[d.ref] for d in decisions]


def publish_decision(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    decision: Decision,
    *,
    now: datetime,
    registry: Registry | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> Decision:
    """Carry out one decision: publish what it lets through, record what it holds back.

    Returns the decision as recorded: the one given, or, if publishing it raised, a `gate_error`
    hold of the whole partition (`publishes` is then False). Raises only if the warehouse itself
    cannot be written.
    """
    if not decision.publishes:
        with transaction(con):
            _record_decision(con, decision, now)
        return decision
    try:
        _publish(con, layout, [decision], now, registry, row_group_rows)
        return decision
    except Exception as exc:  # noqa: BLE001 - held back with the error; the others go on
        return _held_for_error(con, decision, exc, now)


def _record_decision(
    con: duckdb.DuckDBPyConnection, decision: Decision, now: datetime, published: bool = False
) -> None:
    record_decision(
        con,
        decision.ref,
        now=now,
        success=decision.success,
        published=published,
        report=decision.report,
        holds=decision.holds,
    )


def _held_for_error(
    con: duckdb.DuckDBPyConnection, decision: Decision, exc: Exception, now: datetime
) -> Decision:
    detail = f"publishing raised {type(exc).__name__}: {exc}"[:500]
    log.exception("held back %s: %s", decision.ref.label, detail)
    hold = Hold(None, (GATE_ERROR,), detail, decision.rows.num_rows)
    failed = {"rule": GATE_ERROR, "severity": "blocking", "grain": "partition", "detail": detail}
    report = decision.report | {
        "failed": [*decision.report.get("failed", []), failed],
        "holds": [{"device_id": None, "rules": [GATE_ERROR], "detail": detail, "rows": hold.rows}],
    }
    held = Decision(decision.ref, False, report, [hold], None)
    with transaction(con):
        _record_decision(con, held, now)
    return held


def _batches(decisions: list[Decision]) -> list[list[Decision]]:
    batches: list[list[Decision]] = [[]]
    rows = 0
    for d in decisions:
        if batches[-1] and rows + d.rows.num_rows > MAX_BATCH_ROWS:
            batches.append([])
            rows = 0
        batches[-1].append(d)
        rows += d.rows.num_rows
    return [b for b in batches if b]


def _publish(
    con: duckdb.DuckDBPyConnection,
    layout: Layout,
    decisions: list[Decision],
    now: datetime,
    registry: Registry | None,
    row_group_rows: int,
) -> None:
    """Publish partitions of one dataset: their files first, then one transaction records them."""
    dataset = DATASETS[Domain(decisions[0].ref.domain)]
    base = layout.published_dataset(dataset.domain)
    tables, files = [], {}
    for d in decisions:
        ref = d.ref
        table = published_rows(dataset, ref.council, d.rows, registry)
        written = write_files(
            con,
            table,
            dataset.published_columns,
            layout.partition_dir(Zone.PUBLISHED, dataset.domain, ref.council, ref.event_date),
            f"{dataset.domain}-{ref.council}-{ref.event_date.isoformat()}",
            base,
            allowed=dataset,
            row_group_rows=row_group_rows,
        )
        files[ref] = _file_entries(READINGS, table.num_rows, written)
        tables.append(table)
    parts = [(d.ref.council, d.ref.event_date) for d in decisions]
    days = sorted({day for _, day in parts})
    names = ", ".join(c.name for c in dataset.published_columns)
    con.register("release_rows", pa.concat_tables(tables))
    try:
        with transaction(con):
            con.execute("CREATE OR REPLACE TEMP TABLE release_parts (council VARCHAR, event_date DATE)")
            con.executemany("INSERT INTO release_parts VALUES (?, ?)", [list(p) for p in parts])
            con.execute(
                f"""DELETE FROM published.{dataset.domain}
                    WHERE observed_at >= ? AND observed_at < ?
                      AND (council, CAST(observed_at AS DATE)) IN
                          (SELECT (council, event_date) FROM release_parts)""",
                [_midnight(days[0]), _midnight(days[-1] + timedelta(days=1))],
            )
            con.execute(f"INSERT INTO published.{dataset.domain} ({names}) SELECT {names} FROM release_rows")
            replace_aggregates(con, dataset, parts)
            for kind in KINDS:
                for (council, day), rows in sorted(aggregate_rows_of(con, dataset, kind, parts).items()):
                    target = base / "aggregates" / kind / f"council={council}" / f"date={day.isoformat()}"
                    stem = f"{dataset.domain}-{kind}-{council}-{day.isoformat()}"
                    written = write_files(con, rows, columns(dataset, kind), target, stem, base)
                    ref = next(
                        d.ref for d in decisions if (d.ref.council, d.ref.event_date) == (council, day)
                    )
                    files[ref] += _file_entries(kind, rows.num_rows, written)
            for d, table in zip(decisions, tables, strict=True):
                record_publication(con, d.ref, rows=table.num_rows, now=now, files={"files": files[d.ref]})
                _record_decision(con, d, now, published=True)
    finally:
        con.unregister("release_rows")
    for d in decisions:
        log.info(
            "published %s: %d rows%s",
            d.ref.label,
            d.rows.num_rows,
            f", {len(d.holds)} devices held back" if d.holds else "",
        )


def _midnight(day) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


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
    from civicflow.warehouse.partitions import PartitionRef, publication

    ref = PartitionRef(dataset.domain.value, council, day, version)
    report = {"dataset": ref.domain, "now": now.isoformat(), "success": True, "failed": [], "warnings": []}
    _publish(con, layout, [Decision(ref, True, report, [], rows)], now, registry, row_group_rows)
    return publication(con, ref).files["files"]
