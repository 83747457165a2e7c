"""A partition's lifecycle, and the only module that writes its state.

A partition is one council's readings of one dataset on one UTC date. It moves through:

    staged (version n)  ->  validated (a decision)  ->  published (pending)  ->  in a release
                                     |
                                     +-> held back, whole or device by device, with the reasons
                                         (until a new version, or a data engineer's approval)

Each move is one call here, and these tables are written nowhere else:

- `staged.partitions`: the current version of each staged partition and its row count; a
  version whose Parquet files are written is `exported`, and `files` names them (the partition's
  whole rows, in one file once it is closed or compacted, or one file more for each hourly merge
  that only added readings while its day is open: transforms/stage.py `export_partitions`).
- `published.validations`: every decision of the gate on a version, with its report.
- `published.holds`: what the current decision of a version withholds: the whole partition
  (`device_id` NULL) or one device's readings that day, with the rules that failed.
- `published.approvals`: a data engineer's override of a hold, for one version (and one device).
- `published.releases`: the publication ledger, one row per partition with the version, rows and
  files (readings and aggregates) it published and the release that contains it. A row is
  written `pending` (no release) together with the published rows, in one transaction; it names
  its release only once that release is `latest`. The ledger therefore never claims a
  publication that no release contains, and a crash anywhere between the two leaves pending rows
  that the next run releases (`civicflow.publish.release`).

Nothing here knows where files live: a publication's files are recorded as the publisher
describes them (path relative to the published zone, bytes, sha256), so the ledger does not change
when the zones move to object storage.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import duckdb

from civicflow.contract import Dataset, Domain

PARTITION_DDL = [
    """CREATE TABLE IF NOT EXISTS staged.partitions (
    domain VARCHAR NOT NULL,
    council VARCHAR NOT NULL,
    event_date DATE NOT NULL,
    version BIGINT NOT NULL,
    rows BIGINT NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL,
    exported_version BIGINT,
    PRIMARY KEY (domain, council, event_date)
)""",
    """CREATE TABLE IF NOT EXISTS published.validations (
    domain VARCHAR NOT NULL,
    council VARCHAR NOT NULL,
    event_date DATE NOT NULL,
    partition_version BIGINT NOT NULL,
    validated_at TIMESTAMPTZ NOT NULL,
    success BOOLEAN NOT NULL,
    published BOOLEAN NOT NULL,
    report JSON NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS published.holds (
    domain VARCHAR NOT NULL,
    council VARCHAR NOT NULL,
    event_date DATE NOT NULL,
    partition_version BIGINT NOT NULL,
    device_id VARCHAR,
    rules JSON NOT NULL,
    detail VARCHAR NOT NULL,
    rows BIGINT NOT NULL,
    held_at TIMESTAMPTZ NOT NULL,
    data_docs VARCHAR
)""",
    """CREATE TABLE IF NOT EXISTS published.approvals (
    domain VARCHAR NOT NULL,
    council VARCHAR NOT NULL,
    event_date DATE NOT NULL,
    partition_version BIGINT NOT NULL,
    approved_by VARCHAR NOT NULL,
    approved_at TIMESTAMPTZ NOT NULL,
    reason VARCHAR NOT NULL,
    failed JSON NOT NULL
)""",
    "ALTER TABLE published.approvals ADD COLUMN IF NOT EXISTS device_id VARCHAR",
    # NULL for a version exported before partitions had several files: its one file is part-0.
    "ALTER TABLE staged.partitions ADD COLUMN IF NOT EXISTS files VARCHAR[]",
    """CREATE TABLE IF NOT EXISTS published.releases (
    domain VARCHAR NOT NULL,
    council VARCHAR NOT NULL,
    event_date DATE NOT NULL,
    partition_version BIGINT NOT NULL,
    rows BIGINT NOT NULL,
    published_at TIMESTAMPTZ NOT NULL,
    files JSON NOT NULL,
    PRIMARY KEY (domain, council, event_date)
)""",
    "ALTER TABLE published.releases ADD COLUMN IF NOT EXISTS release_id VARCHAR",
]
"""The tables this module owns; `civicflow.warehouse.schema` runs them on every writable connect."""

GATE_ERROR = "gate_error"
"""The rule a hold names when judging or publishing the partition raised instead of deciding."""


@dataclass(frozen=True, order=True)
class PartitionRef:
    """One version of one partition: what a gate task is given and a decision is about."""

    domain: str
    council: str
    event_date: date
    version: int

    @property
    def label(self) -> str:
        """`traffic synthetic 2026-03-07 v3`: how logs, the CLI and Airflow's task names show it."""
        return f"{self.domain} {self.council} {self.event_date.isoformat()} v{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "council": self.council,
            "event_date": self.event_date.isoformat(),
            "version": self.version,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PartitionRef:
        return cls(doc["domain"], doc["council"], date.fromisoformat(doc["event_date"]), int(doc["version"]))


@dataclass(frozen=True)
class Hold:
    """What a decision withholds: a device's readings that day, or the whole partition (device None)."""

    device_id: str | None
    rules: tuple[str, ...]
    detail: str
    rows: int


@dataclass(frozen=True)
class HeldBack:
    """A hold on the current staged version that nobody approved, as `civicflow release list` shows it."""

    domain: str
    council: str
    event_date: date
    version: int
    device_id: str | None
    rules: list[str]
    detail: str
    rows: int
    held_at: datetime
    data_docs: str | None

    @property
    def grain(self) -> str:
        return "partition" if self.device_id is None else "device"

    def reasons(self) -> str:
        return self.detail or ", ".join(self.rules) or "unknown"


@dataclass(frozen=True)
class Publication:
    """A ledger row: what one partition's publication wrote, and the release that holds it."""

    ref: PartitionRef
    rows: int
    published_at: datetime
    files: dict[str, Any]
    release_id: str | None = None


@dataclass
class Approval:
    device_id: str | None
    approved_by: str
    approved_at: datetime
    reason: str
    failed: list[str] = field(default_factory=list)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One transaction around a transition: all of it is recorded, or none."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


# --- staged ----------------------------------------------------------------------------------


def replace_staged(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, source: str, changed: str, now: datetime
) -> None:
    """Replace the staged rows of the partitions in `changed` with `source`'s and version them.

    `source` and `changed` name relations visible to `con` (temporary tables): `source` has the
    dataset's staged columns, `changed` the (council, event_date) of the partitions to replace.
    A partition `source` has no rows of is emptied. Call it inside the staging transaction.
    """
    table = f"staged.{dataset.domain}"
    cols = ", ".join(c.name for c in dataset.staged_columns)
    in_changed = f"(council, event_date) IN (SELECT (council, event_date) FROM {changed})"
    con.execute(f"DELETE FROM {table} WHERE {in_changed}")
    con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {source} WHERE {in_changed}")
    _next_versions(con, dataset, changed, now)


def append_staged(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, source: str, changed: str, now: datetime
) -> None:
    """Add `source`'s rows (keys staged nowhere yet) and version the partitions in `changed`."""
    cols = ", ".join(c.name for c in dataset.staged_columns)
    con.execute(f"INSERT INTO staged.{dataset.domain} ({cols}) SELECT {cols} FROM {source}")
    _next_versions(con, dataset, changed, now)


def _next_versions(con: duckdb.DuckDBPyConnection, dataset: Dataset, changed: str, now: datetime) -> None:
    con.execute(
        f"""
        INSERT INTO staged.partitions AS p
            (domain, council, event_date, version, rows, changed_at, exported_version)
        SELECT ?, c.council, c.event_date, 1, count(t.council), ?, NULL
        FROM (SELECT DISTINCT council, event_date FROM {changed}) c
        LEFT JOIN staged.{dataset.domain} t ON t.council = c.council AND t.event_date = c.event_date
        GROUP BY c.council, c.event_date
        ON CONFLICT (domain, council, event_date) DO UPDATE
        SET version = p.version + 1, rows = excluded.rows, changed_at = excluded.changed_at
        """,
        [dataset.domain.value, now],
    )


def to_export(con: duckdb.DuckDBPyConnection) -> list[PartitionRef]:
    """Staged partitions whose current version has no Parquet file yet."""
    return [
        PartitionRef(*row)
        for row in con.execute(
            """SELECT domain, council, event_date, version FROM staged.partitions
               WHERE exported_version IS DISTINCT FROM version ORDER BY domain, event_date, council"""
        ).fetchall()
    ]


FIRST_FILE = "part-0.parquet"


def mark_exported(
    con: duckdb.DuckDBPyConnection, refs: Iterable[PartitionRef], files: dict[PartitionRef, list[str]]
) -> None:
    """Record that these versions' Parquet files are in place, and which files they are."""
    refs = list(refs)
    if not refs:
        return
    con.executemany(
        "UPDATE staged.partitions SET exported_version = ?, files = ? WHERE domain = ? AND council = ? "
        "AND event_date = ? AND version = ?",
        [[r.version, files[r], r.domain, r.council, r.event_date, r.version] for r in refs],
    )


ExportState = tuple[int | None, list[str]]
"""A partition's exported version (None: never exported) and the files that hold it."""


def export_states(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str, date], ExportState]:
    """(exported version, its files) of every partition with a version to export or several files."""
    rows = con.execute(
        """SELECT domain, council, event_date, exported_version, files FROM staged.partitions
           WHERE exported_version IS DISTINCT FROM version OR len(files) > 1"""
    ).fetchall()
    return {(d, c, day): (v, files_of(v, files)) for d, c, day, v, files in rows}


