"""Held-back partitions, and each dataset's quality summary (`data/published/<domain>/quality.json`).

The summary tells a consumer how far to trust a dataset before they download it, per council:
how complete the published readings are, how many carry a `qc_flag`, which days are held back and
why, and which were published on a data engineer's approval. It is rebuilt from the warehouse
after every gate run that judged the dataset, so it always describes the current releases.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import duckdb

from civicflow.contract import Domain
from civicflow.warehouse.partitions import HeldBack, held_back

QUALITY_FILE = "quality.json"

_LATEST_VALIDATION = """
    SELECT domain, council, event_date, partition_version, validated_at, success, published, report
    FROM published.validations
    QUALIFY row_number() OVER (PARTITION BY domain, council, event_date, partition_version
                               ORDER BY validated_at DESC, rowid DESC) = 1"""


def held_back_partitions(con: duckdb.DuckDBPyConnection, domain: str | None = None) -> list[HeldBack]:
    """Holds on current staged versions nobody approved: whole partitions, and devices' days."""
    return held_back(con, domain)


def quality_summary(con: duckdb.DuckDBPyConnection, domain: Domain, now: datetime) -> dict[str, Any]:
    """Per council: completeness, flagged rows, warned, held-back and approved partitions."""
    councils: dict[str, dict[str, Any]] = {}

    def council(name: str) -> dict[str, Any]:
        return councils.setdefault(
            name,
            {
                "partitions_published": 0,
                "partitions_with_warnings": 0,
                "partitions_approved": 0,
                "rows_published": 0,
                "rows_flagged": 0,
                "flagged_pct": None,
                "device_hours": 0,
                "completeness_pct": None,
                "warnings": {},
                "held_back": [],
            },
        )

    releases = con.execute(
        f"""WITH latest AS ({_LATEST_VALIDATION})
            SELECT r.council, r.event_date, r.rows, l.report,
                   EXISTS (SELECT 1 FROM published.approvals a
                           WHERE a.domain = r.domain AND a.council = r.council
                             AND a.event_date = r.event_date AND a.partition_version = r.partition_version)
            FROM published.releases r
            LEFT JOIN latest l ON l.domain = r.domain AND l.council = r.council
                              AND l.event_date = r.event_date AND l.partition_version = r.partition_version
            WHERE r.domain = ? ORDER BY r.council, r.event_date""",
        [domain.value],
    ).fetchall()
    weighted: dict[str, float] = {}
    for name, _day, rows, report_json, approved in releases:
        c = council(name)
        report = json.loads(report_json) if report_json else {}
        metrics = report.get("metrics", {})
        c["partitions_published"] += 1
        c["rows_published"] += rows
        c["partitions_approved"] += int(bool(approved))
        if report.get("warnings"):
            c["partitions_with_warnings"] += 1
            for w in report["warnings"]:
                c["warnings"][w["rule"]] = c["warnings"].get(w["rule"], 0) + 1
        hours, mean = metrics.get("device_hours") or 0, metrics.get("completeness_mean")
        if hours and mean is not None:
            c["device_hours"] += hours
            weighted[name] = weighted.get(name, 0.0) + hours * mean
    for name, rows, flagged in con.execute(
        f"SELECT council, count(*), count(qc_flag) FROM published.{domain} GROUP BY council ORDER BY council"
    ).fetchall():
        c = council(name)
        c["rows_flagged"] = flagged
        c["flagged_pct"] = round(100 * flagged / rows, 2) if rows else None
    for name, c in councils.items():
        if c["device_hours"]:
            c["completeness_pct"] = round(100 * weighted.get(name, 0.0) / c["device_hours"], 2)
    for held in held_back_partitions(con, domain.value):
        council(held.council)["held_back"].append(
            {
                "date": held.event_date.isoformat(),
                "version": held.version,
                "device_id": held.device_id,
                "grain": held.grain,
                "rows": held.rows,
                "validated_at": held.held_at.isoformat(),
                "failed": held.rules,
                "reasons": held.reasons(),
                "data_docs": held.data_docs,
            }
        )
    return {
        "dataset": domain.value,
        "definitions": {
            "completeness_pct": "mean coverage of the published device-hours: readings in the hour / "
            "readings the device's reporting interval expects, at most 1 (docs/queries.md#coverage)",
            "flagged_pct": "published rows with a qc_flag (a warning rule failed) / published rows",
            "held_back": "days (device_id null) or devices' days whose current version failed a "
            "blocking rule and was not approved; the rest of the day is published, and any earlier "
            "release of a held-back day stays",
        },
        "councils": dict(sorted(councils.items())),
    }
