"""Replay: re-stage the raw segments opened in a time range, exactly as a first staging would.

The raw zone is immutable, so any staged partition can be rebuilt from it (after a decoder or
registry fix, or to check that the warehouse still matches its sources). Re-staging only the
replayed segments on top of the current partitions would not be exact: staging keeps one copy of
each natural key, so the copies it discarded would be missing from the comparison. A key received
as A (outside the range, value v), B (inside, w) and C (outside, v) holds v; merging B alone into
it again would flip it to w.

So a replay works on whole partitions (domain x council x UTC event date):

1. decode the replayed segments and collect the partitions they touch, plus those that hold a
   reading from them today (a registry fix may move readings to another council);
2. decode every other segment in the `raw.segments` ledger and keep its readings of those
   partitions (segments not yet staged are left to the next `civicflow_stage` run, as they
   would be without a replay); a staged segment deleted at the end of its retention period is
   represented by its staged rows in those partitions;
3. de-duplicate them from scratch with staging's own merge (`civicflow.transforms.stage._merge_domain`,
   run on an empty in-memory warehouse), so the rule is the one in docs/warehouse.md;
4. in one transaction, replace each touched partition whose rows changed (its version goes up;
   an unchanged partition keeps its version, its rows and its Parquet file), replace the
   replayed segments' quarantine rows and update their ledger rows;
5. re-export the Parquet files of the partitions whose version changed.

A row that is the same apart from `staged_at` keeps the `staged_at` it had, so replaying the same
raw data with the same code leaves the staged tables and files exactly as they were.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from civicflow.contract import DATASETS, Dataset, Domain
from civicflow.errors import TerminalError
from civicflow.registry import Registry, RegistryError
from civicflow.transforms.decode import Limits
from civicflow.transforms.lorawan import registry_problems
from civicflow.transforms.stage import (
    StageResult,
    _Batch,
    _decode_segment,
    _merge_domain,
    export_partitions,
    mark_staged,
    segment_id,
)
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import replace_staged
from civicflow.warehouse.segments import list_closed_segments
from civicflow.warehouse.tables import arrow_schema, quarantine_schema

log = logging.getLogger(__name__)

SEGMENT_NAME = re.compile(r"^(?P<stamp>\d{8}T\d{12}Z)-\d{8}$")

Partition = tuple[str, str, date]  # domain, council, event date


@dataclass
class ReplayResult:
    """What one replay did; returned to Airflow as the task's XCom and printed by the CLI."""

    start: str
    end: str
    segments: int = 0
    readings: int = 0
    context_segments: int = 0
    quarantined: Counter = field(default_factory=Counter)
    rebuilt_partitions: list[tuple[str, str, str]] = field(default_factory=list)
    changed_partitions: list[tuple[str, str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "from": self.start,
            "to": self.end,
            "segments": self.segments,
            "readings": self.readings,
            "context_segments": self.context_segments,
            "quarantined": dict(sorted(self.quarantined.items())),
            "rebuilt_partitions": [list(p) for p in self.rebuilt_partitions],
            "changed_partitions": [list(p) for p in self.changed_partitions],
        }


def parse_bound(text: str, *, upper: bool) -> datetime:
    """Read a replay bound: an ISO 8601 date or date-time; no offset means UTC.

    A bare date as the upper bound means the end of that day, so `--from 2026-03-01 --to
    2026-03-01` is the whole of 1 March.
    """
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime.combine(day + timedelta(days=1 if upper else 0), time(), tzinfo=UTC)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise TerminalError(
            f"cannot read replay bound {text!r}: give a UTC date (2026-03-01) or date-time "
            "(2026-03-01T08:00:00Z)"
        ) from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def segment_opened_at(path: Path) -> datetime | None:
    """The UTC time a segment was opened, from its name (`<YYYYMMDDTHHMMSSffffff>Z-<seq>.seg`)."""
    match = SEGMENT_NAME.match(path.name.removesuffix(path.suffix))
    if match is None:
        return None
    return datetime.strptime(match["stamp"], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


def segments_in_range(layout: Layout, start: datetime, end: datetime) -> list[Path]:
    """Closed segments opened at or after `start` and before `end`, in name order."""
    found = []
    for path in list_closed_segments(layout.raw):
        opened = segment_opened_at(path)
        if opened is not None and start <= opened < end:
            found.append(path)
    return found


@dataclass(frozen=True)
class _ScratchLayout(Layout):
    """The data root, except that decoding writes quarantine files to a scratch directory.

    Staging's decoder writes a segment's quarantine file as it goes; a replay moves the replayed
    segments' files into place only after its transaction commits, and throws away those of the
    segments it decoded for context.
    """

    scratch: Path = Path()

    def quarantine_file(self, segment_id: str) -> Path:
        return self.scratch / f"{segment_id}.parquet"


Progress = Callable[[str, int, int], None]


def _log_progress(phase: str, done: int, total: int) -> None:
    """Progress in the log (an Airflow task's): about every tenth of a phase, and its end."""
    if done == total or done % max(1, total // 10) == 0:
        log.info("replay: %s segments %d/%d", phase, done, total)


def replay_segments(
    layout: Layout,
    con: duckdb.DuckDBPyConnection,
    limits: Limits,
    start: datetime,
    end: datetime,
    *,
    registry: Registry | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> ReplayResult:
    """Re-stage the closed segments opened in [start, end) and rebuild every partition they touch.

    `progress(phase, done, total)` is told after each segment of each phase: `replay` (the
    segments in the range) and `context` (staged segments that feed the partitions they touch).
    """
    tell = progress or _log_progress
    if start >= end:
        raise TerminalError(f"replay range is empty or reversed: from {start:%Y-%m-%dT%H:%M:%SZ} to {end}")
    if registry is not None and (problems := registry_problems(registry)):
        raise RegistryError("device registry does not match the decoding profiles: " + "; ".join(problems))
    now = now or datetime.now(tz=UTC)
    result = ReplayResult(start=start.isoformat(), end=end.isoformat())
    replayed = segments_in_range(layout, start, end)
    if not replayed:
        log.info("replay %s..%s: no closed segment was opened in that range", start, end)
        return result
    replayed_ids = {segment_id(layout, p) for p in replayed}
    ledger = {row[0] for row in con.execute("SELECT segment_id FROM raw.segments").fetchall()}
    on_disk = {segment_id(layout, p): p for p in list_closed_segments(layout.raw)}
    context = [p for sid, p in on_disk.items() if sid in ledger and sid not in replayed_ids]
    # Staged segments deleted at the end of their retention period: their staged rows stand in
    # for them, or a replay would drop the readings that only they held.
    purged = sorted(ledger - on_disk.keys())
    layout.root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".replay-", dir=layout.root))
    try:
        scratch_layout = _ScratchLayout(layout.root, scratch=scratch)
        decoded = StageResult()
        batch = _Batch()
        for done, path in enumerate(replayed, 1):
            _decode_segment(scratch_layout, path, limits, registry, now, batch, decoded)
            tell("replay", done, len(replayed))
        touched = _touched_partitions(con, batch, replayed_ids)
        if touched:
            for done, path in enumerate(context, 1):
                seen = _Batch()
                _decode_segment(scratch_layout, path, limits, registry, now, seen, StageResult())
                for domain, rows in seen.readings.items():
                    keep = [r for r in rows if (domain.value, r["council"], r["event_date"]) in touched]
                    batch.readings.setdefault(domain, []).extend(keep)
                result.context_segments += 1
                tell("context", done, len(context))
            _add_purged_rows(con, batch, touched, purged)
        rebuilt = _rebuild(batch, now)
        changed = _replace(con, batch, rebuilt, touched, replayed_ids, now)
        _move_quarantine_files(layout, scratch, replayed_ids)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    export_partitions(con, layout)
    mark_staged(layout, con)
    result.segments = decoded.segments
    result.readings = decoded.readings
    result.quarantined = decoded.quarantined
    result.rebuilt_partitions = sorted((d, c, day.isoformat()) for d, c, day in touched)
    result.changed_partitions = sorted((d, c, day.isoformat()) for d, c, day in changed)
    log.info(
        "replayed %d segments (%d readings) from %s to %s: rebuilt %d partitions from %d more "
        "segments, %d changed",
        result.segments,
        result.readings,
        start,
        end,
        len(touched),
        result.context_segments,
        len(changed),
    )
    return result


def _touched_partitions(
    con: duckdb.DuckDBPyConnection, batch: _Batch, replayed_ids: set[str]
) -> set[Partition]:
    """Partitions the replayed segments feed now, and those holding a reading from them today."""
    touched = {
        (domain.value, r["council"], r["event_date"]) for domain, rows in batch.readings.items() for r in rows
    }
    ids = sorted(replayed_ids)
    for domain in DATASETS:
        held = con.execute(
            f"SELECT DISTINCT council, event_date FROM staged.{domain} WHERE list_contains(?, segment_id)",
            [ids],
        ).fetchall()
        touched.update((domain.value, c, d) for c, d in held)
    return touched


def _add_purged_rows(
    con: duckdb.DuckDBPyConnection, batch: _Batch, touched: set[Partition], purged: list[str]
) -> None:
    """Add the staged rows of the touched partitions that came from segments no longer on disk."""
    if not purged:
        return
    for domain in sorted({Domain(d) for d, _, _ in touched}):
        cols = ", ".join(c.name for c in DATASETS[domain].staged_columns)
        days = sorted((c, day) for d, c, day in touched if d == domain.value)
        rows = con.sql(
            f"SELECT {cols} FROM staged.{domain} WHERE list_contains($purged, segment_id) "
            "AND list_contains($parts, struct_pack(c := council, d := event_date))",
            params={"purged": purged, "parts": [{"c": c, "d": day} for c, day in days]},
        ).to_arrow_table()
        if rows.num_rows:
            batch.readings.setdefault(domain, []).extend(rows.to_pylist())


def _rebuild(batch: _Batch, now: datetime) -> dict[Domain, pa.Table]:
    """De-duplicate the collected readings from scratch with staging's own merge."""
    scratch = connect(":memory:")
    try:
        tables = {}
        for domain, rows in sorted(batch.readings.items()):
            dataset = DATASETS[domain]
            if rows:
                _merge_domain(scratch, dataset, rows, now)
            cols = ", ".join(c.name for c in dataset.staged_columns)
            tables[domain] = scratch.sql(f"SELECT {cols} FROM staged.{domain}").to_arrow_table()
        return tables
    finally:
        scratch.close()


def _replace(
    con: duckdb.DuckDBPyConnection,
    batch: _Batch,
    rebuilt: dict[Domain, pa.Table],
    touched: set[Partition],
    replayed_ids: set[str],
    now: datetime,
) -> set[Partition]:
    """One transaction: changed partitions, the replayed segments' quarantine and ledger rows."""
    changed: set[Partition] = set()
    con.execute("BEGIN TRANSACTION")
    try:
        for domain in sorted({Domain(d) for d, _, _ in touched}):
            dataset = DATASETS[domain]
            parts = sorted((c, day) for d, c, day in touched if d == domain.value)
            table = rebuilt.get(domain)
            if table is None:
                table = pa.Table.from_pylist([], schema=arrow_schema(dataset.staged_columns))
            changed.update(
                (domain.value, c, day) for c, day in _replace_domain(con, dataset, table, parts, now)
            )
        ids = sorted(replayed_ids)
        con.execute("DELETE FROM quarantine.readings WHERE list_contains(?, segment_id)", [ids])
        if batch.quarantine:
            con.register("q_replayed", pa.Table.from_pylist(batch.quarantine, schema=quarantine_schema()))
            con.execute("INSERT INTO quarantine.readings SELECT * FROM q_replayed")
            con.unregister("q_replayed")
        con.register("ledger_replayed", pa.Table.from_pylist(batch.ledger))
        # A replayed segment keeps the time it was first staged; its counts follow the new decoding.
        con.execute("""
            INSERT INTO raw.segments
            SELECT segment_id, bytes, sha256, records, readings, rejected, staged_at FROM ledger_replayed
            ON CONFLICT (segment_id) DO UPDATE SET bytes = excluded.bytes, sha256 = excluded.sha256,
                records = excluded.records, readings = excluded.readings, rejected = excluded.rejected""")
        con.unregister("ledger_replayed")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return changed


def _replace_domain(
    con: duckdb.DuckDBPyConnection,
    dataset: Dataset,
    rebuilt: pa.Table,
    parts: list[tuple[str, date]],
    now: datetime,
) -> list[tuple[str, date]]:
    """Replace the partitions of `parts` whose rows differ from `rebuilt`; return those."""
    table = f"staged.{dataset.domain}"
    columns = [c.name for c in dataset.staged_columns]
    content = [c for c in columns if c != "staged_at"]
    con.register("rebuilt_in", rebuilt)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE replay_parts AS SELECT * FROM (VALUES "
        + ", ".join("(?, ?::DATE)" for _ in parts)
        + ") v(council, event_date)",
        [x for pair in parts for x in pair],
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE replay_current AS
        SELECT {", ".join(f"t.{c}" for c in columns)}
        FROM {table} t JOIN replay_parts USING (council, event_date)""")
    same = " AND ".join(f"r.{c} IS NOT DISTINCT FROM c.{c}" for c in content)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE replay_rows AS
        SELECT {", ".join(f"r.{c}" for c in content)}, coalesce(c.staged_at, r.staged_at) AS staged_at
        FROM rebuilt_in r JOIN replay_parts USING (council, event_date)
        LEFT JOIN replay_current c ON {same}""")
    con.unregister("rebuilt_in")
    cols = ", ".join(content)
    changed = con.execute(f"""
        SELECT council, event_date FROM (
            SELECT council, event_date FROM (SELECT {cols} FROM replay_rows EXCEPT ALL
                                             SELECT {cols} FROM replay_current)
            UNION
            SELECT council, event_date FROM (SELECT {cols} FROM replay_current EXCEPT ALL
                                             SELECT {cols} FROM replay_rows)
        ) GROUP BY ALL ORDER BY ALL""").fetchall()
    if changed:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE replay_changed AS SELECT * FROM (VALUES "
            + ", ".join("(?, ?::DATE)" for _ in changed)
            + ") v(council, event_date)",
            [x for pair in changed for x in pair],
        )
        replace_staged(con, dataset, "replay_rows", "replay_changed", now)
    return [(c, d) for c, d in changed]


def _move_quarantine_files(layout: Layout, scratch: Path, replayed_ids: set[str]) -> None:
    """Put the replayed segments' new quarantine files in place; remove those now empty."""
    for sid in sorted(replayed_ids):
        fresh, final = scratch / f"{sid}.parquet", layout.quarantine_file(sid)
        if fresh.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(fresh, final)
        else:
            final.unlink(missing_ok=True)
