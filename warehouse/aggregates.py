"""Aggregates of the published readings: per device hourly and daily, per council daily.

They are computed in DuckDB from `published.<domain>` only, so a partition the gate held back
contributes nothing. Everything about one (council, UTC date) partition - including the
reporting interval a device is expected to keep - is computed from that partition's published rows
alone, so rebuilding only the (re)published partitions gives exactly what a full rebuild would.

Tables (DDL in warehouse/schema.py): `published.<domain>_hourly`, `published.<domain>_daily` and
`published.council_daily`. Each partition's aggregates are also published as Parquet and CSV under
`data/published/<domain>/aggregates/<kind>/council=<c>/date=<d>/` and listed, with their Table
Schema, in the domain's `datapackage.json`. Rules are documented in docs/queries.md.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import duckdb

from civicflow.contract import DATASETS, Column, Dataset, Domain

log = logging.getLogger(__name__)

HOURLY, DAILY, COUNCIL_DAILY = "hourly", "daily", "council_daily"
KINDS = (HOURLY, DAILY, COUNCIL_DAILY)
WINDOW_S = {HOURLY: 3600, DAILY: 86_400}

# The interval a device is expected to report at, when a day gives too few readings to infer it
# (fewer than MIN_GAPS gaps between consecutive readings). Traffic counters declare theirs.
DEFAULT_INTERVAL_S = {Domain.PARKING: 1800, Domain.AIR_QUALITY: 900, Domain.WASTE: 3600}
MIN_GAPS = 2
# Measurements that count something over the reading's interval, so a sum is meaningful (volume).
SUMMED = frozenset({"intensity"})


def numeric_measurements(dataset: Dataset) -> tuple[Column, ...]:
    """Measurements (and derived values such as parking occupancy) that have a mean."""
    return tuple(c for c in (*dataset.measurements, *dataset.derived) if c.type in ("integer", "number"))


def series_columns(dataset: Dataset) -> tuple[Column, ...]:
    """What identifies one stream of readings within a council: the device, and the lane for traffic."""
    by_name = {c.name: c for c in (*dataset.published_columns,)}
    return tuple(by_name[n] for n in dataset.natural_key if n not in ("council", "observed_at"))


def _measurement_stats(m: Column) -> tuple[Column, ...]:
    unit = {"unit": m.unit} if m.unit else {}
    bounds = {"minimum": m.minimum, "maximum": m.maximum}
    stats = [
        Column(f"{m.name}_count", "integer", f"Readings with a value of {m.name}.", minimum=0),
        Column(f"{m.name}_mean", "number", f"Mean of {m.name}.", **unit, **bounds),
        Column(f"{m.name}_min", m.type, f"Smallest {m.name}.", **unit, **bounds),
        Column(f"{m.name}_max", m.type, f"Largest {m.name}.", **unit, **bounds),
    ]
    if m.name in SUMMED:
        stats.append(Column(f"{m.name}_sum", m.type, f"Sum of {m.name} (volume).", **unit, minimum=0))
    return tuple(stats)


def device_columns(dataset: Dataset, kind: str) -> tuple[Column, ...]:
    """Columns of `published.<domain>_hourly` or `published.<domain>_daily`."""
    window = (
        Column("hour", "datetime", "Start of the UTC hour.", required=True)
        if kind == HOURLY
        else Column("event_date", "date", "UTC date.", required=True)
    )
    return (
        Column("council", "string", "Council that operates the sensor.", required=True),
        *(replace(c, fiware=None) for c in series_columns(dataset)),
        window,
        Column("readings", "integer", "Published readings in the window.", required=True, minimum=1),
        Column(
            "expected_interval_s",
            "number",
            "Interval the device is expected to report at that day (docs/queries.md#coverage).",
            unit="s",
            required=True,
        ),
        Column("expected_readings", "number", "Window length / expected_interval_s.", required=True),
        Column(
            "coverage",
            "number",
            "readings / expected_readings, at most 1.",
            unit="1",
            required=True,
            minimum=0,
            maximum=1,
        ),
        *(s for m in numeric_measurements(dataset) for s in _measurement_stats(m)),
    )


COUNCIL_DAILY_COLUMNS: tuple[Column, ...] = (
    Column("council", "string", "Council.", required=True),
    Column("domain", "string", "Dataset.", required=True, enum=tuple(d.value for d in Domain)),
    Column("event_date", "date", "UTC date.", required=True),
    Column("measurement", "string", "Measurement this row summarises.", required=True),
    Column("unit", "string", "Unit of the measurement and of the means, minimum and maximum."),
    Column("devices", "integer", "Devices with at least one published reading that day.", required=True),
    Column("readings", "integer", "Published readings of the dataset that day.", required=True),
    Column("measuring_devices", "integer", "Devices with a value of this measurement.", required=True),
    Column("measured_readings", "integer", "Readings with a value of this measurement.", required=True),
    Column("pooled_mean", "number", "Mean over all readings (devices that report more weigh more)."),
    Column(
        "mean_of_device_means", "number", "Mean of each device's daily mean (every device weighs the same)."
    ),
    Column("min_value", "number", "Smallest value."),
    Column("max_value", "number", "Largest value."),
)


def columns(dataset: Dataset, kind: str) -> tuple[Column, ...]:
    return COUNCIL_DAILY_COLUMNS if kind == COUNCIL_DAILY else device_columns(dataset, kind)


def primary_key(dataset: Dataset, kind: str) -> tuple[str, ...]:
    if kind == COUNCIL_DAILY:
        return ("council", "domain", "event_date", "measurement")
    window = "hour" if kind == HOURLY else "event_date"
    return ("council", *(c.name for c in series_columns(dataset)), window)


def table_name(domain: Domain | str, kind: str) -> str:
    return f"published.{COUNCIL_DAILY}" if kind == COUNCIL_DAILY else f"published.{domain}_{kind}"


def aggregate_tables() -> list[tuple[str, tuple[Column, ...]]]:
    """Every aggregate table with its columns, for the schema DDL."""
    tables = [
        (table_name(d.domain, k), device_columns(d, k)) for d in DATASETS.values() for k in (HOURLY, DAILY)
    ]
    return [*tables, (table_name("", COUNCIL_DAILY), COUNCIL_DAILY_COLUMNS)]


def _day_range(days: list[date] | None, column: str) -> str:
    """A literal range on a timestamp column covering `days`: lets DuckDB skip row groups by their
    min/max, which a join on the partitions' dates cannot."""
    if not days:
        return "TRUE"
    first, last = min(days), max(days) + timedelta(days=1)
    return (
        f"{column} >= TIMESTAMPTZ '{first.isoformat()} 00:00:00+00' "
        f"AND {column} < TIMESTAMPTZ '{last.isoformat()} 00:00:00+00'"
    )


