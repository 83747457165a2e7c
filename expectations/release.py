"""The quality gate: validate changed staged partitions, publish those no blocking rule holds back.

A partition is validated from its staged Parquet file - the same bytes that will be published -
read into a DataFrame (Great Expectations validates DataFrames; its SQL path over DuckDB is not
trusted), against its dataset's suite with its council's thresholds (`expectations/suites.py`).

- No blocking failure: the partition is published. Rows a warning rule names carry the rule in
  `qc_flag`; the release's validation records the warnings.
- A blocking failure: the partition is held back. Its previous release, if any, stays in place
  byte for byte. It is validated again on every run until it passes, or until a data engineer
  approves it with a reason (`expectations.approvals`, `civicflow release approve`).

Every decision is a row of `published.validations` and a JSON report under `data/validations/`,
with the Great Expectations Data Docs page beside it (`expectations.docs`). Each touched dataset
gets a quality summary, `data/published/<domain>/quality.json` (`expectations.summary`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from civicflow.contract import DATASETS, Dataset, Domain, Zone
from civicflow.registry import Registry
from civicflow.settings import PublishSettings, QualitySettings
from expectations.docs import data_docs_path, validation_dir, write_data_docs
from expectations.gate import Evaluation, evaluate_partition
from expectations.quality import load_inputs
from expectations.summary import write_quality_summary
from warehouse.aggregates import refresh_aggregates
from warehouse.layout import Layout
from warehouse.publish import publish_partition, write_datapackage
from warehouse.releases import cut_release

log = logging.getLogger(__name__)

APPROVALS_DDL = """CREATE TABLE IF NOT EXISTS published.approvals (
    domain VARCHAR NOT NULL,
    council VARCHAR NOT NULL,
    event_date DATE NOT NULL,
    partition_version BIGINT NOT NULL,
    approved_by VARCHAR NOT NULL,
    approved_at TIMESTAMPTZ NOT NULL,
    reason VARCHAR NOT NULL,
    failed JSON NOT NULL
)"""


@dataclass
class GateResult:
    validated: int = 0
    passed: int = 0
    failed: int = 0
    published: int = 0
    aggregated: int = 0
    held_back: list[dict] = field(default_factory=list)
    warned: list[dict] = field(default_factory=list)
    datapackages: list[str] = field(default_factory=list)
    quality: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "validated": self.validated,
            "passed": self.passed,
            "failed": self.failed,
            "published": self.published,
            "aggregated": self.aggregated,
            "held_back": self.held_back,
            "warned": self.warned,
            "datapackages": self.datapackages,
            "quality": self.quality,
        }


def prepare_warehouse(con: duckdb.DuckDBPyConnection) -> None:
    """Create the approvals table, and `qc_flag` in published tables made before it existed."""
    con.execute(APPROVALS_DDL)
    for dataset in DATASETS.values():
        con.execute(f"ALTER TABLE published.{dataset.domain} ADD COLUMN IF NOT EXISTS qc_flag VARCHAR")


def partitions_to_validate(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, date, int]]:
    """Staged partitions whose current version is not published: new versions and held-back ones."""
    return con.execute("""
        SELECT p.domain, p.council, p.event_date, p.version
        FROM staged.partitions p
        WHERE p.exported_version = p.version
          AND NOT EXISTS (SELECT 1 FROM published.releases r
                          WHERE r.domain = p.domain AND r.council = p.council
                            AND r.event_date = p.event_date AND r.partition_version = p.version)
        ORDER BY ALL""").fetchall()


def gate_and_publish(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    *,
    now: datetime | None = None,
    licences: Mapping[str, dict] | None = None,
    quality: QualitySettings | None = None,
    registry: Registry | None = None,
    publication: PublishSettings | None = None,
) -> GateResult:
    """Validate changed and held-back partitions, publish those that pass, rebuild aggregates.

    Args:
        quality: The global thresholds (`Settings().quality`); the defaults if None.
        registry: The device registry, whose `[quality]` tables override thresholds per council
            and give device reporting intervals.
    """
    now = now or datetime.now(tz=UTC)
    prepare_warehouse(con)
    result = GateResult()
    touched: set[Domain] = set()
    judged: set[Domain] = set()
    for domain_name, council, day, version in partitions_to_validate(con):
        domain = Domain(domain_name)
        dataset = DATASETS[domain]
        rows = pq.read_table(layout.staged_file(domain, council, day))
        evaluation = evaluate_council_partition(con, dataset, council, day, rows, now, quality, registry)
        report = evaluation.report
        result.validated += 1
        judged.add(domain)
        report_json = record_evaluation(layout, dataset, council, day, version, evaluation)
        where = {"dataset": f"{Zone.STAGED}.{domain}", "council": council, "date": day.isoformat()}
        if report.success:
            result.passed += 1
            publish_partition(
                con, layout, dataset, council, day, version, with_qc_flag(rows, evaluation), now, registry
            )
            result.published += 1
            touched.add(domain)
            if report.warnings:
                result.warned.append(
                    where
                    | {
                        "warnings": [w["rule"] for w in report.warnings],
                        "flagged_rows": report.metrics["flagged_rows"],
                    }
                )
        else:
            result.failed += 1
            result.held_back.append(
                where | {"failed": [f["rule"] for f in report.failed], "data_docs": report_json["data_docs"]}
            )
            log.warning(
                "held back %s %s %s v%d: %d blocking expectations failed: %s",
                domain,
                council,
                day,
                version,
                len(report.failed),
                report.failed,
            )
        insert_validation(
            con, domain, council, day, version, now, report.success, report.success, report_json
        )
    for domain, partitions in refresh_aggregates(con, layout).items():
        result.aggregated += partitions
        touched.add(domain)
    for domain in sorted(judged | touched):
        result.quality.append(str(write_quality_summary(con, layout, domain, now)))
    for domain in sorted(touched):
        result.datapackages.append(str(write_datapackage(con, layout, DATASETS[domain], licences)))
    pub = publication or PublishSettings()  # catalogue, immutable release, `latest` switched in one step
    cut_release(layout, touched, now=now, keep=pub.keep_releases, base_url=pub.base_url, ckan=pub.ckan)
    return result


def evaluate_council_partition(
    con: duckdb.DuckDBPyConnection,
    dataset: Dataset,
    council: str,
    day: date,
    rows: pa.Table,
    now: datetime,
    quality: QualitySettings | None,
    registry: Registry | None,
) -> Evaluation:
    """Validate one staged partition with its council's thresholds and the warehouse's inputs."""
    base = quality or QualitySettings()
    thresholds, intervals = registry.quality(council, base) if registry is not None else (base, {})
    inputs = load_inputs(con, dataset.domain, council, day, intervals)
    return evaluate_partition(rows.to_pandas(), dataset, now=now, thresholds=thresholds, inputs=inputs)


def with_qc_flag(rows: pa.Table, evaluation: Evaluation) -> pa.Table:
    """The staged rows with their `qc_flag` column, as the release publishes them."""
    flags = pa.array(evaluation.flags.tolist(), type=pa.string())
    if "qc_flag" in rows.column_names:
        return rows.set_column(rows.column_names.index("qc_flag"), "qc_flag", flags)
    return rows.append_column("qc_flag", flags)


def record_evaluation(
    layout: Layout, dataset: Dataset, council: str, day: date, version: int, evaluation: Evaluation
) -> dict[str, Any]:
    """Write the JSON report and the Data Docs page of a validation; return the report as stored."""
    docs = data_docs_path(layout, dataset.domain.value, council, day, version)
    write_data_docs(evaluation.result, docs)
    report = evaluation.report.to_json() | {"data_docs": docs.relative_to(layout.root).as_posix()}
    path = validation_dir(layout, dataset.domain.value, council, day) / f"v{version}.json"
    _write_json(path, report)
    return report


def insert_validation(
    con: duckdb.DuckDBPyConnection,
    domain: Domain,
    council: str,
    day: date,
    version: int,
    now: datetime,
    success: bool,
    published: bool,
    report: dict[str, Any],
) -> None:
    con.execute(
        "INSERT INTO published.validations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [domain.value, council, day, version, now, success, published, json.dumps(report)],
    )


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
