"""Hostile and careless input the contract refuses, each with its own reason, on both decoders.

Every case here was accepted once (or resolved silently) and is refused now: times outside the
contract's window or from the future, offsets and dates the calendar does not have, repeated
JSON keys, names with a trailing newline. The reference decoder (`decode_message`) says why;
the fast path (`SegmentDecoder`) must give exactly the same staged rows and quarantine rows,
for these cases, for generated variants of them, and for mutations of the real samples.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import orjson
import pytest
from factories import LIMITS, land
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from test_fast_path import RECEIVED_NS, decode_both, fast_accepted, segment_bytes

from civicflow.contract import CLOCK_SKEW_MAX_S, EPOCH_MAX, OBSERVED_FROM, Reason, is_name
from civicflow.ingest.samples import birmingham_parking_messages, edinburgh_waste_messages
from civicflow.registry import CouncilRegistry, load_registry
from civicflow.settings import Settings
from civicflow.transforms.decode import decode_message
from civicflow.transforms.stage import stage_segments

RECEIVED = datetime.fromtimestamp(RECEIVED_NS / 1e9, tz=UTC)  # 2026-03-06T12:26:40Z
PARKING = "city/leeds/parking/p1"
OBS = b'"observed_at":"2026-03-01T00:00:00Z"'


def park(observed_at, **extra) -> bytes:
    return orjson.dumps({"observed_at": observed_at, "occupied_spots": 5, "total_spots": 600, **extra})


def outcome(topic: bytes, payload: bytes, registry=None) -> tuple[int, list[str]]:
    out = decode_message(topic, payload, LIMITS, received_at=RECEIVED, registry=registry)
    return len(out.readings), [r.reason.value for r in out.rejections]


TIME_CASES = [
    ("0001-01-01T00:00:00Z", Reason.TIMESTAMP_OUT_OF_RANGE),
    ("9999-12-31T23:59:59Z", Reason.TIMESTAMP_OUT_OF_RANGE),
    ("1969-12-31T23:59:59Z", Reason.TIMESTAMP_OUT_OF_RANGE),
    ("1970-01-01T00:30:00+01:00", Reason.TIMESTAMP_OUT_OF_RANGE),  # 1969 in UTC
    ("2999-12-31T23:59:59-00:01", Reason.TIMESTAMP_OUT_OF_RANGE),  # 3000 in UTC
    ("0000-01-01T00:00:00Z", Reason.TIMESTAMP_OUT_OF_RANGE),
    (-1, Reason.TIMESTAMP_OUT_OF_RANGE),
    (EPOCH_MAX, Reason.TIMESTAMP_OUT_OF_RANGE),
    (1_772_800_000_000, Reason.TIMESTAMP_OUT_OF_RANGE),  # milliseconds
    ("2026-03-01T00:00:00+01:60", Reason.INVALID_OFFSET),  # Python reads it as +02:00
    ("2026-03-01T00:00:00+24:00", Reason.INVALID_OFFSET),
    ("2026-03-01T00:00:00-99:99", Reason.INVALID_OFFSET),
    ("2023-02-29T00:00:00Z", Reason.INVALID_DATE),
    ("2026-04-31T00:00:00Z", Reason.INVALID_DATE),
    ("2026-13-01T00:00:00Z", Reason.INVALID_DATE),
    ("2026-00-10T00:00:00Z", Reason.INVALID_DATE),
    ("2026-03-01T24:00:00Z", Reason.INVALID_DATE),
    ("2016-12-31T23:59:60Z", Reason.INVALID_DATE),  # a leap second
    ("2026-03-01T00:60:00Z", Reason.INVALID_DATE),
    ("2026-03-01T00:00:00Z\n", Reason.INVALID_TIMESTAMP),  # `$` matched before the newline
    ("٢٠٢٦-03-01T00:00:00Z", Reason.INVALID_TIMESTAMP),  # Arabic-Indic digits: `\d` took them
    ("2026-03-06T12:36:41Z", Reason.FUTURE_TIMESTAMP),  # 10 min 1 s after receipt
    ("2030-01-01T00:00:00Z", Reason.FUTURE_TIMESTAMP),
    (1_900_000_000, Reason.FUTURE_TIMESTAMP),
]


@pytest.mark.unit
@pytest.mark.parametrize(("observed_at", "reason"), TIME_CASES)
def test_a_time_the_contract_does_not_allow_is_refused_with_its_own_reason(observed_at, reason):
    assert outcome(PARKING.encode(), park(observed_at)) == (0, [reason.value])


@pytest.mark.unit
def test_the_clock_skew_allowance_is_inclusive_and_judged_against_the_receive_time():
    edge = datetime.fromtimestamp(RECEIVED.timestamp() + CLOCK_SKEW_MAX_S, tz=UTC)
    assert outcome(PARKING.encode(), park(edge.isoformat())) == (1, [])
    # without a receive time (a decoder used on its own) there is nothing to judge against
    out = decode_message(PARKING.encode(), park("2030-01-01T00:00:00Z"), LIMITS)
    assert len(out.readings) == 1


@pytest.mark.unit
@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        (PARKING, b"{" + OBS + b',"occupied_spots":5,"occupied_spots":500,"total_spots":600}', (0, ["duplicate_key"])),  # noqa: E501
        (PARKING, b"{" + OBS + b',"observed_at":"2026-03-02T00:00:00Z","status":"free"}', (0, ["duplicate_key"])),  # noqa: E501
        # one reading of a batch: that reading alone
        (PARKING, b"[{" + OBS + b',"status":"free"},{"observed_at":"2026-03-01T01:00:00Z","status":"free","status":"closed"}]', (1, ["duplicate_key"])),  # noqa: E501
        # a key that only looks repeated: inside a string, or with an escape
        (PARKING, b"{" + OBS + b',"status":"free","msg_id":"\\"status\\":"}', (1, [])),
        (PARKING, b"{" + OBS + b',"status":"free","st\\u0061tus":"closed"}', (0, ["duplicate_key"])),
        # a SenML pack: the whole pack
        ("city/leeds/air_quality/a1/senml", b'[{"bt":1772700000,"n":"no2","n":"pm10","u":"ug/m3","v":1}]', (0, ["duplicate_key"])),  # noqa: E501
    ],
)  # fmt: skip
def test_a_repeated_json_key_refuses_the_reading_instead_of_keeping_the_last_value(topic, payload, expected):
    assert outcome(topic.encode(), payload) == expected


@pytest.mark.unit
def test_the_bytes_of_a_reading_with_a_repeated_key_are_kept_as_sent():
    payload = b"[{" + OBS + b',"status":"free","status":"closed"}]'
    out = decode_message(PARKING.encode(), payload, LIMITS, received_at=RECEIVED)
    assert out.rejections[0].payload == payload  # orjson's parse would have kept only "closed"
    assert "key 'status' appears more than once" in out.rejections[0].detail


@pytest.mark.unit
@pytest.mark.parametrize(
    "topic",
    [
        b"city/nl\n/parking/d1",
        b"city/nl/parking/d1\n",
        b"city/nl/parking/d1\n/senml",
        b"city/nl/parking/d1/senml\n",
        b"city/n\xc3\xa9/parking/d1",
        b"city/nl/parking/\xd9\xa2",
        b"city/../parking/d1",
        b"v3/app@ttn/devices/dev-1/up\n",
        b"application/app/device/0011223344556677/event/up\n",
    ],
)
def test_a_name_with_anything_after_it_is_a_bad_topic(topic):
    assert outcome(topic, park("2026-03-01T00:00:00Z")) == (0, ["bad_topic"])


@pytest.mark.unit
def test_names_are_matched_in_full_everywhere():
    assert is_name("nl") and not is_name("nl\n") and not is_name("a..b") and not is_name("")
    with pytest.raises(ValidationError):
        CouncilRegistry(council="nl\n")
    with pytest.raises(ValidationError):
        Settings(mqtt={"topic_prefix": "city\n"})


LORAWAN_REGISTRY = """council = "leeds"
accept_unknown_devices = true