def partition_files(con: duckdb.DuckDBPyConnection, ref: PartitionRef) -> list[str]:
    """The Parquet files (names in the partition's directory) holding an exported version's rows."""
    rows = con.execute(
        "SELECT exported_version, files FROM staged.partitions "
        "WHERE domain = ? AND council = ? AND event_date = ? AND exported_version = ?",
        [ref.domain, ref.council, ref.event_date, ref.version],
    ).fetchall()
    if not rows:
        where = f"{ref.domain}/{ref.council}/{ref.event_date}"
        raise LookupError(f"version {ref.version} of {where} is not exported yet; run staging first")
    return files_of(*rows[0])


def files_of(exported_version: int | None, files: list[str] | None) -> list[str]:
    """The files of an exported version as `staged.partitions` records them (NULL: the one file
    written before partitions could have several)."""
    if files is not None:
        return list(files)
    return [] if exported_version is None else [FIRST_FILE]


def trailing_rows(
    con: duckdb.DuckDBPyConnection, domain: str, council: str, first: date, last: date
) -> tuple[int, ...]:
    """Staged rows of each of a council's partitions dated in [first, last), oldest first."""
    return tuple(
        int(r)
        for (r,) in con.execute(
            """SELECT rows FROM staged.partitions
               WHERE domain = ? AND council = ? AND event_date >= ? AND event_date < ?
               ORDER BY event_date""",
            [domain, council, first, last],
        ).fetchall()
    )