def _rows_sql(dataset: Dataset, days: list[date] | None = None) -> str:
    """Published rows of the partitions in `agg_partitions`, each with its series' expected interval.

    `days`: the partitions' dates, to prune the scan (all of them: a narrower list loses rows).
    """
    series = ", ".join(c.name for c in series_columns(dataset))
    if dataset.domain == Domain.TRAFFIC:
        interval = "quantile_disc(interval_s, 0.5) OVER s"
    else:
        interval = (
            f"CASE WHEN count(gap_s) OVER s >= {MIN_GAPS} THEN quantile_disc(gap_s, 0.5) OVER s "
            f"ELSE {DEFAULT_INTERVAL_S[dataset.domain]} END"
        )
    return f"""
        WITH r AS (
            SELECT p.*, CAST(p.observed_at AS DATE) AS event_date
            FROM published.{dataset.domain} p
            JOIN agg_partitions a ON p.council = a.council AND CAST(p.observed_at AS DATE) = a.event_date
            WHERE {_day_range(days, "p.observed_at")}
        ), g AS (
            SELECT *, (epoch_us(observed_at) - epoch_us(lag(observed_at) OVER (
                PARTITION BY council, event_date, {series} ORDER BY observed_at))) / 1e6 AS gap_s
            FROM r
        )
        SELECT *, CAST({interval} AS DOUBLE) AS expected_interval_s
        FROM g WINDOW s AS (PARTITION BY council, event_date, {series})"""


