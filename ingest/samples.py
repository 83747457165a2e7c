"""Turn real council recordings into the messages their gateways would publish.

Used by `civicflow demo` and the tests to replay real data through a real broker: one generator
per source, each yielding `(topic, payload)` in the native wire contract (docs/mqtt-contract.md).
The files are in `samples/`, with their origin and licence in `samples/NOTICE.md`.

The gateway, not Civicflow, knows which time zone its sensors' clocks are in, so this is where the
naive local timestamps of a recording become RFC 3339 with an offset (`local_rfc3339`). Nothing
else is cleaned or filtered: readings Civicflow must refuse (negative counts, occupancy above
capacity, a value that is not a number) are sent as recorded, so they end up in quarantine with a
reason. Traffic is the exception to "real": no open traffic-counter recording is shipped, so
`synthetic_traffic_messages` generates one, deterministically, and says so in its council name.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from civicflow.resources import resource_dir

log = logging.getLogger(__name__)

SAMPLES_DIR = resource_dir("samples")
BIRMINGHAM_PARKING = SAMPLES_DIR / "parking" / "birmingham_2016-10.csv"
EDINBURGH_WASTE = SAMPLES_DIR / "waste" / "edinburgh_litter_bins_2016-07-25_2016-08-07.csv"
ABERDEEN_AIR_QUALITY = SAMPLES_DIR / "air_quality" / "aberdeen_sensor_community"
_NOT_NAME = re.compile(r"[^a-z0-9_-]+")

Message = tuple[str, bytes]


def device_id_for(code: str) -> str:
    """A topic-safe device id for a car-park code: `NIA North` -> `nia-north`."""
    return _NOT_NAME.sub("-", code.strip().lower()).strip("-")[:64]


def local_rfc3339(naive: datetime, zone: ZoneInfo) -> str:
    """RFC 3339 with the UTC offset a local wall-clock time was on in `zone`.

    A wall time that names no single instant is returned as recorded, without an offset, so that
    Civicflow quarantines the reading (`timestamp_without_offset`) instead of publishing a guess:
    in the hour the clocks go back (01:00-02:00 on the last Sunday of October in Europe/London)
    every time happens twice and a recording without an offset cannot say which was meant; in the
    hour they go forward (01:00-02:00 on the last Sunday of March) no time exists, so the
    recording's clock was wrong.
    """
    first, second = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() != second.utcoffset():
        exists = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive
        log.warning(
            "local time %s %s in %s: sent without an offset",
            naive.isoformat(),
            "happened twice" if exists else "does not exist",
            zone.key,
        )
        return naive.isoformat()
    return first.isoformat()


def _number(text: str) -> Any:
    """A recorded number as JSON would carry it; text that is not a number is sent as text."""
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return value if math.isfinite(value) else text
    return text


def _message(prefix: str, council: str, domain: str, device_id: str, payload: Any) -> Message:
    return f"{prefix}/{council}/{domain}/{device_id}", orjson.dumps(payload)


def birmingham_parking_messages(
    path: Path = BIRMINGHAM_PARKING,
    *,
    council: str = "birmingham",
    prefix: str = "city",
    tz: str = "Europe/London",
) -> Iterator[Message]:
    """One message per recorded reading, as each car park's gateway would publish it."""
    zone = ZoneInfo(tz)
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            stamp = row["LastUpdated"].strip()
            if stamp != row["LastUpdated"]:
                log.info("gateway trimmed whitespace around timestamp %r", row["LastUpdated"])
            observed = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
            payload = {
                "observed_at": local_rfc3339(observed, zone),
                "occupied_spots": int(row["Occupancy"]),
                "total_spots": int(row["Capacity"]),
            }
            yield _message(prefix, council, "parking", device_id_for(row["SystemCodeNumber"]), payload)


ENEVO_FULL_FRACTION = 0.8
"""The physical fill of an Enevo bin its sensor reports as 100%.

The council's recording says so in its header ("100% is actually a bin that's 80% full"): Enevo
calls a bin full when it should be emptied, at 80% of its volume. The contract's `filling_level`
is a fraction of the container's capacity, so the gateway sends percent / 100 * 0.8. The sensor
never reports more than 100%, so 0.8 means "at or above Enevo's full mark".
"""
EDINBURGH_TIME = "Date & Time of bin collection (Europe/London)"
EDINBURGH_FILL = "Fill level before collection (%)"  # the header goes on with the note above


def edinburgh_waste_messages(
    path: Path = EDINBURGH_WASTE,
    *,
    council: str = "edinburgh",
    prefix: str = "city",
    tz: str = "Europe/London",
) -> Iterator[Message]:
    """One message per bin collection: the bin's fill level just before it was emptied.

    The device is the bin's sensor (`Container slot:ID`; a site whose sensor is replaced gets a
    new one), the message id the council's collection event id. A fill level that is not a number is sent as
    recorded, and refused by Civicflow.
    """
    zone = ZoneInfo(tz)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fill_column = next(c for c in reader.fieldnames or () if c.startswith(EDINBURGH_FILL))
        for row in reader:
            observed = datetime.strptime(row[EDINBURGH_TIME], "%Y-%m-%d %H:%M:%S")
            percent = _number(row[fill_column])
            level = (
                round(percent / 100 * ENEVO_FULL_FRACTION, 6) if isinstance(percent, int | float) else percent
            )
            payload = {
                "observed_at": local_rfc3339(observed, zone),
                "filling_level": level,
                "msg_id": row["ID"],
            }
            yield _message(
                prefix, council, "waste", f"bin-{device_id_for(row['Container slot:ID'])}", payload
            )


