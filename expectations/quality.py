"""The inputs of the quality rules, and the `qc_*` columns they are judged on.

The contract rules look at a partition's own rows. The quality rules also need the warehouse: how
many of the partition's readings were quarantined, how many rows the council's previous days
had, and each device's reporting interval. `load_inputs` reads those; `add_quality_columns`
turns them into columns beside the partition's rows so the rules are ordinary Great Expectations
column expectations (`civicflow.expectations.suites.QUALITY_RULES`) and a warning names exactly the rows
it is about.

Completeness uses the coverage rule of the published aggregates (warehouse/aggregates.py,
docs/queries.md#coverage), run by its own SQL on the partition in an in-memory DuckDB, so a row
flagged `completeness` is one whose hourly aggregate has a coverage below the threshold. A
reporting interval the council's registry file gives (`[quality.reporting_interval_s]`)
replaces the inferred one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from statistics import median

import duckdb
import numpy as np
import pandas as pd

from civicflow.contract import Dataset, Domain
from civicflow.warehouse.aggregates import HOURLY, _device_sql, _rows_sql, series_columns
from civicflow.warehouse.partitions import trailing_rows

TRAILING_DAYS = 7
ROW_ID = "_qc_row"


@dataclass(frozen=True)
class QualityInputs:
    """What the quality rules need besides the partition's rows.

    Attributes:
        quarantined: Readings of this council, domain and event date in `quarantine.readings`;
            None when unknown (the quarantine-share rule is then not evaluated).
        trailing_rows: Staged rows of each of the council's partitions in the 7 days before.
        reporting_interval_s: Device id -> the interval the registry says it reports at.
        quarantined_by_device: Of `quarantined`, those whose device id could be read, by device.
            The quarantine share is judged per device (a device's readings that day); readings
            refused before a device id was read count in `quarantined` only.
    """

    quarantined: int | None = None
    trailing_rows: tuple[int, ...] = ()
    reporting_interval_s: Mapping[str, int] = field(default_factory=dict)
    quarantined_by_device: Mapping[str, int] = field(default_factory=dict)


def quarantine_event_date_sql() -> str:
    """The event date of a quarantined reading, as far as its bytes tell.

    Its `observed_at` if that parses (with an offset or `Z`, or epoch seconds; a time without an
    offset is read as UTC, which may move a reading near midnight by a day), else the UTC date it
    was received: a reading refused for its timestamp still counts against the day it arrived.
    """
    text = "try(decode(payload))"
    observed = f"CASE WHEN json_valid({text}) THEN json_extract_string({text}, '$.observed_at') END"
    return (
        "coalesce("
        f"TRY_CAST(TRY_CAST({observed} AS TIMESTAMPTZ) AS DATE), "
        f"TRY_CAST(try(to_timestamp(TRY_CAST({observed} AS DOUBLE))) AS DATE), "
        "CAST(received_at AS DATE))"
    )


def load_inputs(
    con: duckdb.DuckDBPyConnection,
    domain: Domain,
    council: str,
    day: date,
    reporting_interval_s: Mapping[str, int] | None = None,
) -> QualityInputs:
    """Read a partition's quarantine counts and its council's trailing volumes from the warehouse.

    Raises:
        OverflowError: If the partition's date is too early to have a trailing week (year 1).
    """
    by_device = con.execute(
        f"""SELECT device_id, count(*) FROM quarantine.readings
            WHERE council = ? AND domain = ? AND {quarantine_event_date_sql()} = ?
            GROUP BY device_id""",
        [council, domain.value, day],
    ).fetchall()
    trailing = trailing_rows(con, domain.value, council, day - timedelta(days=TRAILING_DAYS), day)
    return QualityInputs(
        quarantined=sum(int(n) for _, n in by_device),
        trailing_rows=trailing,
        reporting_interval_s=dict(reporting_interval_s or {}),
        quarantined_by_device={d: int(n) for d, n in by_device if d is not None},
    )


def add_quality_columns(
    df: pd.DataFrame,
    dataset: Dataset,
    *,
    now: datetime,
    inputs: QualityInputs | None = None,
    volume_min_days: int = 3,
    coverage: bool = True,
) -> pd.DataFrame:
    """Return a copy of a staged partition with the `qc_*` columns its quality rules judge.

    Args:
        df: The partition as read from its staged Parquet file (one council, one UTC date).
        dataset: Its contract.
        now: The gate's time: today's partition is judged on freshness against it.
        inputs: From `load_inputs`; without them only completeness and freshness are computed.
        volume_min_days: Trailing days that must have a partition before volume is judged.
        coverage: Compute `qc_device_hour_coverage` here; False leaves it null for a caller that
            computes it for many partitions at once (`device_hour_coverage`).
    """
    inputs = inputs or QualityInputs()
    out = df.reset_index(drop=True).copy()
    n = len(out)
    if coverage:
        council = str(out["council"].iloc[0]) if n and "council" in out else ""
        intervals = {(council, d): s for d, s in inputs.reporting_interval_s.items()}
        out["qc_device_hour_coverage"] = device_hour_coverage(out, dataset, intervals)
    else:
        out["qc_device_hour_coverage"] = pd.Series([None] * n, dtype="float64")
    out["qc_quarantine_share"] = _device_quarantine_share(out, inputs)
    ratio = None
    history = [r for r in inputs.trailing_rows if r > 0]
    if len(history) >= volume_min_days:
        ratio = n / median(history)
    out["qc_volume_ratio"] = pd.Series([ratio] * n, dtype="float64")
    age = None
    if n and "observed_at" in out:
        newest = pd.to_datetime(out["observed_at"], utc=True).max()
        if pd.notna(newest) and newest.date() == now.astimezone(newest.tzinfo).date():
            age = (pd.Timestamp(now) - newest).total_seconds() / 60
    out["qc_freshness_minutes"] = pd.Series([age] * n, dtype="float64")
    return out


def _device_quarantine_share(df: pd.DataFrame, inputs: QualityInputs) -> pd.Series:
    """Each row's device's quarantined readings that day / (those + its staged rows)."""
    if inputs.quarantined is None or df.empty or "device_id" not in df:
        return pd.Series([None] * len(df), dtype="float64")
    staged = df["device_id"].map(df["device_id"].value_counts())
    refused = df["device_id"].map(lambda d: inputs.quarantined_by_device.get(d, 0)).astype("float64")
    return (refused / (refused + staged)).astype("float64").reset_index(drop=True)


def device_hour_coverage(
    df: pd.DataFrame, dataset: Dataset, intervals: Mapping[tuple[str, str], int] | None = None
) -> pd.Series:
    """Coverage of each row's device-hour, by the published aggregates' rule (see module doc).

    `df` may hold many partitions (councils and days): one query computes them all.
    `intervals` maps (council, device id) to the interval its registry says it reports at.
    """
    names = [c.name for c in dataset.reading_columns]
    if df.empty or not set(names) <= set(df.columns):
        return pd.Series([None] * len(df), dtype="float64")
    frame = df[names].reset_index(drop=True)
    frame[ROW_ID] = np.arange(len(frame), dtype=np.int64)
    series = [c.name for c in series_columns(dataset)]
    join = " AND ".join(f"r.{c} IS NOT DISTINCT FROM h.{c}" for c in ["council", *series])
    mem = duckdb.connect()
    try:
        mem.execute("SET TimeZone = 'UTC'")
        mem.execute("CREATE SCHEMA published")
        mem.register("frame", frame)
        mem.execute(f"CREATE VIEW published.{dataset.domain} AS SELECT * FROM frame")
        mem.execute(
            "CREATE TEMP TABLE agg_partitions AS SELECT DISTINCT council, "
            f"CAST(observed_at AS DATE) AS event_date FROM published.{dataset.domain}"
        )
        mem.execute(f"CREATE TEMP TABLE agg_rows AS {_rows_sql(dataset)}")
        if intervals:
            mem.execute("CREATE TEMP TABLE intervals (council VARCHAR, device_id VARCHAR, interval_s DOUBLE)")
            mem.executemany(
                "INSERT INTO intervals VALUES (?, ?, ?)",
                [[c, d, float(s)] for (c, d), s in intervals.items()],
            )
            mem.execute(
                "UPDATE agg_rows SET expected_interval_s = i.interval_s FROM intervals i "
                "WHERE agg_rows.council = i.council AND agg_rows.device_id = i.device_id"
            )
        found = mem.execute(
            f"""SELECT r.{ROW_ID} AS row_id, h.coverage FROM agg_rows r
                JOIN ({_device_sql(dataset, HOURLY)}) h
                  ON {join} AND date_trunc('hour', r.observed_at) = h.hour"""
        ).fetchnumpy()
    finally:
        mem.close()
    values = np.full(len(df), np.nan)
    values[np.asarray(found["row_id"], dtype=np.int64)] = np.asarray(found["coverage"], dtype=np.float64)
    return pd.Series(values, dtype="float64")
