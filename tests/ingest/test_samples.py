"""The sample generators: every reading of the shipped files, decoded as Civicflow decodes it.

Expected counts are computed here from the files with the csv module, independently of the
generators, so a generator that drops, cleans or invents a reading fails.
"""

from __future__ import annotations

import csv
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from civicflow.contract import Domain, Reason, is_name
from civicflow.ingest.samples import (
    ABERDEEN_AIR_QUALITY,
    BIRMINGHAM_PARKING,
    EDINBURGH_FILL,
    EDINBURGH_TIME,
    EDINBURGH_WASTE,
    ENEVO_FULL_FRACTION,
    SYNTHETIC_COUNCIL,
    SYNTHETIC_COUNTERS,
    aberdeen_air_quality_messages,
    birmingham_parking_messages,
    edinburgh_waste_messages,
    local_rfc3339,
    synthetic_traffic_messages,
)
from civicflow.transforms.decode import Limits, decode_message

pytestmark = pytest.mark.unit
LONDON = ZoneInfo("Europe/London")


def decode_all(messages: list[tuple[str, bytes]]) -> tuple[list[dict], Counter]:
    readings, reasons = [], Counter()
    for topic, payload in messages:
        decoded = decode_message(topic.encode(), payload, Limits())
        readings.extend(decoded.readings)
        reasons.update(r.reason for r in decoded.rejections)
    return readings, reasons


def check_topics(messages: list[tuple[str, bytes]], council: str, domain: Domain) -> set[str]:
    devices = set()
    for topic in (t for t, _ in messages):
        prefix, topic_council, topic_domain, device_id = topic.split("/")
        assert (prefix, topic_council, topic_domain) == ("city", council, domain.value)
        assert is_name(device_id), device_id
        devices.add(device_id)
    return devices


def test_birmingham_parking_every_row_readings_and_quarantine():
    with BIRMINGHAM_PARKING.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    negative = sum(int(r["Occupancy"]) < 0 for r in rows)
    over = sum(int(r["Occupancy"]) > int(r["Capacity"]) for r in rows)
    messages = list(birmingham_parking_messages())

    readings, reasons = decode_all(messages)

    assert len(messages) == len(rows) == 12_474
    assert len(check_topics(messages, "birmingham", Domain.PARKING)) == len(
        {r["SystemCodeNumber"] for r in rows}
    )
    assert reasons == {Reason.OUT_OF_RANGE: negative, Reason.OCCUPIED_EXCEEDS_TOTAL: over}
    assert len(readings) == len(rows) - negative - over


def test_edinburgh_waste_fill_levels_scaled_to_the_physical_fraction():
    with EDINBURGH_WASTE.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fill = next(c for c in reader.fieldnames if c.startswith(EDINBURGH_FILL))
        rows = list(reader)
    percents = [float(r[fill]) for r in rows]  # every value in the sample is a number
    over_full_mark = sum(p > 100 for p in percents)  # more than Enevo's 100%: still within the bin
    over_capacity = sum(p * ENEVO_FULL_FRACTION > 100 or p < 0 for p in percents)
    messages = list(edinburgh_waste_messages())

    readings, reasons = decode_all(messages)

    assert len(messages) == len(rows) == 2_354
    devices = check_topics(messages, "edinburgh", Domain.WASTE)
    assert devices == {f"bin-{r['Container slot:ID']}" for r in rows}
    assert over_full_mark == 0 and over_capacity == 0  # the sensor caps at 100%
    assert reasons == Counter({Reason.OUT_OF_RANGE: over_capacity} if over_capacity else {})
    assert len(readings) == len(rows) - over_capacity
    assert [r["filling_level"] for r in readings] == pytest.approx([p * 0.008 for p in percents])
    assert max(r["filling_level"] for r in readings) == pytest.approx(0.8)
    assert sum(r["filling_level"] == pytest.approx(0.8) for r in readings) == percents.count(100.0)
    expected_times = [
        datetime.strptime(r[EDINBURGH_TIME], "%Y-%m-%d %H:%M:%S").replace(tzinfo=LONDON).astimezone(UTC)
        for r in rows
    ]
    assert [r["observed_at"] for r in readings] == expected_times
    assert [r["msg_id"] for r in readings] == [r["ID"] for r in rows]


