"""The quality gate: validate every changed staged partition, publish only those that pass.

A partition is validated from its staged Parquet file - the same bytes that will be published -
read into a DataFrame (Great Expectations validates DataFrames; its SQL path over DuckDB is not
trusted). A failing partition is not published: its previous release, if any, stays in place
byte for byte, and the validation result saying why is kept in `published.validations` and as
JSON under `data/validations/`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import pyarrow.parquet as pq

from civicflow.contract import DATASETS, Domain, Zone
from expectations.gate import validate_partition
from warehouse.aggregates import refresh_aggregates
from warehouse.layout import Layout
from warehouse.publish import publish_partition, write_datapackage

log = logging.getLogger(__name__)


@dataclass
class GateResult:
    validated: int = 0
    passed: int = 0
    failed: int = 0
    published: int = 0
    aggregated: int = 0
    held_back: list[dict] = field(default_factory=list)
    datapackages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "validated": self.validated,
            "passed": self.passed,
            "failed": self.failed,
            "published": self.published,
            "aggregated": self.aggregated,
            "held_back": self.held_back,
            "datapackages": self.datapackages,
        }


def partitions_to_validate(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, object, int]]:
    """Staged partitions whose current version has not been through the gate yet."""
    return con.execute("""
        SELECT p.domain, p.council, p.event_date, p.version
        FROM staged.partitions p
        WHERE p.exported_version = p.version
          AND NOT EXISTS (SELECT 1 FROM published.validations v
                          WHERE v.domain = p.domain AND v.council = p.council
                            AND v.event_date = p.event_date AND v.partition_version = p.version)
        ORDER BY ALL""").fetchall()


def gate_and_publish(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    *,
    now: datetime | None = None,
    licences: Mapping[str, dict] | None = None,
) -> GateResult:
    """Validate changed partitions, publish those that pass, then rebuild their aggregates."""
    now = now or datetime.now(tz=UTC)
    result = GateResult()
    touched: set[Domain] = set()
    for domain_name, council, day, version in partitions_to_validate(con):
        domain = Domain(domain_name)
        dataset = DATASETS[domain]
        rows = pq.read_table(layout.staged_file(domain, council, day))
        report = validate_partition(rows.to_pandas(), dataset, now=now)
        result.validated += 1
        report_json = report.to_json()
        _write_report(layout, domain, council, day.isoformat(), version, report_json)
        if report.success:
            result.passed += 1
            publish_partition(con, layout, dataset, council, day, version, rows, now)
            result.published += 1
            touched.add(domain)
        else:
            result.failed += 1
            result.held_back.append(
                {
                    "dataset": f"{Zone.STAGED}.{domain}",
                    "council": council,
                    "date": day.isoformat(),
                    "failed": [f.get("expectation") for f in report.failed],
                }
            )
            log.warning(
                "held back %s %s %s v%d: %d expectations failed: %s",
                domain,
                council,
                day,
                version,
                len(report.failed),
                report.failed,
            )
        con.execute(
            "INSERT INTO published.validations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                domain.value,
                council,
                day,
                version,
                now,
                report.success,
                report.success,
                json.dumps(report_json),
            ],
        )
    # Aggregates are rebuilt from published rows only, for every release not yet aggregated.
    for domain, partitions in refresh_aggregates(con, layout).items():
        result.aggregated += partitions
        touched.add(domain)
    for domain in sorted(touched):
        result.datapackages.append(str(write_datapackage(con, layout, DATASETS[domain], licences)))
    return result


def _write_report(layout: Layout, domain: Domain, council: str, day: str, version: int, report: dict) -> None:
    path = layout.validations / str(domain) / f"council={council}" / f"date={day}" / f"v{version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