def _device_sql(dataset: Dataset, kind: str) -> str:
    series = ", ".join(c.name for c in series_columns(dataset))
    window = "date_trunc('hour', observed_at)" if kind == HOURLY else "event_date"
    stats = []
    for m in numeric_measurements(dataset):
        stats += [
            f"count({m.name}) AS {m.name}_count",
            f"avg({m.name}) AS {m.name}_mean",
            f"min({m.name}) AS {m.name}_min",
            f"max({m.name}) AS {m.name}_max",
        ]
        if m.name in SUMMED:
            stats.append(f"CAST(sum({m.name}) AS BIGINT) AS {m.name}_sum")
    expected = f"{WINDOW_S[kind]} / any_value(expected_interval_s)"
    return f"""
        SELECT council, {series}, {window} AS {primary_key(dataset, kind)[-1]},
               count(*) AS readings,
               any_value(expected_interval_s) AS expected_interval_s,
               {expected} AS expected_readings,
               least(1.0, count(*) / ({expected})) AS coverage,
               {", ".join(stats)}
        FROM agg_rows GROUP BY ALL"""


def _council_sql(dataset: Dataset) -> str:
    ms = numeric_measurements(dataset)
    device_means = ", ".join(f"avg({m.name}) AS {m.name}" for m in ms)
    pooled = ", ".join(
        f"count({m.name}) AS {m.name}_n, count(DISTINCT device_id) FILTER (WHERE {m.name} IS NOT NULL) "
        f"AS {m.name}_devices, avg({m.name}) AS {m.name}_mean, min({m.name}) AS {m.name}_min, "
        f"max({m.name}) AS {m.name}_max"
        for m in ms
    )
    of_means = ", ".join(f"avg({m.name}) AS {m.name}_dmean" for m in ms)
    selects = [
        f"""SELECT council, '{dataset.domain}' AS domain, event_date, '{m.name}' AS measurement,
                   {f"'{m.unit}'" if m.unit else "NULL"} AS unit, devices, readings,
                   {m.name}_devices AS measuring_devices, {m.name}_n AS measured_readings,
                   {m.name}_mean AS pooled_mean, {m.name}_dmean AS mean_of_device_means,
                   CAST({m.name}_min AS DOUBLE) AS min_value, CAST({m.name}_max AS DOUBLE) AS max_value
            FROM pooled JOIN of_means USING (council, event_date)"""
        for m in ms
    ]
    return f"""
        WITH per_device AS (SELECT council, event_date, device_id, {device_means} FROM agg_rows GROUP BY ALL),
        pooled AS (SELECT council, event_date, count(DISTINCT device_id) AS devices, count(*) AS readings,
                          {pooled} FROM agg_rows GROUP BY ALL),
        of_means AS (SELECT council, event_date, {of_means} FROM per_device GROUP BY ALL)
        {" UNION ALL ".join(selects)}"""


def _window_filter(dataset: Dataset, kind: str, days: list[date]) -> str:
    """Rows of a table that belong to the partitions in `agg_partitions` (whose dates are `days`)."""
    in_partitions = "IN (SELECT (council, event_date) FROM agg_partitions)"
    first, last = min(days), max(days)
    dated = f"event_date BETWEEN DATE '{first.isoformat()}' AND DATE '{last.isoformat()}'"
    if kind == COUNCIL_DAILY:
        return f"domain = '{dataset.domain}' AND {dated} AND (council, event_date) {in_partitions}"
    if kind == DAILY:
        return f"{dated} AND (council, event_date) {in_partitions}"
    return f"{_day_range(days, 'hour')} AND (council, CAST(hour AS DATE)) {in_partitions}"


