"""The dataset contract: zones, domains, rejection reasons and the columns of every dataset.

This module is the single source of truth for names. The same word names the folder
(`data/staged/parking/...`), the DuckDB table (`staged.parking`), the Airflow Asset and the log line.
Column types use the Frictionless Table Schema vocabulary; `civicflow.warehouse.schema` maps them to DuckDB
and Arrow. Measurement names follow the FIWARE Smart Data Models vocabulary in snake_case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

CONTRACT_VERSION = "1"

# -- The rules every decoder reads (transforms/decode.py, the reference, and transforms/fast.py,
# the vectorised path): stated once, here, as data. ------------------------------------------------

NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
"""Councils, device ids and anything else that becomes a folder, a key or a topic level."""
NAME_RE = re.compile(NAME_PATTERN)
"""Always with `fullmatch` (or `is_name`): `$` would let a trailing newline through."""

OBSERVED_FROM = datetime(1970, 1, 1, tzinfo=UTC)
OBSERVED_UNTIL = datetime(3000, 1, 1, tzinfo=UTC)
"""The observation window, [OBSERVED_FROM, OBSERVED_UNTIL): a time outside it is a unit or clock
error (milliseconds sent as seconds, a gateway that lost its clock), `timestamp_out_of_range`."""
EPOCH_MAX = int((OBSERVED_UNTIL - OBSERVED_FROM).total_seconds())
"""Epoch seconds of OBSERVED_UNTIL: 32,503,680,000."""
CLOCK_SKEW_MAX_S = 600
"""How far after its receive time a reading may say it was observed (a gateway clock running
fast); later is `future_timestamp`. Judged against the receive time the listener recorded, so a
replay gives the same answer as the first staging."""
MSG_ID_MAX = 200
"""Longest `msg_id`, in characters."""
COMMON_FIELDS = frozenset({"observed_at", "msg_id", "lat", "lon"})
"""Fields a reading of any domain may carry besides its dataset's own."""


def is_name(value: Any) -> bool:
    """Whether `value` is a valid Civicflow name (NAME_PATTERN, whole string)."""
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


class Rule(StrEnum):
    """Checks across the fields of one reading that a dataset declares (`Dataset.rules`).

    Every decoder implements each rule it applies; a decoder that does not know a rule a dataset
    declares must not decode that dataset (the fast path then hands it to the reference, and says so).
    """

    CAR_PARK_COUNTS = "car_park_counts"
    """occupied_spots and total_spots come together, occupied_spots <= total_spots, and
    occupancy = occupied_spots / total_spots."""


LICENCE = {
    "name": "OGL-UK-3.0",
    "path": "https://www.nationalarchives.gov.uk/doc/open-government-licence/version/3/",
    "title": "Open Government Licence v3.0",
}
"""The licence a council's data is published under unless its registry names another."""

OGL_ATTRIBUTION = "Contains public sector information licensed under the Open Government Licence v3.0."
"""The attribution statement the Open Government Licence asks for, when the council gives none."""


INTENSITY_MAX = 10_000
"""Most vehicles one traffic reading may count (per interval, per lane)."""


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
    AMBIGUOUS_LOCAL_TIME = "ambiguous_local_time"
    NONEXISTENT_LOCAL_TIME = "nonexistent_local_time"
    TOO_LATE = "too_late"
    OUT_OF_RANGE = "out_of_range"
    INVALID_VALUE = "invalid_value"
    NO_MEASUREMENT = "no_measurement"
    OCCUPIED_EXCEEDS_TOTAL = "occupied_exceeds_total"
    UNKNOWN_DEVICE = "unknown_device"
    UNCONVERTIBLE_UNIT = "unconvertible_unit"
    JSON_TOO_DEEP = "json_too_deep"
    CORRUPT_RECORD = "corrupt_record"
    DUPLICATE_KEY = "duplicate_key"
    INVALID_DATE = "invalid_date"
    INVALID_OFFSET = "invalid_offset"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    FUTURE_TIMESTAMP = "future_timestamp"
    DECODER_ERROR = "decoder_error"


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
    default: int | float | str | None = None  # filled in when a reading leaves it out


@dataclass(frozen=True)
class Dataset:
    """A domain dataset: its measurements, natural key and the columns each zone holds."""

    domain: Domain
    title: str
    description: str
    fiware_types: tuple[str, ...]
    measurements: tuple[Column, ...]
    natural_key: tuple[str, ...] = ("council", "device_id", "observed_at")
    qualifiers: tuple[Column, ...] = field(default=())
    derived: tuple[Column, ...] = field(default=())
    rules: tuple[Rule, ...] = field(default=())

    @property
    def measurement_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.measurements)

    @property
    def reading_fields(self) -> tuple[Column, ...]:
        """Columns a reading may carry besides the common fields: measurements and qualifiers."""
        return (*self.measurements, *self.qualifiers)

    @property
    def value_columns(self) -> tuple[Column, ...]:
        """Columns whose values make a reading what it is (what de-duplication compares)."""
        return (*self.measurements, *self.qualifiers, *self.derived)

    @property
    def reading_columns(self) -> tuple[Column, ...]:
        """What a reading is: identity, qualifiers, measurements, derived values and location."""
        return (*IDENTITY_COLUMNS, *self.qualifiers, *self.measurements, *self.derived, *LOCATION_COLUMNS)

    @property
    def published_columns(self) -> tuple[Column, ...]:
        return (*self.reading_columns, *QUALITY_COLUMNS)

    @property
    def staged_columns(self) -> tuple[Column, ...]:
        return (*self.reading_columns, *STAGED_EXTRA_COLUMNS)


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
QUALITY_COLUMNS: tuple[Column, ...] = (
    Column(
        "qc_flag",
        "string",
        "Warning rules of the quality gate this reading failed, separated by ';' (e.g. "
        "'completeness'); empty when it passed every rule. Flagged readings are published as "
        "they were received.",
    ),
)
"""Added by the quality gate when a partition is published; not part of the staged zone."""

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
    rules=(Rule.CAR_PARK_COUNTS,),
)