# --- validated -------------------------------------------------------------------------------


def to_validate(con: duckdb.DuckDBPyConnection, domain: str | None = None) -> list[PartitionRef]:
    """Exported versions that no publication holds yet: new versions, and held partitions.

    A wholly held partition is judged again on every run, because its partition rules (volume
    against the trailing week, freshness) move with time; a partly published one keeps its holds
    until a new version or an approval.
    """
    return [
        PartitionRef(*row)
        for row in con.execute(
            """SELECT p.domain, p.council, p.event_date, p.version
               FROM staged.partitions p
               WHERE p.exported_version = p.version AND ($domain IS NULL OR p.domain = $domain)
                 AND NOT EXISTS (SELECT 1 FROM published.releases r
                                 WHERE r.domain = p.domain AND r.council = p.council
                                   AND r.event_date = p.event_date AND r.partition_version = p.version)
               ORDER BY p.domain, p.council, p.event_date""",
            {"domain": domain},
        ).fetchall()
    ]


def current(con: duckdb.DuckDBPyConnection, domain: str, council: str, day: date) -> PartitionRef | None:
    """The current staged version of a partition, if it is staged and exported."""
    rows = con.execute(
        "SELECT domain, council, event_date, version FROM staged.partitions "
        "WHERE domain = ? AND council = ? AND event_date = ? AND exported_version = version",
        [domain, council, day],
    ).fetchall()
    return PartitionRef(*rows[0]) if rows else None


