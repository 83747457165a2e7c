"""Consumer queries answered by DuckDB over the latest release's Parquet files.

DuckDB reads only the files the release's data package lists for the requested kind and council,
pruned by the date in their path, with every value bound as a parameter. Identifiers (columns to
filter and sort on) come from the allowlist below, never from the request.

One in-memory DuckDB database serves every query, each on its own cursor (opening a database
costs about 20 ms; a cursor well under 1). It holds no tables: queries only read the release's
files, which never change, so nothing one query does can be seen by another.
"""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from civicflow.contract import OBSERVED_FROM, OBSERVED_UNTIL
from civicflow.portal.release import DatasetRelease

MAX_LIMIT = 10_000
MAX_OFFSET = 1_000_000
DEFAULT_LIMIT = 1_000
WINDOW_START, WINDOW_END = OBSERVED_FROM, OBSERVED_UNTIL
"""The contract's observation window, [WINDOW_START, WINDOW_END): staging quarantines any time
outside it, so no published row lies outside it. `start` must lie within it and `end`, which is
exclusive, within (WINDOW_START, WINDOW_END]: a query is always a part of the window, and a time
far outside it (year 1 or 9999, where an offset can overflow) is refused before it is used."""
TIME_COLUMN = {
    "readings": "observed_at",
    "hourly": "hour",
    "daily": "event_date",
    "council_daily": "event_date",
}
ORDER = {
    "readings": ("council", "device_id", "lane_id", "observed_at"),
    "hourly": ("council", "device_id", "lane_id", "hour"),
    "daily": ("council", "device_id", "lane_id", "event_date"),
    "council_daily": ("council", "event_date", "measurement"),
}


class BadQuery(ValueError):
    """The request cannot be answered as asked; the message says what to change (HTTP 422).

    `parameter` names the query parameter to change, if one does.
    """

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class Query:
    kind: str
    council: str | None = None
    device_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0


def _utc(value: datetime | None) -> datetime | None:
    """A time as UTC (naive times are UTC); only for times within the window, where it cannot overflow."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _window_text(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def checked(query: Query) -> Query:
    """The query with its times in UTC, or BadQuery naming the parameter to change and what it may be.

    The window is checked before any time is converted: compared as instants, a time in year 1 or
    9999 with an offset does not overflow, where converting it to UTC would.
    """
    if query.kind == "council_daily" and query.device_id is not None:
        raise BadQuery(
            "council_daily has one row per council and day: it cannot be filtered by device_id", "device_id"
        )
    first, last = _window_text(WINDOW_START), _window_text(WINDOW_END)
    start = None if query.start is None else query.start.replace(tzinfo=query.start.tzinfo or UTC)
    end = None if query.end is None else query.end.replace(tzinfo=query.end.tzinfo or UTC)
    if start is not None and not WINDOW_START <= start < WINDOW_END:
        raise BadQuery(
            f"start must be at or after {first} and before {last} (the observation window)", "start"
        )
    if end is not None and not WINDOW_START < end <= WINDOW_END:
        raise BadQuery(
            f"end must be after {first} and at or before {last} (the observation window; end is exclusive)",
            "end",
        )
    if start is not None and end is not None and start >= end:
        raise BadQuery("start must be before end (end is exclusive)", "end")
    if not 1 <= query.limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}", "limit")
    if not 0 <= query.offset <= MAX_OFFSET:
        raise BadQuery(f"offset must be between 0 and {MAX_OFFSET}", "offset")
    return replace(query, start=_utc(start), end=_utc(end))


_database: duckdb.DuckDBPyConnection | None = None
_database_lock = threading.Lock()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A new cursor on the shared database: one thread per query, times in UTC."""
    global _database
    with _database_lock:
        if _database is None:
            _database = duckdb.connect(":memory:", config={"threads": 1})
            _database.execute("SET GLOBAL TimeZone = 'UTC'")
        con = _database.cursor()
    con.execute("SET TimeZone = 'UTC'")
    return con


def run_query(dataset: DatasetRelease, query: Query) -> pa.Table:
    """The rows the query selects, in a stable order (natural key), one page of them.

    A time range that is valid but holds no published day gives no rows; one that is not valid
    (see `checked`) raises BadQuery.
    """
    query = checked(query)
    first = None if query.start is None else query.start.date()
    last = None if query.end is None else query.end.date()
    # A reading observed at 23:59 UTC is in that day's file; one day of slack covers offsets.
    chosen = dataset.files_between(
        query.kind,
        query.council,
        None if first is None else first - timedelta(days=1),
        None if last is None else last + timedelta(days=1),
    )
    files = [str(dataset.directory / r.path) for r in chosen]
    con = _cursor()
    try:
        if not files:
            return _empty(dataset, query.kind, con)
        source = "read_parquet(?, hive_partitioning = false, union_by_name = true)"
        columns = _columns(chosen) or [
            d[0] for d in con.execute(f"SELECT * FROM {source} LIMIT 0", [files]).description
        ]
        time_col = TIME_COLUMN[query.kind]
        where, params = [], [files]
        for column, value in (("council", query.council), ("device_id", query.device_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.start is not None:
            where.append(f"{time_col} >= ?")
            params.append(query.start)
        if query.end is not None:
            where.append(f"{time_col} < ?")
            params.append(query.end)
        order = ", ".join(c for c in ORDER[query.kind] if c in columns)
        sql = f"SELECT * FROM {source} {'WHERE ' + ' AND '.join(where) if where else ''} "
        sql += f"ORDER BY {order} NULLS FIRST LIMIT ? OFFSET ?"
        return con.sql(sql, params=[*params, query.limit, query.offset]).to_arrow_table()
    finally:
        con.close()


def device_ids(dataset: DatasetRelease, kind: str, council: str, first: date) -> list[str]:
    """The devices in a council's files of `kind` from day `first` on, sorted."""
    files = [str(dataset.directory / r.path) for r in dataset.files_between(kind, council, first, None)]
    if not files:
        return []
    sql = (
        "SELECT DISTINCT device_id FROM read_parquet(?, hive_partitioning = false, union_by_name = true) "
        "WHERE council = ? ORDER BY 1"
    )
    con = _cursor()
    try:
        return [row[0] for row in con.execute(sql, [files, council]).fetchall()]
    finally:
        con.close()


def _columns(resources: list) -> list[str]:
    """The columns the files' Table Schemas in the data package name (the files hold no others)."""
    names: dict[str, None] = {}
    for schema in {id(r.schema): r.schema for r in resources}.values():
        names.update((f["name"], None) for f in schema.get("fields", []))
    return list(names)


def _empty(dataset: DatasetRelease, kind: str, con: duckdb.DuckDBPyConnection) -> pa.Table:
    """No file matches: an empty table with the kind's columns, if any file of that kind exists."""
    any_file = dataset.files(kind)
    if not any_file:
        return pa.table({})
    path = str(dataset.directory / any_file[0].path)
    return con.sql(
        "SELECT * FROM read_parquet(?, hive_partitioning = false) LIMIT 0", params=[path]
    ).to_arrow_table()


def to_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


def to_csv(table: pa.Table) -> bytes:
    """CSV as the published files write it: times in RFC 3339 UTC (`Z`), an empty cell for null."""
    sink = io.StringIO()
    writer = csv.writer(sink, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow([_cell(v) for v in row.values()])
    return sink.getvalue().encode()


def to_records(table: pa.Table) -> list[dict]:
    return table.to_pylist()