TRAFFIC = Dataset(
    domain=Domain.TRAFFIC,
    title="Road traffic flow",
    description=(
        "Vehicle counts, average speeds and detector occupancy from council traffic counters, "
        "per measuring interval and, where the counter reports it, per lane."
    ),
    fiware_types=("TrafficFlowObserved",),
    natural_key=("council", "device_id", "lane_id", "observed_at"),
    measurements=(
        Column(
            "intensity",
            "integer",
            "Vehicles counted during the interval.",
            unit="vehicle",
            minimum=0,
            # Above any road's flow in an hour (about 2,000 vehicles a lane): a count beyond it is a
            # counter fault, refused at staging. It also bounds the aggregates' sums: a device-lane
            # has at most 86,400,000,000 readings a day (one per microsecond), so a day's sum is
            # at most 8.64e14, far inside the 64-bit integer the sum is kept in (docs/queries.md).
            maximum=INTENSITY_MAX,
            fiware="intensity",
        ),
        Column(
            "average_vehicle_speed",
            "number",
            "Average speed of the vehicles counted.",
            unit="km/h",
            minimum=0,
            maximum=400,
            fiware="averageVehicleSpeed",
        ),
        Column(
            "occupancy",
            "number",
            "Fraction of the interval during which the detector was occupied.",
            unit="1",
            minimum=0,
            maximum=1,
            fiware="occupancy",
        ),
    ),
    qualifiers=(
        Column(
            "interval_s",
            "integer",
            "Length of the measuring interval that starts at observed_at.",
            unit="s",
            minimum=1,
            maximum=86_400,
            required=True,
            default=300,
        ),
        Column("lane_id", "integer", "Lane the detector counts, if per lane.", minimum=0, fiware="laneId"),
    ),
)

AIR_POLLUTANT_MAX = 50_000  # µg/m³: far above any ambient reading, below a unit error

AIR_QUALITY = Dataset(
    domain=Domain.AIR_QUALITY,
    title="Air quality",
    description=(
        "Concentrations of air pollutants with temperature and humidity, from council and "
        "citizen air-quality monitors. Gases are mass concentrations at the EU reference "
        "conditions (20 °C, 101.325 kPa)."
    ),
    fiware_types=("AirQualityObserved",),
    measurements=(
        *(
            Column(
                name,
                "number",
                f"{label} concentration.",
                unit="ug/m3",
                minimum=0,
                maximum=AIR_POLLUTANT_MAX,
                fiware=fiware,
            )
            for name, label, fiware in (
                ("no2", "Nitrogen dioxide (NO2)", "no2"),
                ("pm10", "Particulate matter under 10 µm (PM10)", "pm10"),
                ("pm25", "Particulate matter under 2.5 µm (PM2.5)", "pm25"),
                ("o3", "Ozone (O3)", "o3"),
                ("so2", "Sulphur dioxide (SO2)", "so2"),
            )
        ),
        Column(
            "co",
            "number",
            "Carbon monoxide (CO) concentration.",
            unit="mg/m3",
            minimum=0,
            maximum=1_000,
            fiware="co",
        ),
        Column(
            "temperature",
            "number",
            "Air temperature.",
            unit="Cel",
            minimum=-60,
            maximum=70,
            fiware="temperature",
        ),
        Column(
            "relative_humidity",
            "number",
            "Relative humidity, as a fraction.",
            unit="1",
            minimum=0,
            maximum=1,
            fiware="relativeHumidity",
        ),
    ),
)

WASTE_STATUS = ("ok", "lidOpen", "dropped", "moved", "vandalized", "burning", "unknown")

WASTE = Dataset(
    domain=Domain.WASTE,
    title="Litter bin and waste container fill levels",
    description="Fill level, temperature and status of council litter bins and waste containers.",
    fiware_types=("WasteContainer",),
    measurements=(
        Column(
            "filling_level",
            "number",
            "How full the container is, as a fraction of its capacity.",
            unit="1",
            minimum=0,
            maximum=1,
            fiware="fillingLevel",
        ),
        Column(
            "temperature",
            "number",
            "Temperature inside the container.",
            unit="Cel",
            minimum=-60,
            maximum=150,
            fiware="temperature",
        ),
        Column("status", "string", "Status of the container.", enum=WASTE_STATUS, fiware="status"),
    ),
)

DATASETS: dict[Domain, Dataset] = {d.domain: d for d in (TRAFFIC, PARKING, AIR_QUALITY, WASTE)}
"""Domains whose readings Civicflow stages and publishes. A domain missing here is kept in
quarantine (`domain_not_enabled`) until its dataset is declared, and can be replayed from raw then."""


def asset_uri(zone: Zone, domain: Domain) -> str:
    """The Airflow Asset URI of a zone's dataset, e.g. `civicflow://staged/parking`."""
    return f"civicflow://{zone.value}/{domain.value}"
