"""The gate's decisions: judge staged partitions, and say what each publishes and holds back.

A partition is judged from its staged Parquet file - the same bytes that will be published - with
its dataset's suite and its council's thresholds (`expectations/suites.py`). Partitions of one
dataset with the same thresholds are judged together in one Great Expectations run
(`gate.evaluate_batch`), and each gets its own decision:

- A blocking rule of partition grain failed (volume, key uniqueness, a missing column): the whole
  partition is held back; any earlier publication of it stays as it was.
- A blocking rule of device grain failed (a device's quarantine share, a reading out of range,
  from the future, missing a required value): that device's readings that day are held back,
  the other devices' are published.
- Warnings hold nothing back; the rows they name carry the rule in `qc_flag`.
- Judging raised (a reading no rule can read, a bug): the partition is held back with the rule
  `gate_error` and the error; every other partition is judged as usual.

A data engineer's approval (`civicflow.warehouse.partitions.record_approval`) lifts the holds of a version,
for one device or all of it; the rows it lets through carry the failed rules in `qc_flag`.
This module decides and reports (the JSON report under `data/validations/`, which names the
partition's own Data Docs page, written from the recorded decision by the release step:
`civicflow.expectations.docs`); the publish stage writes what a decision publishes, and records it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from civicflow.contract import DATASETS, Domain
from civicflow.expectations.docs import data_docs_path, validation_dir
from civicflow.expectations.gate import Evaluation, Part, evaluate_batch
from civicflow.expectations.quality import load_inputs
from civicflow.registry import Registry
from civicflow.settings import QualitySettings
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import (
    GATE_ERROR,
    Decision,
    Hold,
    PartitionRef,
    approvals,
    partition_files,
)

log = logging.getLogger(__name__)

MAX_BATCH_ROWS = 250_000
"""Rows judged in one GX run at most: batches amortise GX's fixed cost, this bounds their memory."""


@dataclass
class _Member:
    ref: PartitionRef
    table: pa.Table
    part: Part
    thresholds: QualitySettings


def read_staged(con, layout: Layout, ref: PartitionRef) -> pa.Table:
    """A staged partition version's rows, from its Parquet files (one, or one per hourly merge that
    added readings to its day while it was open)."""
    files = partition_files(con, ref)
    tables = [pq.read_table(layout.staged_file(ref.domain, ref.council, ref.event_date, f)) for f in files]
    return pa.concat_tables([t.cast(tables[0].schema) for t in tables]) if len(tables) > 1 else tables[0]


def judge_partitions(
    con,
    layout: Layout,
    refs: Iterable[PartitionRef],
    *,
    now: datetime,
    quality: QualitySettings | None = None,
    registry: Registry | None = None,
) -> list[Decision]:
    """Judge staged partition versions; return one decision each, in the order given.

    Never raises for a partition: whatever one partition makes raise becomes its `gate_error` hold.
    """
    refs = list(refs)
    base = quality or QualitySettings()
    decided: dict[PartitionRef, Decision] = {}
    groups: dict[tuple[str, str], list[_Member]] = {}
    for ref in refs:
        try:
            thresholds, intervals = (
                registry.quality(ref.council, base) if registry is not None else (base, {})
            )
            table = read_staged(con, layout, ref)
            inputs = load_inputs(con, Domain(ref.domain), ref.council, ref.event_date, intervals)
            member = _Member(ref, table, Part(table.to_pandas(), inputs), thresholds)
        except Exception as exc:  # noqa: BLE001 - held back with the error, the others go on
            decided[ref] = gate_error(ref, exc, now)
            continue
        groups.setdefault((ref.domain, thresholds.model_dump_json()), []).append(member)
    for members in groups.values():
        for batch in _batches(members):
            evaluations = _evaluate(batch, now)
            for member, evaluation in zip(batch, evaluations, strict=True):
                if isinstance(evaluation, BaseException):
                    decided[member.ref] = gate_error(member.ref, evaluation, now)
                    continue
                try:
                    report = _record_report(layout, member.ref, evaluation)
                    decided[member.ref] = decide(
                        member.ref, member.table, evaluation, report, approvals(con, member.ref)
                    )
                except Exception as exc:  # noqa: BLE001
                    decided[member.ref] = gate_error(member.ref, exc, now)
    return [decided[r] for r in refs]


def _batches(members: list[_Member]) -> Iterable[list[_Member]]:
    batch: list[_Member] = []
    rows = 0
    for m in members:
        if batch and rows + m.table.num_rows > MAX_BATCH_ROWS:
            yield batch
            batch, rows = [], 0
        batch.append(m)
        rows += m.table.num_rows
    if batch:
        yield batch