[[applications]]
tts = "application-tts-name@ttn"
domain = "air_quality"
model = "milesight_am319"
"""


def uplink(device_id: str, dev_eui: str | None) -> bytes:
    doc = orjson.loads((LIMITS_SAMPLES / "tts_v3_milesight_am319.json").read_bytes())
    doc["end_device_ids"]["device_id"] = device_id
    if dev_eui is None:
        doc["end_device_ids"].pop("dev_eui")
    else:
        doc["end_device_ids"]["dev_eui"] = dev_eui
    return orjson.dumps(doc)


LIMITS_SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "lorawan"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("device", "dev_eui", "expected"),
    [
        ("a..b", None, (0, ["unknown_device"])),  # was taken as device id 'a..b'
        ("a..b", "70B3D57BA0000BCE", (1, [])),  # named by its DevEUI instead
        ("sensor-7", None, (1, [])),
        ("sensor-7", "70B3D57BA0000BCE\n", (0, ["invalid_value"])),
    ],
)
def test_an_unknown_lorawan_device_id_becomes_a_name_only_if_it_is_one(tmp_path, device, dev_eui, expected):
    (tmp_path / "leeds.toml").write_text(LORAWAN_REGISTRY)
    registry = load_registry(tmp_path)
    topic = f"v3/application-tts-name@ttn/devices/{device}/up".encode()
    out = decode_message(topic, uplink(device, dev_eui), LIMITS, received_at=RECEIVED, registry=registry)
    assert (len(out.readings), [r.reason.value for r in out.rejections]) == expected
    for reading in out.readings:
        assert is_name(reading["device_id"])


# -- both decoders agree --------------------------------------------------------------------------


def hostile_messages() -> list[tuple[str, bytes]]:
    msgs = [(f"city/leeds/parking/t{i}", park(t)) for i, (t, _) in enumerate(TIME_CASES)]
    msgs += [
        (PARKING, b"{" + OBS + b',"occupied_spots":5,"occupied_spots":500,"total_spots":600}'
        ),
        (PARKING, b"{" + OBS + b',"occupied_spots":5,"total_spots":600}'),
        ("city/leeds/parking/p1\n", park("2026-03-01T00:00:00Z")),
    ]  # fmt: skip
    return msgs


@pytest.mark.unit
def test_both_decoders_refuse_the_hostile_cases_alike():
    msgs = hostile_messages()
    data = segment_bytes(msgs, ns=RECEIVED_NS)
    fast, reference = decode_both(data)
    assert fast == reference
    assert fast_accepted(data) == 1  # the one good reading
    assert len(fast[1]) == len(msgs) - 1
    assert sum(len(rows) for rows in fast[0].values()) == 1


EDGE_DATES = st.sampled_from(
    ["0001-01-01", "1969-12-31", "1970-01-01", "2016-02-29", "2023-02-29", "2024-02-29", "2026-03-06",
     "2026-03-07", "2999-12-31", "3000-01-01", "9999-12-31", "2026-04-31", "2026-13-01", "2026-00-01"]
)  # fmt: skip
EDGE_CLOCKS = st.sampled_from(
    ["00:00:00", "12:26:40", "12:36:40", "12:36:41", "23:59:59", "23:59:60", "24:00:00"]
)
EDGE_OFFSETS = st.sampled_from(
    ["Z", "z", "+00:00", "-00:00", "+01:60", "+23:59", "-23:59", "+24:00", "+14:00"]
)


@pytest.mark.unit
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(EDGE_DATES, EDGE_CLOCKS, st.sampled_from(["", ".999999", ".5"]), EDGE_OFFSETS),
        min_size=1,
        max_size=12,
    )
)
def test_calendar_edges_decode_alike_and_nothing_outside_the_window_is_accepted(times):
    texts = [f"{d}T{c}{f}{o}" for d, c, f, o in times]
    data = segment_bytes([(f"city/leeds/parking/e{i}", park(t)) for i, t in enumerate(texts)], ns=RECEIVED_NS)
    fast, reference = decode_both(data)
    assert fast == reference
    latest = RECEIVED + timedelta(seconds=CLOCK_SKEW_MAX_S)
    for text in texts:
        out = decode_message(PARKING.encode(), park(text), LIMITS, received_at=RECEIVED)
        for reading in out.readings:
            assert OBSERVED_FROM <= reading["observed_at"] <= latest, text


def mutate(payload: bytes, how: int) -> bytes:
    """The real samples made hostile: a repeated key, a time off the calendar or out of the window."""
    doc = orjson.loads(payload)
    text = payload.decode()
    key = next(k for k in doc if k != "observed_at")
    return [
        lambda: text[:-1].encode() + b"," + orjson.dumps(key) + b":" + orjson.dumps(doc[key]) + b"}",
        lambda: orjson.dumps({**doc, "observed_at": "0001-01-01T00:00:00Z"}),
        lambda: orjson.dumps({**doc, "observed_at": doc["observed_at"][:19] + "+01:60"}),
        lambda: orjson.dumps({**doc, "observed_at": "2999-12-31T23:59:59Z"}),
        lambda: orjson.dumps({**doc, "observed_at": doc["observed_at"] + "\n"}),
    ][how]()


@pytest.mark.unit
def test_the_real_samples_made_hostile_are_refused_alike_by_both_decoders():
    samples = [*islice(birmingham_parking_messages(), 150), *islice(edinburgh_waste_messages(), 150)]
    msgs = []
    for i, (topic, payload) in enumerate(samples):
        msgs.append((topic, payload))
        msgs.append((topic, mutate(payload, i % 5)))
    data = segment_bytes(msgs, ns=RECEIVED_NS)
    fast, reference = decode_both(data)
    assert fast == reference
    staged = sum(len(rows) for rows in fast[0].values())
    assert staged == len(samples)  # every original, none of the mutants
    assert len(fast[1]) == len(samples)


def test_out_of_window_readings_never_reach_the_staged_zone(wh):
    layout, con = wh
    land(
        layout,
        [
            (PARKING, park("2026-03-01T00:00:00Z")),
            (PARKING, park("9999-12-31T23:59:59Z")),
            (PARKING, park("2030-01-01T00:00:00Z")),
            (PARKING, park("2026-03-01T00:00:00+01:60")),
        ],
        received_at_ns=RECEIVED_NS,
    )
    result = stage_segments(layout, con, LIMITS)
    assert result.changed_partitions == [("parking", "leeds", "2026-03-01")]
    assert con.execute("SELECT count(*), max(observed_at) FROM staged.parking").fetchone()[0] == 1
    assert sorted(r for (r,) in con.execute("SELECT reason FROM quarantine.readings").fetchall()) == [
        "future_timestamp",
        "invalid_offset",
        "timestamp_out_of_range",
    ]


@pytest.mark.unit
def test_a_required_field_sent_as_null_is_refused_not_staged_empty():
    payload = b'{"observed_at": "2026-03-01T00:00:00Z", "intensity": 5, "interval_s": null}'
    out = decode_message(b"city/leeds/traffic/c1", payload, LIMITS, received_at=RECEIVED)
    assert [(r.reason, r.detail) for r in out.rejections] == [
        (Reason.INVALID_TYPE, "interval_s is null: send a value of type integer, or leave it out for 300")
    ]


def test_a_fault_of_the_decoder_quarantines_one_message_and_stages_the_rest(wh, monkeypatch):
    import civicflow.transforms.fast

    real = civicflow.transforms.fast.decode_message

    def faulty(topic, payload, *args, **kwargs):
        if topic.startswith(b"city/york/"):
            raise RecursionError("a decoder bug")
        return real(topic, payload, *args, **kwargs)

    monkeypatch.setattr(civicflow.transforms.fast, "decode_message", faulty)
    layout, con = wh
    batch = b"[" + park("2026-03-01T00:00:00Z") + b"]"  # a batch: the reference decodes it
    land(
        layout,
        [("city/york/parking/p1", batch), (PARKING, park("2026-03-01T00:00:00Z"))],
        received_at_ns=RECEIVED_NS,
    )
    result = stage_segments(layout, con, LIMITS)
    assert result.changed_partitions == [("parking", "leeds", "2026-03-01")]
    assert con.execute("SELECT reason, topic, payload FROM quarantine.readings").fetchall() == [
        ("decoder_error", "city/york/parking/p1", batch)
    ]


@pytest.mark.unit
def test_the_fast_path_says_loudly_when_it_hands_a_dataset_to_the_reference(monkeypatch, caplog):
    import dataclasses

    import civicflow.transforms.fast
    from civicflow.contract import DATASETS, Column, Domain

    parking = DATASETS[Domain.PARKING]
    extra = Column("free_spots", "integer", "Spots free.", minimum=0)
    changed = dataclasses.replace(parking, derived=(*parking.derived, extra))
    assert civicflow.transforms.fast.unsupported(parking) is None
    assert (
        civicflow.transforms.fast.unsupported(changed) == "it does not compute derived column(s) free_spots"
    )
    monkeypatch.setattr(civicflow.transforms.fast, "DATASETS", {**DATASETS, Domain.PARKING: changed})
    monkeypatch.setattr(civicflow.transforms.fast, "_warned", set())
    with caplog.at_level("WARNING", logger="civicflow.transforms.fast"):
        decoder = civicflow.transforms.fast.SegmentDecoder(LIMITS, None)
    decoder.close()
    assert Domain.PARKING not in decoder._domains
    [record] = [r for r in caplog.records if "fast path is off for parking" in r.getMessage()]
    assert record.levelname == "WARNING" and "free_spots" in record.getMessage()
