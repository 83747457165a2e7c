"""Turn real council recordings into the messages their gateways would publish.

Used by `civicflow demo` and the tests to replay real data through a real broker. The gateway,
not Civicflow, knows which time zone its sensors' clocks are in, so this is where the naive local
timestamps of a recording become RFC 3339 with an offset; nothing else is changed or filtered:
readings Civicflow must refuse (negative counts, occupancy above capacity) are sent as recorded.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
BIRMINGHAM_PARKING = SAMPLES_DIR / "parking" / "birmingham_2016-10.csv"
_NOT_NAME = re.compile(r"[^a-z0-9_-]+")


def device_id_for(code: str) -> str:
    """A topic-safe device id for a car-park code: `NIA North` -> `nia-north`."""
    return _NOT_NAME.sub("-", code.strip().lower()).strip("-")[:64]


def birmingham_parking_messages(
    path: Path = BIRMINGHAM_PARKING,
    *,
    council: str = "birmingham",
    prefix: str = "city",
    tz: str = "Europe/London",
) -> Iterator[tuple[str, bytes]]:
    """One message per recorded reading, as each car park's gateway would publish it."""
    zone = ZoneInfo(tz)
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            stamp = row["LastUpdated"].strip()
            if stamp != row["LastUpdated"]:
                log.info("gateway trimmed whitespace around timestamp %r", row["LastUpdated"])
            observed = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
            payload = {
                "observed_at": observed.isoformat(),
                "occupied_spots": int(row["Occupancy"]),
                "total_spots": int(row["Capacity"]),
            }
            topic = f"{prefix}/{council}/parking/{device_id_for(row['SystemCodeNumber'])}"
            yield topic, orjson.dumps(payload)