def record_decision(
    con: duckdb.DuckDBPyConnection,
    ref: PartitionRef,
    *,
    now: datetime,
    success: bool,
    published: bool,
    report: dict[str, Any],
    holds: Iterable[Hold] = (),
) -> None:
    """Record the gate's decision on a version and what it withholds (replacing earlier holds).

    Call it inside the transaction that publishes the partition, if it is published, so that the
    decision and the publication are recorded together.
    """
    con.execute(
        "INSERT INTO published.validations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [ref.domain, ref.council, ref.event_date, ref.version, now, success, published, json.dumps(report)],
    )
    key = [ref.domain, ref.council, ref.event_date, ref.version]
    where = "domain = ? AND council = ? AND event_date = ? AND partition_version = ?"
    # A hold judged again unchanged keeps the time it began: what consumers see (the quality
    # summary) then does not change, and no release is cut for nothing.
    since = {
        (device, tuple(json.loads(rules))): at
        for device, rules, at in con.execute(
            f"SELECT device_id, rules, held_at FROM published.holds WHERE {where}", key
        ).fetchall()
    }
    con.execute(f"DELETE FROM published.holds WHERE {where}", key)
    rows = [
        [
            *key,
            h.device_id,
            json.dumps(list(h.rules)),
            h.detail,
            h.rows,
            since.get((h.device_id, tuple(h.rules)), now),
            report.get("data_docs"),
        ]
        for h in holds
    ]
    if rows:
        con.executemany("INSERT INTO published.holds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def held_back(con: duckdb.DuckDBPyConnection, domain: str | None = None) -> list[HeldBack]:
    """Holds on current staged versions that no approval lifted, whole partitions and devices."""
    rows = con.execute(
        """SELECT h.domain, h.council, h.event_date, h.partition_version, h.device_id, h.rules,
                  h.detail, h.rows, h.held_at, h.data_docs
           FROM published.holds h
           JOIN staged.partitions p ON p.domain = h.domain AND p.council = h.council
                                   AND p.event_date = h.event_date AND p.version = h.partition_version
           WHERE ($domain IS NULL OR h.domain = $domain)
             AND NOT EXISTS (SELECT 1 FROM published.approvals a
                             WHERE a.domain = h.domain AND a.council = h.council
                               AND a.event_date = h.event_date
                               AND a.partition_version = h.partition_version
                               AND (a.device_id IS NULL OR a.device_id IS NOT DISTINCT FROM h.device_id))
           ORDER BY h.domain, h.council, h.event_date, h.device_id NULLS FIRST""",
        {"domain": domain},
    ).fetchall()
    return [
        HeldBack(d, c, day, v, device, json.loads(rules), detail, n, at, docs)
        for d, c, day, v, device, rules, detail, n, at, docs in rows
    ]


def approvals(con: duckdb.DuckDBPyConnection, ref: PartitionRef) -> dict[str | None, Approval]:
    """The approvals of a version: by device, and under None one for the whole partition."""
    rows = con.execute(
        """SELECT device_id, approved_by, approved_at, reason, failed FROM published.approvals
           WHERE domain = ? AND council = ? AND event_date = ? AND partition_version = ?
           ORDER BY approved_at""",
        [ref.domain, ref.council, ref.event_date, ref.version],
    ).fetchall()
    return {
        device: Approval(device, who, at, why, json.loads(failed)) for device, who, at, why, failed in rows
    }


def record_approval(
    con: duckdb.DuckDBPyConnection,
    ref: PartitionRef,
    *,
    device_id: str | None,
    who: str,
    now: datetime,
    reason: str,
    failed: list[str],
) -> None:
    """Record a data engineer's override of a hold on this version (one device, or all of it)."""
    con.execute(
        "INSERT INTO published.approvals (domain, council, event_date, partition_version, approved_by, "
        "approved_at, reason, failed, device_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            ref.domain,
            ref.council,
            ref.event_date,
            ref.version,
            who,
            now,
            reason,
            json.dumps(failed),
            device_id,
        ],
    )


