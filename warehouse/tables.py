"""Arrow schemas for the zones, generated from the dataset contract."""

from __future__ import annotations

import pyarrow as pa

from civicflow.contract import Column

ARROW_TYPES = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "datetime": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
    "binary": pa.binary(),
}


def arrow_schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.type], nullable=not c.required) for c in columns])


def quarantine_schema() -> pa.Schema:
    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("segment_id", pa.string()),
            ("record_offset", pa.int64()),
            ("reading_index", pa.int64()),
            ("received_at", ts),
            ("topic", pa.string()),
            ("council", pa.string()),
            ("domain", pa.string()),
            ("device_id", pa.string()),
            ("reason", pa.string()),
            ("detail", pa.string()),
            ("payload", pa.binary()),
            ("quarantined_at", ts),
        ]
    )
