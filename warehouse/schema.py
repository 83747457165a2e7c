"""DuckDB DDL for every zone, generated from the dataset contract."""

from __future__ import annotations

from civicflow.contract import DATASETS, Column, Dataset

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
]


def all_ddl() -> list[str]:
    ddl = list(BASE_DDL)
    for dataset in DATASETS.values():
        ddl.append(dataset_ddl("staged", dataset, dataset.staged_columns))
        ddl.append(dataset_ddl("published", dataset, dataset.published_columns))
    return ddl
