"""The dataset contract: zones, domains, rejection reasons and the columns of every dataset.

This module is the single source of truth for names. The same word names the folder
(`data/staged/parking/...`), the DuckDB table (`staged.parking`), the Airflow Asset and the log line.
Column types use the Frictionless Table Schema vocabulary; `warehouse.schema` maps them to DuckDB
and Arrow. Measurement names follow the FIWARE Smart Data Models vocabulary in snake_case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

CONTRACT_VERSION = "1"
NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
LICENCE = {
    "name": "OGL-UK-3.0",
    "path": "https://www.nationalarchives.gov.uk/doc/open-government-licence/version/3/",
    "title": "Open Government Licence v3.0",
}


class Zone(StrEnum):
    """Where data lives, in order. Names folders, DuckDB schemas and Airflow Assets."""

    RAW = "raw"
    STAGED = "staged"
    PUBLISHED = "published"
    QUARANTINE = "quarantine"


class Domain(StrEnum):
    TRAFFIC = "traffic"
    PARKING = "parking"
    AIR_QUALITY = "air_quality"
    WASTE = "waste"


class Reason(StrEnum):
    """Machine-readable reasons a message or reading is quarantined."""

    BAD_TOPIC = "bad_topic"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    EMPTY_BATCH = "empty_batch"
    BATCH_TOO_LARGE = "batch_too_large"
    DOMAIN_NOT_ENABLED = "domain_not_enabled"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_TYPE = "invalid_type"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_WITHOUT_OFFSET = "timestamp_without_offset"
    OUT_OF_RANGE = "out_of_range"
    INVALID_VALUE = "invalid_value"
    OCCUPIED_EXCEEDS_TOTAL = "occupied_exceeds_total"
    CORRUPT_RECORD = "corrupt_record"


@dataclass(frozen=True)
class Column:
    """One column of a dataset, as consumers see it in the Table Schema."""

    name: str
    type: str  # Frictionless type: string, integer, number, datetime, date, binary
    description: str
    unit: str | None = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    fiware: str | None = None  # the Smart Data Models attribute this column carries


@dataclass(frozen=True)
class Dataset:
    """A domain dataset: its measurements, natural key and the columns each zone holds."""

    domain: Domain
    title: str
    description: str
    fiware_types: tuple[str, ...]
    measurements: tuple[Column, ...]
    natural_key: tuple[str, ...] = ("council", "device_id", "observed_at")
    derived: tuple[Column, ...] = field(default=())

    @property
    def measurement_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.measurements)

    @property
    def published_columns(self) -> tuple[Column, ...]:
        return (*IDENTITY_COLUMNS, *self.measurements, *self.derived, *LOCATION_COLUMNS)

    @property
    def staged_columns(self) -> tuple[Column, ...]:
        return (*self.published_columns, *STAGED_EXTRA_COLUMNS)


IDENTITY_COLUMNS: tuple[Column, ...] = (
    Column("council", "string", "Council that operates the sensor (topic segment).", required=True),
    Column("device_id", "string", "Device identifier, unique within the council.", required=True),
    Column(
        "observed_at",
        "datetime",
        "When the reading was observed, in UTC (start of the measuring interval).",
        required=True,
        fiware="dateObserved",
    ),
)
LOCATION_COLUMNS: tuple[Column, ...] = (
    Column(
        "lat",
        "number",
        "WGS84 latitude of the device.",
        unit="degree",
        minimum=-90,
        maximum=90,
        fiware="location",
    ),
    Column(
        "lon",
        "number",
        "WGS84 longitude of the device.",
        unit="degree",
        minimum=-180,
        maximum=180,
        fiware="location",
    ),
)
STAGED_EXTRA_COLUMNS: tuple[Column, ...] = (
    Column("event_date", "date", "UTC date of observed_at: the partition key.", required=True),
    Column("msg_id", "string", "The gateway's own message id, if it sent one."),
    Column("received_at", "datetime", "When the listener received the message (UTC).", required=True),
    Column("segment_id", "string", "Raw segment the reading came from (lineage).", required=True),
    Column("record_offset", "integer", "Byte offset of the message in its raw segment.", required=True),
    Column("reading_index", "integer", "Position of the reading in its message's batch.", required=True),
    Column("staged_at", "datetime", "When the reading was staged (UTC).", required=True),
)

PARKING_STATUS = ("free", "occupied", "closed", "unknown")

PARKING = Dataset(
    domain=Domain.PARKING,
    title="Car park and parking bay occupancy",
    description=(
        "Occupancy of off-street car parks (occupied and total spots) and the status of single "
        "parking bays, as reported by council sensors."
    ),
    fiware_types=("OffStreetParking", "ParkingSpot"),
    measurements=(
        Column(
            "occupied_spots",
            "integer",
            "Spots occupied in the car park.",
            unit="spot",
            minimum=0,
            fiware="occupiedSpotNumber",
        ),
        Column(
            "total_spots",
            "integer",
            "Spots in the car park (capacity).",
            unit="spot",
            minimum=1,
            fiware="totalSpotNumber",
        ),
        Column("status", "string", "Status of a single parking bay.", enum=PARKING_STATUS, fiware="status"),
    ),
    derived=(
        Column(
            "occupancy",
            "number",
            "occupied_spots / total_spots.",
            unit="1",
            minimum=0,
            maximum=1,
            fiware="occupancy",
        ),
    ),
)

DATASETS: dict[Domain, Dataset] = {Domain.PARKING: PARKING}
"""Domains whose readings Civicflow stages and publishes. Others are kept in quarantine
(`domain_not_enabled`) until their dataset is declared here, and can be replayed from raw then."""


def asset_uri(zone: Zone, domain: Domain) -> str:
    """The Airflow Asset URI of a zone's dataset, e.g. `civicflow://staged/parking`."""
    return f"civicflow://{zone.value}/{domain.value}"
