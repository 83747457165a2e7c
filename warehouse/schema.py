"""DuckDB DDL for every zone, generated from the dataset contract."""

from __future__ import annotations

from civicflow.contract import DATASETS, Column, Dataset
from civicflow.warehouse.aggregates import aggregate_tables
from civicflow.warehouse.feedback import FEEDBACK_DDL
from civicflow.warehouse.partitions import PARTITION_DDL
from civicflow.warehouse.privacy import ERASURE_DDL

DUCKDB_TYPES = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "number": "DOUBLE",
    "datetime": "TIMESTAMPTZ",
    "date": "DATE",
    "binary": "BLOB",
}


def column_ddl(columns: tuple[Column, ...]) -> str:
    return ",\n    ".join(
        f"{c.name} {DUCKDB_TYPES[c.type]}{' NOT NULL' if c.required else ''}" for c in columns
    )


def dataset_ddl(schema: str, dataset: Dataset, columns: tuple[Column, ...]) -> str:
    return f"CREATE TABLE IF NOT EXISTS {schema}.{dataset.domain} (\n    {column_ddl(columns)}\n)"


BASE_DDL = [
    "CREATE SCHEMA IF NOT EXISTS raw",
    "CREATE SCHEMA IF NOT EXISTS staged",
    "CREATE SCHEMA IF NOT EXISTS published",
    "CREATE SCHEMA IF NOT EXISTS quarantine",
    """CREATE TABLE IF NOT EXISTS raw.segments (
    segment_id VARCHAR PRIMARY KEY,
    bytes BIGINT NOT NULL,
    sha256 VARCHAR NOT NULL,
    records BIGINT NOT NULL,
    readings BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    staged_at TIMESTAMPTZ NOT NULL
)""",
    # The Iceberg snapshots of staged.increments (warehouse/lake.py) merged into this warehouse,
    # recorded in the transaction that merges each one, so none is merged twice.
    """CREATE TABLE IF NOT EXISTS raw.increments (
    snapshot_id BIGINT PRIMARY KEY,
    source VARCHAR NOT NULL,
    consumed_at TIMESTAMPTZ NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS staged.corrections (
    domain VARCHAR NOT NULL,
    council VARCHAR NOT NULL,
    event_date DATE NOT NULL,
    device_id VARCHAR NOT NULL,
    lane_id BIGINT,
    observed_at TIMESTAMPTZ NOT NULL,
    old_value_hash VARCHAR NOT NULL,
    new_value_hash VARCHAR NOT NULL,
    old_values JSON NOT NULL,
    new_values JSON NOT NULL,
    old_segment_id VARCHAR NOT NULL,
    old_record_offset BIGINT NOT NULL,
    old_reading_index BIGINT NOT NULL,
    old_received_at TIMESTAMPTZ NOT NULL,
    new_segment_id VARCHAR NOT NULL,
    new_record_offset BIGINT NOT NULL,
    new_reading_index BIGINT NOT NULL,
    new_received_at TIMESTAMPTZ NOT NULL,
    corrected_at TIMESTAMPTZ NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS quarantine.readings (
    segment_id VARCHAR NOT NULL,
    record_offset BIGINT NOT NULL,
    reading_index BIGINT,
    received_at TIMESTAMPTZ NOT NULL,
    topic VARCHAR NOT NULL,
    council VARCHAR,
    domain VARCHAR,
    device_id VARCHAR,
    reason VARCHAR NOT NULL,
    detail VARCHAR NOT NULL,
    payload BLOB NOT NULL,
    quarantined_at TIMESTAMPTZ NOT NULL
)""",
]


# Consumer views over the published zone and its aggregates (docs/queries.md). Replaced on every
# writable connect, so a new release of Civicflow brings its view definitions with it.
VIEW_DDL = [
    """CREATE OR REPLACE VIEW published.parking_latest AS
SELECT council, device_id, observed_at, occupied_spots, total_spots,
       total_spots - occupied_spots AS free_spots, occupancy, lat, lon
FROM published.parking
WHERE occupancy IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY council, device_id ORDER BY observed_at DESC) = 1""",
    """CREATE OR REPLACE VIEW published.waste_latest AS
SELECT council, device_id, observed_at, filling_level, temperature, status, lat, lon
FROM published.waste
WHERE filling_level IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY council, device_id ORDER BY observed_at DESC) = 1""",
    """CREATE OR REPLACE VIEW published.air_quality_no2_exceedances AS
SELECT council, device_id, hour, no2_mean, no2_count, coverage, CAST(200 AS DOUBLE) AS limit_ug_m3
FROM published.air_quality_hourly
WHERE no2_mean > 200""",
    """CREATE OR REPLACE VIEW published.air_quality_pm10_exceedances AS
SELECT council, device_id, event_date, pm10_mean, pm10_count, coverage, CAST(50 AS DOUBLE) AS limit_ug_m3
FROM published.air_quality_daily
WHERE pm10_mean > 50""",
    """CREATE OR REPLACE VIEW published.device_coverage AS
"""
    + "\nUNION ALL\n".join(
        f"SELECT '{d.domain}' AS domain, council, device_id, "
        f"{'lane_id' if 'lane_id' in d.natural_key else 'CAST(NULL AS BIGINT) AS lane_id'}, event_date, "
        f"readings, expected_interval_s, expected_readings, coverage FROM published.{d.domain}_daily"
        for d in DATASETS.values()
    ),
]


def all_ddl() -> list[str]:
    ddl = list(BASE_DDL) + PARTITION_DDL + ERASURE_DDL + FEEDBACK_DDL
    for dataset in DATASETS.values():
        ddl.append(dataset_ddl("staged", dataset, dataset.staged_columns))
        ddl.append(dataset_ddl("published", dataset, dataset.published_columns))
    ddl.extend(
        f"CREATE TABLE IF NOT EXISTS {name} (\n    {column_ddl(cols)}\n)" for name, cols in aggregate_tables()
    )
    ddl.extend(VIEW_DDL)
    return ddl