# --- published and released ------------------------------------------------------------------


def record_publication(
    con: duckdb.DuckDBPyConnection, ref: PartitionRef, *, rows: int, now: datetime, files: dict[str, Any]
) -> None:
    """Record a version as published and awaiting a release (call inside the publishing transaction)."""
    con.execute(
        """INSERT OR REPLACE INTO published.releases
           (domain, council, event_date, partition_version, rows, published_at, files, release_id)
           VALUES (?, ?, ?, ?, ?, ?, ?, NULL)""",
        [ref.domain, ref.council, ref.event_date, ref.version, rows, now, json.dumps(files)],
    )


def publications(con: duckdb.DuckDBPyConnection, domain: str | None = None) -> list[Publication]:
    """Every ledger row (released or pending), by domain, council and date."""
    rows = con.execute(
        """SELECT domain, council, event_date, partition_version, rows, published_at, files, release_id
           FROM published.releases WHERE ($domain IS NULL OR domain = $domain)
           ORDER BY domain, council, event_date""",
        {"domain": domain},
    ).fetchall()
    return [
        Publication(PartitionRef(d, c, day, v), n, at, json.loads(files), rid)
        for d, c, day, v, n, at, files, rid in rows
    ]


def publication(con: duckdb.DuckDBPyConnection, ref: PartitionRef) -> Publication | None:
    """The ledger row of one partition version, if it is published."""
    rows = con.execute(
        """SELECT rows, published_at, files, release_id FROM published.releases
           WHERE domain = ? AND council = ? AND event_date = ? AND partition_version = ?""",
        [ref.domain, ref.council, ref.event_date, ref.version],
    ).fetchall()
    if not rows:
        return None
    n, published_at, files, release_id = rows[0]
    return Publication(ref, n, published_at, json.loads(files), release_id)


def pending(con: duckdb.DuckDBPyConnection) -> list[PartitionRef]:
    """Publications no release holds yet: what the next release must contain."""
    return [
        PartitionRef(*row)
        for row in con.execute(
            "SELECT domain, council, event_date, partition_version FROM published.releases "
            "WHERE release_id IS NULL ORDER BY ALL"
        ).fetchall()
    ]


def mark_released(con: duckdb.DuckDBPyConnection, release_id: str, refs: Iterable[PartitionRef]) -> int:
    """Name the release that now holds these publications (after it became `latest`)."""
    refs = list(refs)
    if not refs:
        return 0
    con.executemany(
        "UPDATE published.releases SET release_id = ? WHERE domain = ? AND council = ? AND event_date = ? "
        "AND partition_version = ? AND release_id IS NULL",
        [[release_id, r.domain, r.council, r.event_date, r.version] for r in refs],
    )
    return len(refs)


def domains_published(con: duckdb.DuckDBPyConnection) -> list[Domain]:
    rows = con.execute("SELECT DISTINCT domain FROM published.releases ORDER BY 1").fetchall()
    return [Domain(d) for (d,) in rows]


@dataclass
class Decision:
    """The gate's decision on one version, as the publisher needs it.

    Attributes:
        ref: The version decided on.
        success: No blocking rule failed (before approvals).
        report: The report as stored (`published.validations.report`), JSON-ready.
        holds: What is withheld: the whole partition, or devices' readings that day.
        rows: The rows to publish (the staged rows of the devices not held, with `qc_flag`); None
            when nothing is published.
    """

    ref: PartitionRef
    success: bool
    report: dict[str, Any]
    holds: list[Hold] = field(default_factory=list)
    rows: Any = None  # pa.Table; not imported here, to keep this module's imports light

    @property
    def publishes(self) -> bool:
        return self.rows is not None and self.rows.num_rows > 0