def replace_aggregates(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, partitions: list[tuple[str, date]]
) -> None:
    """Recompute the aggregate tables' rows of (council, date) partitions from `published.<domain>`.

    Call it inside the transaction that changes those partitions' published rows, so that the
    aggregates always describe the published readings.
    """
    if not partitions:
        return
    # Parallel aggregation adds floating-point partial sums in whatever order threads finish, so
    # a mean can differ in its last digit between two identical runs. One thread makes every
    # rebuild, and every replay, byte for byte the same.
    [(threads,)] = con.execute("SELECT current_setting('threads')").fetchall()
    con.execute("SET threads = 1")
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE agg_partitions (council VARCHAR, event_date DATE)")
        con.executemany("INSERT INTO agg_partitions VALUES (?, ?)", [list(p) for p in partitions])
        days = sorted({d for _, d in partitions})
        con.execute(f"CREATE OR REPLACE TEMP TABLE agg_rows AS {_rows_sql(dataset, days)}")
        for kind in KINDS:
            names = ", ".join(c.name for c in columns(dataset, kind))
            sql = _council_sql(dataset) if kind == COUNCIL_DAILY else _device_sql(dataset, kind)
            con.execute(
                f"DELETE FROM {table_name(dataset.domain, kind)} WHERE {_window_filter(dataset, kind, days)}"
            )
            con.execute(
                f"INSERT INTO {table_name(dataset.domain, kind)} ({names}) SELECT {names} FROM ({sql})"
            )
        con.execute("DROP TABLE agg_rows")
        con.execute("DROP TABLE agg_partitions")
    finally:
        con.execute(f"SET threads = {int(threads)}")


def aggregate_rows_of(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, kind: str, partitions: list[tuple[str, date]]
) -> dict[tuple[str, date], Any]:
    """Each partition's rows of an aggregate table, in its primary key's order (Arrow tables), in one
    query for all of them."""
    cols = columns(dataset, kind)
    key = primary_key(dataset, kind)
    window = "CAST(hour AS DATE)" if kind == HOURLY else "event_date"
    days = sorted({d for _, d in partitions})
    dated = (
        _day_range(days, "hour")
        if kind == HOURLY
        else f"event_date BETWEEN DATE '{days[0]}' AND DATE '{days[-1]}'"
    )
    domain_filter = f"AND domain = '{dataset.domain}'" if kind == COUNCIL_DAILY else ""
    wanted = {(c, d) for c, d in partitions}
    table = con.sql(
        f"SELECT {', '.join(c.name for c in cols)}, {window} AS _day FROM {table_name(dataset.domain, kind)} "
        f"WHERE {dated} {domain_filter} AND list_contains($councils, council) "
        f"ORDER BY council, _day, {', '.join(f'{k} NULLS FIRST' for k in key)}",
        params={"councils": sorted({c for c, _ in partitions})},
    ).to_arrow_table()
    out: dict[tuple[str, date], Any] = {}
    councils = table.column("council").to_pylist()
    dates = table.column("_day").to_pylist()
    table = table.drop_columns(["_day"])
    start = 0
    for i in range(1, len(councils) + 1):
        if i == len(councils) or (councils[i], dates[i]) != (councils[start], dates[start]):
            if (councils[start], dates[start]) in wanted:
                out[(councils[start], dates[start])] = table.slice(start, i - start)
            start = i
    empty = table.slice(0, 0)
    return {p: out.get(p, empty) for p in wanted}


def aggregate_rows(con: duckdb.DuckDBPyConnection, dataset: Dataset, kind: str, council: str, day: date):
    """One partition's rows of an aggregate table, in its primary key's order (an Arrow table)."""
    return aggregate_rows_of(con, dataset, kind, [(council, day)])[(council, day)]