def _evaluate(batch: list[_Member], now: datetime) -> list[Evaluation | BaseException]:
    """Evaluate a batch in one run; if that raises, one by one, so the error stays with its partition."""
    dataset = DATASETS[Domain(batch[0].ref.domain)]
    try:
        return list(evaluate_batch([m.part for m in batch], dataset, now=now, thresholds=batch[0].thresholds))
    except Exception as exc:  # noqa: BLE001
        if len(batch) == 1:
            log.exception("judging %s raised", batch[0].ref.label)
            return [exc]
        log.warning("judging %d partitions together raised (%s): judging them one by one", len(batch), exc)
        return [_evaluate([m], now)[0] for m in batch]


def _record_report(layout: Layout, ref: PartitionRef, evaluation: Evaluation) -> dict[str, Any]:
    """Write the JSON report of a decision under `data/validations/`; return it as stored.

    It names the partition's Data Docs page (relative to the data root), which the release step
    writes beside it (`civicflow.expectations.docs.write_pages`).
    """
    page = data_docs_path(layout, ref.domain, ref.council, ref.event_date, ref.version)
    report = evaluation.report.to_json() | {
        "data_docs": page.relative_to(layout.root).as_posix(),
        "partition": ref.to_json(),
    }
    path = validation_dir(layout, ref.domain, ref.council, ref.event_date) / f"v{ref.version}.json"
    _write_json(path, report)
    return report


def decide(
    ref: PartitionRef,
    table: pa.Table,
    evaluation: Evaluation,
    report: dict[str, Any],
    approved: dict[str | None, Any] | None = None,
) -> Decision:
    """What a version publishes and holds back, given its evaluation and its approvals."""
    approved = approved or {}
    whole = None in approved
    failures = {f["rule"]: f for f in evaluation.report.failed}
    devices = table.column("device_id") if "device_id" in table.column_names else pa.array([], pa.string())
    if evaluation.partition_failures and not whole:
        detail = "; ".join(
            f"{r}: {failures[r]['detail']}" for r in evaluation.partition_failures if r in failures
        )
        holds = [Hold(None, tuple(evaluation.partition_failures), detail, table.num_rows)]
        return Decision(ref, False, report | {"holds": [_hold_json(h) for h in holds]}, holds, None)
    held = {d: rules for d, rules in evaluation.held_devices.items() if not whole and d not in approved}
    holds = []
    for device, rules in held.items():
        detail = "; ".join(f"{r}: {failures[r]['detail']}" for r in rules if r in failures)
        rows = int(pc.sum(pc.equal(devices, device)).as_py() or 0)
        holds.append(Hold(device, tuple(rules), detail, rows))
    rows = with_qc_flag(table, evaluation)
    if held:
        rows = rows.filter(pc.invert(pc.is_in(devices, value_set=pa.array(sorted(held), pa.string()))))
    lifted = [
        {"device_id": a.device_id, "approved_by": a.approved_by, "reason": a.reason}
        for a in approved.values()
    ]
    report = report | {"holds": [_hold_json(h) for h in holds], "approvals": lifted}
    return Decision(ref, evaluation.report.success, report, holds, rows if rows.num_rows else None)


def gate_error(ref: PartitionRef, exc: BaseException, now: datetime) -> Decision:
    """Hold a partition back because judging it raised; the error is the reason."""
    detail = f"{type(exc).__name__}: {exc}"[:500]
    log.error("held back %s: judging it raised %s", ref.label, detail)
    hold = Hold(None, (GATE_ERROR,), detail, 0)
    report = {
        "dataset": ref.domain,
        "now": now.isoformat(),
        "success": False,
        "failed": [{"rule": GATE_ERROR, "severity": "blocking", "grain": "partition", "detail": detail}],
        "warnings": [],
        "metrics": {},
        "partition": ref.to_json(),
        "data_docs": None,
        "holds": [_hold_json(hold)],
    }
    return Decision(ref, False, report, [hold], None)


def with_qc_flag(rows: pa.Table, evaluation: Evaluation) -> pa.Table:
    """The staged rows with their `qc_flag` column, as the release publishes them."""
    flags = pa.array(evaluation.flags.tolist(), type=pa.string())
    if "qc_flag" in rows.column_names:
        return rows.set_column(rows.column_names.index("qc_flag"), "qc_flag", flags)
    return rows.append_column("qc_flag", flags)


def _hold_json(hold: Hold) -> dict[str, Any]:
    return {"device_id": hold.device_id, "rules": list(hold.rules), "detail": hold.detail, "rows": hold.rows}


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
