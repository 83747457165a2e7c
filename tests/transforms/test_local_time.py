"""Naive device times in a council's time zone, and the lateness horizon (docs/warehouse.md, Time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from civicflow.ingest.samples import birmingham_parking_messages
from civicflow.registry import CouncilRegistry, RegistryError, build_registry, load_registry
from civicflow.transforms.decode import Limits, decode_message

pytestmark = pytest.mark.unit
LIMITS = Limits()
LONDON = ZoneInfo("Europe/London")


def registry(**council):
    """Birmingham and Edinburgh with the given registry settings, taking any device."""
    return build_registry(
        [
            CouncilRegistry(council=name, accept_unknown_devices=True, **council)
            for name in ("birmingham", "edinburgh")
        ]
    )


def car_park(observed_at, *, reg=None, received_at=None, council="birmingham"):
    payload = orjson.dumps({"observed_at": observed_at, "occupied_spots": 61, "total_spots": 577})
    return decode_message(
        f"city/{council}/parking/bhmbccmkt01".encode(),
        payload,
        LIMITS,
        received_at=received_at,
        registry=reg,
    )


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def observed(out):
    assert [(r.reason.value, r.detail) for r in out.rejections] == []
    [reading] = out.readings
    return reading["observed_at"]


def reason(out):
    assert out.readings == []
    [rejection] = out.rejections
    return rejection.reason.value


def test_timezone_and_policies_are_read_from_the_council_file(tmp_path):
    (tmp_path / "birmingham.toml").write_text(
        'council = "birmingham"\ntimezone = "Europe/London"\nambiguous_local_time = "later"\n'
        "max_lateness_days = 7\n"
    )
    council = load_registry(tmp_path).councils["birmingham"]
    assert (council.zone, council.ambiguous_local_time, council.max_lateness_days) == (LONDON, "later", 7)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ('timezone = "Europe/Londres"\n', "'Europe/Londres' is not an IANA time zone"),
        ('timezone = "../etc/passwd"\n', "'../etc/passwd' is not an IANA time zone"),
        ('ambiguous_local_time = "earlier"\n', "ambiguous_local_time needs the timezone"),
        ('timezone = "Europe/London"\nambiguous_local_time = "first"\n', "ambiguous_local_time"),
        ("max_lateness_days = -1\n", "max_lateness_days: Input should be greater than or equal to 0"),
    ],
)
def test_bad_time_settings_fail_the_registry_with_what_to_fix(tmp_path, text, detail):
    (tmp_path / "leeds.toml").write_text('council = "leeds"\n' + text)
    with pytest.raises(RegistryError) as info:
        load_registry(tmp_path)
    assert detail in str(info.value)


def test_without_a_council_timezone_a_naive_time_is_still_quarantined():
    assert reason(car_park("2016-10-04 07:59:42")) == "timestamp_without_offset"
    assert reason(car_park("2016-10-04 07:59:42", reg=registry())) == "timestamp_without_offset"


@pytest.mark.parametrize(
    ("council", "local", "expected"),
    [
        # Birmingham's recording: the first reading (summer time) and the last (after 2016-10-30).
        ("birmingham", "2016-10-04 07:59:42", utc(2016, 10, 4, 6, 59, 42)),
        ("birmingham", "2016-10-31T16:30:47", utc(2016, 10, 31, 16, 30, 47)),
        ("edinburgh", "2016-08-09T15:46:34", utc(2016, 8, 9, 14, 46, 34)),
        ("edinburgh", "2016-01-15 09:00:00.250", utc(2016, 1, 15, 9, 0, 0, 250_000)),
        # Either side of the autumn change (2016-10-30, 02:00 BST -> 01:00 GMT).
        ("birmingham", "2016-10-30 00:59:59", utc(2016, 10, 29, 23, 59, 59)),
        ("birmingham", "2016-10-30 02:00:00", utc(2016, 10, 30, 2, 0, 0)),
        # Either side of the spring change (2016-03-27, 01:00 GMT -> 02:00 BST).
        ("edinburgh", "2016-03-27 00:59:59", utc(2016, 3, 27, 0, 59, 59)),
        ("edinburgh", "2016-03-27 02:00:00", utc(2016, 3, 27, 1, 0, 0)),
    ],
)
def test_a_naive_time_is_local_time_of_the_council_and_stored_in_utc(council, local, expected):
    at = observed(car_park(local, reg=registry(timezone="Europe/London"), council=council))
    assert at == expected
    assert at.tzinfo is UTC


def test_an_offset_still_wins_over_the_council_timezone():
    reg = registry(timezone="America/New_York")
    assert observed(car_park("2016-10-04T07:59:42+01:00", reg=reg)) == utc(2016, 10, 4, 6, 59, 42)
    assert observed(car_park("2016-10-04 07:59:42", reg=reg)) == utc(2016, 10, 4, 11, 59, 42)


@pytest.mark.parametrize("local", ["2016-10-30 01:00:00", "2016-10-30 01:30:00", "2016-10-30T01:59:59.999"])
def test_the_repeated_autumn_hour_is_quarantined_unless_the_council_chooses(local):
    out = car_park(local, reg=registry(timezone="Europe/London"))
    assert reason(out) == "ambiguous_local_time"
    assert "happens twice in Europe/London" in out.rejections[0].detail
    wall = datetime.fromisoformat(local)
    earlier, later = (
        observed(car_park(local, reg=registry(timezone="Europe/London", ambiguous_local_time=choice)))
        for choice in ("earlier", "later")
    )
    assert earlier == wall.replace(tzinfo=UTC) - timedelta(hours=1)  # 01:30 BST
    assert later == wall.replace(tzinfo=UTC)  # 01:30 GMT
    assert out.rejections[0].detail.startswith(f"observed_at '{local}' happens twice")


@pytest.mark.parametrize("choice", ["quarantine", "earlier", "later"])
@pytest.mark.parametrize("local", ["2016-03-27 01:00:00", "2016-03-27 01:30:00", "2016-03-27T01:59:59"])
def test_the_skipped_spring_hour_is_always_quarantined(local, choice):
    out = car_park(local, reg=registry(timezone="Europe/London", ambiguous_local_time=choice))
    assert reason(out) == "nonexistent_local_time"
    assert out.rejections[0].detail == (
        f"observed_at '{local}' does not exist in Europe/London: the clocks skip that hour"
    )


def test_birmingham_recording_sent_without_offsets_decodes_to_the_same_instants():
    """The real 2016 recording spans the clock change: naive times give what offsets gave."""
    reg = registry(timezone="Europe/London")
    pairs = 0
    for topic, payload in birmingham_parking_messages():
        doc = orjson.loads(payload)
        with_offset = decode_message(topic.encode(), payload, LIMITS)
        doc["observed_at"] = doc["observed_at"][:19].replace("T", " ")  # as the CSV has it
        naive = decode_message(topic.encode(), orjson.dumps(doc), LIMITS, registry=reg)
        assert [r["observed_at"] for r in naive.readings] == [r["observed_at"] for r in with_offset.readings]
        assert [r.reason for r in naive.rejections] == [r.reason for r in with_offset.rejections]
        pairs += len(naive.readings)
    assert pairs == 12474 - 42


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(2016, 1, 1), max_value=datetime(2016, 12, 31, 23, 59, 59)))
def test_every_local_time_of_2016_is_one_utc_instant_or_a_named_rejection(wall):
    out = car_park(wall.strftime("%Y-%m-%d %H:%M:%S"), reg=registry(timezone="Europe/London"))
    if out.readings:
        [r] = out.readings
        assert r["observed_at"].astimezone(LONDON).replace(tzinfo=None) == wall.replace(microsecond=0)
    else:
        [rej] = out.rejections
        expected = "nonexistent_local_time" if wall.month == 3 else "ambiguous_local_time"
        assert (rej.reason.value, wall.date().isoformat(), wall.hour) == (
            expected,
            "2016-03-27" if wall.month == 3 else "2016-10-30",
            1,
        )


@pytest.mark.parametrize(
    ("observed_at", "received_at", "late"),
    [
        ("2016-10-04T23:59:59Z", utc(2016, 10, 6, 23, 59, 59), False),  # event date 2 days before
        ("2016-10-04T00:00:00Z", utc(2016, 10, 6, 23, 59, 59), False),
        ("2016-10-03T23:59:59Z", utc(2016, 10, 6, 0, 0, 0), True),  # 3 days before
        ("2016-10-05T00:30:00+01:00", utc(2016, 10, 7, 12, 0, 0), True),  # UTC date is 2016-10-04
        ("2016-10-05 00:30:00", utc(2016, 10, 7, 12, 0, 0), True),  # local, 2016-10-04 in UTC
        ("2016-10-05T00:30:00Z", utc(2016, 10, 7, 12, 0, 0), False),
        ("2016-10-06T12:10:00Z", utc(2016, 10, 6, 12, 0, 0), False),  # ahead of its receipt, within the skew
    ],
)
def test_a_reading_beyond_the_councils_lateness_horizon_is_too_late(observed_at, received_at, late):
    reg = registry(timezone="Europe/London", max_lateness_days=2)
    out = car_park(observed_at, reg=reg, received_at=received_at)
    if late:
        assert reason(out) == "too_late"
        assert "max_lateness_days = 2" in out.rejections[0].detail
    else:
        observed(out)


def test_no_horizon_without_a_setting_or_without_a_receive_time():
    long_after = utc(2026, 3, 2, 8, 0, 0)
    assert observed(car_park("2016-10-04T07:59:42Z", reg=registry(), received_at=long_after))
    assert observed(car_park("2016-10-04T07:59:42Z", received_at=long_after))
    reg = registry(max_lateness_days=0)
    assert observed(car_park("2016-10-04T07:59:42Z", reg=reg))
    assert reason(car_park("2016-10-04T07:59:42Z", reg=reg, received_at=long_after)) == "too_late"
    assert observed(car_park("2026-03-02T00:00:00Z", reg=reg, received_at=long_after))


def test_a_late_lorawan_uplink_is_too_late_for_its_council(tmp_path):
    lorawan = Path(__file__).resolve().parents[2] / "samples" / "lorawan"
    text = (lorawan / "registry" / "example.toml").read_text()
    (tmp_path / "example.toml").write_text("max_lateness_days = 30\n" + text)
    reg = load_registry(tmp_path)
    uplink = (lorawan / "tts_v3_milesight_am319.json").read_bytes()
    topic = b"v3/application-tts-name@ttn/devices/eui-1000000000000001/up"
    on_time = decode_message(topic, uplink, LIMITS, received_at=utc(2023, 5, 19, 5, 33, 36), registry=reg)
    assert observed(on_time) == datetime(2023, 5, 19, 5, 33, 35, 641841, tzinfo=UTC)
    late = decode_message(topic, uplink, LIMITS, received_at=utc(2023, 6, 19, 0, 0, 0), registry=reg)
    assert reason(late) == "too_late"
    assert late.rejections[0].device_id == "am319-1"


@pytest.mark.parametrize(
    ("value", "zone"),
    [
        ("0001-01-01T00:00:00+01:00", None),
        ("0001-01-01 00:00:00", "Asia/Tokyo"),
        ("9999-12-31 23:59:59", "America/New_York"),
    ],
)
def test_a_time_that_leaves_the_calendar_in_utc_is_invalid_not_a_crash(value, zone):
    reg = registry(timezone=zone) if zone else None
    out = car_park(value, reg=reg)
    assert reason(out) == "timestamp_out_of_range"
    assert out.rejections[0].detail.startswith(f"observed_at {value!r} is outside the contract's window")