def test_aberdeen_air_quality_every_archived_reading():
    rows = []
    for path in sorted(ABERDEEN_AIR_QUALITY.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            rows.extend(csv.DictReader(fh, delimiter=";"))
    columns = {"SDS011": ("P1", "P2"), "DHT22": ("temperature", "humidity")}
    empty = sum(all(r[c] == "" for c in columns[r["sensor_type"]]) for r in rows)
    messages = list(aberdeen_air_quality_messages())

    readings, reasons = decode_all(messages)

    assert len(messages) == len(rows) == 4_678
    devices = check_topics(messages, "aberdeen", Domain.AIR_QUALITY)
    assert devices == {"sds011-5331", "dht22-5332", "sds011-7789", "dht22-7790"}
    assert reasons == Counter({Reason.NO_MEASUREMENT: empty} if empty else {})
    assert len(readings) == len(rows) - empty
    for row, reading in zip(rows, readings, strict=True):
        assert reading["observed_at"] == datetime.fromisoformat(row["timestamp"]).replace(tzinfo=UTC)
        assert (reading["lat"], reading["lon"]) == (float(row["lat"]), float(row["lon"]))
        if row["sensor_type"] == "SDS011":
            assert (reading["pm10"], reading["pm25"]) == (float(row["P1"]), float(row["P2"]))
            assert reading["temperature"] is None
        else:
            assert reading["temperature"] == float(row["temperature"])
            assert reading["relative_humidity"] == pytest.approx(float(row["humidity"]) / 100)
            assert reading["pm10"] is None


def test_synthetic_traffic_is_deterministic_and_has_a_daily_profile():
    messages = list(synthetic_traffic_messages())

    readings, reasons = decode_all(messages)

    assert messages == list(synthetic_traffic_messages())
    assert len(messages) == 2 * 288 * len(SYNTHETIC_COUNTERS)
    devices = check_topics(messages, SYNTHETIC_COUNCIL, Domain.TRAFFIC)
    assert devices == {d for d, _, _ in SYNTHETIC_COUNTERS}
    assert reasons == Counter()
    assert len(readings) == 2 * len(messages)
    assert {(r["lane_id"], r["interval_s"]) for r in readings} == {(1, 300), (2, 300)}
    assert all(r["average_vehicle_speed"] is None for r in readings if r["intensity"] == 0)

    def hourly(day: date, hour: int, lane: int) -> int:
        return sum(
            r["intensity"]
            for r in readings
            if r["device_id"] == "radial-1"
            and r["observed_at"].date() == day
            and r["observed_at"].hour == hour
            and r["lane_id"] == lane
        )

    friday, saturday = date(2026, 3, 6), date(2026, 3, 7)
    assert hourly(friday, 8, 1) > 10 * hourly(friday, 3, 1)  # morning peak, inbound
    assert hourly(friday, 17, 2) > hourly(friday, 17, 1)  # evening peak, outbound
    assert hourly(saturday, 8, 1) < hourly(saturday, 13, 1)  # no weekend morning peak


@pytest.mark.parametrize(
    ("wall", "expected"),
    [
        ("2016-10-30T00:30:00", "2016-10-30T00:30:00+01:00"),
        ("2016-10-30T01:30:00", "2016-10-30T01:30:00"),  # happened twice: clocks went back
        ("2016-10-30T02:30:00", "2016-10-30T02:30:00+00:00"),
        ("2016-03-27T00:30:00", "2016-03-27T00:30:00+00:00"),
        ("2016-03-27T01:30:00", "2016-03-27T01:30:00"),  # never happened: clocks went forward
        ("2016-03-27T02:30:00", "2016-03-27T02:30:00+01:00"),
    ],
)
def test_local_times_that_name_no_single_instant_are_quarantined_not_guessed(wall, expected):
    stamp = local_rfc3339(datetime.fromisoformat(wall), LONDON)

    decoded = decode_message(
        b"city/edinburgh/waste/bin-1", orjson.dumps({"observed_at": stamp, "filling_level": 0.5}), Limits()
    )

    assert stamp == expected
    if expected == wall:
        assert [r.reason for r in decoded.rejections] == [Reason.TIMESTAMP_WITHOUT_OFFSET]
    else:
        assert decoded.readings[0]["observed_at"] == datetime.fromisoformat(expected).astimezone(UTC)


def test_samples_are_in_the_project_not_read_from_elsewhere():
    root = Path(__file__).resolve().parents[2] / "samples"
    for path in (BIRMINGHAM_PARKING, EDINBURGH_WASTE, ABERDEEN_AIR_QUALITY):
        assert path.is_relative_to(root) and path.exists()