SENSOR_COMMUNITY_FIELDS = {
    "SDS011": {"P1": "pm10", "P2": "pm25"},
    "DHT22": {"temperature": "temperature", "humidity": "relative_humidity"},
}
"""Archive column -> contract measurement, per sensor type (P1 is PM10, P2 is PM2.5, in µg/m³)."""


def aberdeen_air_quality_messages(
    directory: Path = ABERDEEN_AIR_QUALITY,
    *,
    council: str = "aberdeen",
    prefix: str = "city",
) -> Iterator[Message]:
    """One message per archived reading of the Sensor.Community stations in the directory.

    Each sensor is its own device (`sds011-5331`, `dht22-5332`): a station's particle and
    humidity sensors are archived separately, a second or so apart, so joining them would move
    readings in time. The archive's times are UTC without a suffix (the archive documents UTC), so
    the gateway adds `Z`. Humidity in % becomes a fraction. An empty value is left out (the sensor
    sent none); text that is not a number is sent as recorded, and refused by Civicflow.
    """
    for path in sorted(directory.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter=";"):
                fields = SENSOR_COMMUNITY_FIELDS.get(row["sensor_type"])
                if fields is None:
                    raise ValueError(f"{path.name}: no mapping for sensor type {row['sensor_type']!r}")
                payload: dict[str, Any] = {"observed_at": f"{row['timestamp']}Z"}
                for column, name in fields.items():
                    if row[column] == "":
                        continue
                    value = _number(row[column])
                    if name == "relative_humidity" and isinstance(value, int | float):
                        value = round(value / 100, 6)
                    payload[name] = value
                payload["lat"], payload["lon"] = _number(row["lat"]), _number(row["lon"])
                device_id = f"{row['sensor_type'].lower()}-{device_id_for(row['sensor_id'])}"
                yield _message(prefix, council, "air_quality", device_id, payload)


SYNTHETIC_COUNCIL = "synthetic"
"""Council name of the generated traffic: nobody can mistake it for a real council's data."""
SYNTHETIC_TRAFFIC_DAYS = (date(2026, 3, 6), date(2026, 3, 7))  # a Friday and a Saturday, in GMT
SYNTHETIC_COUNTERS = (
    # device id, free-flow speed (km/h), lane capacity (vehicles per hour)
    ("radial-1", 50.0, 1400),
    ("radial-2", 45.0, 1100),
    ("local-1", 30.0, 350),
)
TRAFFIC_INTERVAL_S = 300
_EFFECTIVE_VEHICLE_LENGTH_M = 5.5  # vehicle plus detector loop: what makes occupancy from flow


def _demand(hour: float, weekend: bool, inbound: bool) -> float:
    """Share of a lane's capacity wanted at a time of day: a typical UK urban daily profile."""

    def peak(centre: float, width: float) -> float:
        return math.exp(-(((hour - centre) / width) ** 2) / 2)

    if weekend:
        return 0.03 + 0.55 * peak(13.5, 3.2)
    am, pm = (0.85, 0.55) if inbound else (0.55, 0.85)
    return 0.03 + am * peak(8.0, 1.0) + pm * peak(17.25, 1.3) + 0.35 * peak(12.5, 3.0)


def synthetic_traffic_messages(
    *,
    council: str = SYNTHETIC_COUNCIL,
    prefix: str = "city",
    days: tuple[date, ...] = SYNTHETIC_TRAFFIC_DAYS,
    seed: int = 2026,
) -> Iterator[Message]:
    """SYNTHETIC traffic-counter readings: no real recording is shipped for this domain.

    Three counters with two lanes each (1 inbound, 2 outbound) report every 5 minutes, one
    message holding both lanes' readings. Vehicle counts follow a weekday profile with morning and
    evening peaks (a weekend day has one broad midday hump) with Poisson-like noise; speed falls
    and detector occupancy rises as a lane fills. The same seed gives the same bytes.
    """
    rng = random.Random(seed)
    for day in days:
        weekend = day.weekday() >= 5
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for step in range(86_400 // TRAFFIC_INTERVAL_S):
            observed = start + timedelta(seconds=step * TRAFFIC_INTERVAL_S)
            hour = step * TRAFFIC_INTERVAL_S / 3600
            for device_id, free_speed, capacity in SYNTHETIC_COUNTERS:
                readings = []
                for lane in (1, 2):
                    load = min(_demand(hour, weekend, inbound=lane == 1), 1.0)
                    mean = load * capacity * TRAFFIC_INTERVAL_S / 3600
                    count = max(0, round(rng.gauss(mean, math.sqrt(mean))))
                    reading: dict[str, Any] = {
                        "observed_at": observed.isoformat().replace("+00:00", "Z"),
                        "interval_s": TRAFFIC_INTERVAL_S,
                        "lane_id": lane,
                        "intensity": count,
                    }
                    if count:  # no vehicles, no average speed
                        speed = max(5.0, free_speed * (1 - 0.5 * load**2) + rng.gauss(0, 2))
                        seconds_over_loop = count * _EFFECTIVE_VEHICLE_LENGTH_M / (speed / 3.6)
                        reading["average_vehicle_speed"] = round(speed, 1)
                        reading["occupancy"] = round(min(seconds_over_loop / TRAFFIC_INTERVAL_S, 1.0), 3)
                    readings.append(reading)
                yield _message(prefix, council, "traffic", device_id, readings)
