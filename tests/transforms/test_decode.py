"""The wire contract v1 (docs/mqtt-contract.md), one case per rule."""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from civicflow.contract import Reason
from civicflow.ingest.samples import birmingham_parking_messages
from civicflow.registry import load_registry
from civicflow.transforms.decode import Limits, decode_message
from civicflow.wire import FEEDBACK_LEVEL as FEEDBACK
from civicflow.wire import feedback_topic, is_bad_topic, topic_format

pytestmark = pytest.mark.unit
LIMITS = Limits()
TOPIC = b"city/birmingham/parking/bhmbccmkt01"
NESTED_33: object = 1
for _ in range(32):
    NESTED_33 = [NESTED_33]  # inside a reading object: 33 levels


def decode(payload, topic: bytes = TOPIC, limits: Limits = LIMITS):
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return decode_message(topic, raw, limits)


def test_car_park_reading_with_offset_is_converted_to_utc():
    out = decode(
        {
            "observed_at": "2016-10-04T07:59:42+01:00",
            "occupied_spots": 61,
            "total_spots": 577,
            "msg_id": "a1",
            "lat": 52.48,
            "lon": -1.89,
        }
    )
    assert out.rejections == []
    [r] = out.readings
    assert r["council"] == "birmingham" and r["device_id"] == "bhmbccmkt01"
    assert r["observed_at"] == datetime(2016, 10, 4, 6, 59, 42, tzinfo=UTC)
    assert r["event_date"].isoformat() == "2016-10-04"
    assert (r["occupied_spots"], r["total_spots"], r["status"]) == (61, 577, None)
    assert r["occupancy"] == pytest.approx(61 / 577)
    assert (r["msg_id"], r["lat"], r["lon"]) == ("a1", 52.48, -1.89)


def test_bay_sensor_reading_with_status_and_epoch_seconds():
    out = decode({"observed_at": 1475564382, "status": "occupied"})
    [r] = out.readings
    assert r["status"] == "occupied" and r["occupied_spots"] is None and r["occupancy"] is None
    assert r["observed_at"] == datetime(2016, 10, 4, 6, 59, 42, tzinfo=UTC)


def test_batch_keeps_good_readings_and_quarantines_bad_ones_with_their_index():
    out = decode(
        [
            {"observed_at": "2016-10-04T06:59:42Z", "occupied_spots": 1, "total_spots": 5},
            {"observed_at": "2016-10-04T07:29:42Z", "occupied_spots": 9, "total_spots": 5},
            {"observed_at": "2016-10-04T07:59:42.123456Z", "occupied_spots": 2, "total_spots": 5},
        ]
    )
    assert [r["reading_index"] for r in out.readings] == [0, 2]
    assert out.readings[1]["observed_at"].microsecond == 123456
    [rej] = out.rejections
    assert (rej.reason, rej.reading_index) == (Reason.OCCUPIED_EXCEEDS_TOTAL, 1)
    assert orjson.loads(rej.payload)["occupied_spots"] == 9


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (
            {"observed_at": "2016-10-04T06:59:42Z", "occupied_spots": -3, "total_spots": 480},
            Reason.OUT_OF_RANGE,
            "occupied_spots -3 is below 0",
        ),
        (
            {"observed_at": "2016-10-04T06:59:42Z", "occupied_spots": 320, "total_spots": 317},
            Reason.OCCUPIED_EXCEEDS_TOTAL,
            "occupied_spots 320 exceeds total_spots 317",
        ),
        (
            {"observed_at": "2016-10-04T06:59:42Z", "occupied_spots": 3, "total_spots": 0},
            Reason.OUT_OF_RANGE,
            "total_spots 0 is below 1",
        ),
        (
            {"observed_at": "2016-10-04T06:59:42Z", "occupied_spots": 3},
            Reason.MISSING_FIELD,
            "car park reading has no total_spots",
        ),
        ({"observed_at": "2016-10-04T06:59:42Z"}, Reason.NO_MEASUREMENT, "parking reading carries none"),
        ({"occupied_spots": 3, "total_spots": 5}, Reason.MISSING_FIELD, "no observed_at"),
        (
            {"observed_at": "2016-10-04 07:59:42", "occupied_spots": 3, "total_spots": 5},
            Reason.TIMESTAMP_WITHOUT_OFFSET,
            "has no UTC offset",
        ),
        (
            {"observed_at": "04/10/2016 07:59", "occupied_spots": 3, "total_spots": 5},
            Reason.INVALID_TIMESTAMP,
            "is not RFC 3339",
        ),
        (
            {"observed_at": 1475564382000, "occupied_spots": 3, "total_spots": 5},
            Reason.TIMESTAMP_OUT_OF_RANGE,
            "between 1970 and 3000",
        ),
        (
            {"observed_at": "2016-10-04T06:59:42Z", "occupied_spots": "3", "total_spots": 5},
            Reason.INVALID_TYPE,
            "occupied_spots must be an integer",
        ),
        (
            {"observed_at": "2016-10-04T06:59:42Z", "occupied_spots": 2.5, "total_spots": 5},
            Reason.INVALID_TYPE,
            "occupied_spots must be an integer",
        ),
        (
            {"observed_at": "2016-10-04T06:59:42Z", "occupied_spots": True, "total_spots": 5},
            Reason.INVALID_TYPE,
            "occupied_spots must be an integer",
        ),
        (
            {"observed_at": "2016-10-04T06:59:42Z", "status": "reserved"},
            Reason.INVALID_VALUE,
            "status 'reserved' is not one of",
        ),
        (
            {"observed_at": "2016-10-04T06:59:42Z", "status": "free", "colour": "red"},
            Reason.UNKNOWN_FIELD,
            "colour",
        ),
        (
            {"observed_at": "2016-10-04T06:59:42Z", "status": "free", "lat": 52.4},
            Reason.MISSING_FIELD,
            "lat and lon come together",
        ),
        (
            {"observed_at": "2016-10-04T06:59:42Z", "status": "free", "lat": 95, "lon": 1},
            Reason.OUT_OF_RANGE,
            "lat 95.0 is above 90",
        ),
        ("just a string", Reason.NOT_AN_OBJECT, "JSON object or an array"),
        ([], Reason.EMPTY_BATCH, "empty"),
        ([1], Reason.NOT_AN_OBJECT, "got int"),
        (b"{not json", Reason.NOT_JSON, "not JSON"),
        (b"\xff\xfe{}", Reason.NOT_UTF8, "not UTF-8"),
        (b"[" * 5000 + b"]" * 5000, Reason.JSON_TOO_DEEP, "deeper than 32 levels"),
        (b"[" * 33 + b"]" * 33, Reason.JSON_TOO_DEEP, "deeper than 32 levels"),
        ({"observed_at": 1, "status": NESTED_33}, Reason.JSON_TOO_DEEP, "deeper than 32"),
    ],
)
def test_each_invalid_input_is_rejected_with_its_reason(payload, reason, detail):
    out = decode(payload)
    assert out.readings == []
    [rej] = out.rejections
    assert rej.reason == reason
    assert detail in rej.detail
    assert rej.payload  # the refused bytes are kept


@pytest.mark.parametrize(
    ("topic", "detail"),
    [
        (b"city/birmingham/parking", "is not city/<council>/<domain>/<device_id>"),
        (b"town/birmingham/parking/p1", "is not city/<council>/<domain>/<device_id>"),
        (b"city/Birmingham/parking/p1", "council 'Birmingham' must match"),
        (b"city/birmingham/parking/../../etc", "is not city/"),
        (b"city/birmingham/parking/..", "device_id '..' must match"),
        (b"city/birmingham/bikes/p1", "domain 'bikes' is not one of"),
        (b"city/birmingham/parking/p\xff", "topic is not UTF-8"),
        (b"city/birmingham/parking/" + b"a" * 65, "must match"),
    ],
)
def test_bad_topics_are_quarantined_before_anything_else(topic, detail):
    out = decode({"observed_at": "2016-10-04T06:59:42Z", "status": "free"}, topic=topic)
    [rej] = out.rejections
    assert rej.reason == Reason.BAD_TOPIC
    assert detail in rej.detail


def test_limits_on_size_and_batch_length():
    small = Limits(max_payload_bytes=100, max_batch_readings=2)
    big = {"observed_at": "2016-10-04T06:59:42Z", "status": "free", "msg_id": "x" * 150}
    assert decode(big, limits=small).rejections[0].reason == Reason.PAYLOAD_TOO_LARGE
    batch = [{"observed_at": 1, "status": "free"}] * 3
    two = Limits(max_payload_bytes=1000, max_batch_readings=2)
    assert decode(batch, limits=two).rejections[0].reason == Reason.BATCH_TOO_LARGE
    assert len(decode(batch[:2], limits=two).readings) == 2


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        (
            b"city/leeds/traffic/a64-york-rd",
            {"observed_at": "2026-03-02T08:00:00Z", "intensity": 212, "average_vehicle_speed": 41.5},
            {"intensity": 212, "average_vehicle_speed": 41.5, "occupancy": None, "interval_s": 300},
        ),
        (
            b"city/leeds/traffic/a64-york-rd",
            {"observed_at": 1772438400, "occupancy": 0.25, "interval_s": 60, "lane_id": 2},
            {"occupancy": 0.25, "interval_s": 60, "lane_id": 2, "intensity": None},
        ),
        (
            b"city/aberdeen/air_quality/union-st",
            {"observed_at": "2026-03-02T08:00:00Z", "pm10": 18, "pm25": 7.5, "relative_humidity": 0.81},
            {"pm10": 18.0, "pm25": 7.5, "relative_humidity": 0.81, "no2": None, "co": None},
        ),
        (
            b"city/edinburgh/waste/bin-1",
            {"observed_at": 1, "filling_level": 0.4, "temperature": 11.5, "status": "lidOpen"},
            {"filling_level": 0.4, "temperature": 11.5, "status": "lidOpen"},
        ),
        (
            b"city/birmingham/parking/bay-12",
            {"observed_at": 1, "status": "occupied"},
            {"status": "occupied", "occupied_spots": None, "occupancy": None},
        ),
    ],
)
def test_a_valid_reading_of_each_domain(topic, payload, expected):
    out = decode(payload, topic=topic)
    assert out.rejections == []
    [reading] = out.readings
    assert {k: reading[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "detail"),
    [
        (b"city/leeds/traffic/a64", {"observed_at": 1, "intensity": -1}, Reason.OUT_OF_RANGE, "below 0"),
        (b"city/leeds/traffic/a64", {"observed_at": 1, "occupancy": 1.2}, Reason.OUT_OF_RANGE, "above 1"),
        (
            b"city/leeds/traffic/a64",
            {"observed_at": 1, "intensity": 2**63},
            Reason.OUT_OF_RANGE,
            "intensity 9223372036854775808 does not fit a 64-bit integer",
        ),
        (b"city/leeds/traffic/a64", {"observed_at": 1, "interval_s": 60}, Reason.NO_MEASUREMENT, "none of"),
        (b"city/abdn/air_quality/x", {"observed_at": 1, "pm10": -2}, Reason.OUT_OF_RANGE, "pm10 -2.0"),
        (b"city/abdn/air_quality/x", {"observed_at": 1, "nox": 2}, Reason.UNKNOWN_FIELD, "nox"),
        (b"city/edin/waste/bin-1", {"observed_at": 1, "filling_level": 40}, Reason.OUT_OF_RANGE, "above 1"),
        (b"city/edin/waste/bin-1", {"observed_at": 1, "status": "full"}, Reason.INVALID_VALUE, "'full'"),
    ],
)
def test_domain_rules_quarantine_with_reasons(topic, payload, reason, detail):
    out = decode(payload, topic=topic)
    assert out.readings == []
    [rej] = out.rejections
    assert (rej.reason, rej.domain) == (reason, topic.split(b"/")[2].decode())
    assert detail in rej.detail


def test_birmingham_sample_mess_is_quarantined_with_reasons():
    reasons: collections.Counter = collections.Counter()
    readings = 0
    for topic, payload in birmingham_parking_messages():
        out = decode_message(topic.encode(), payload, LIMITS)
        readings += len(out.readings)
        reasons.update(r.reason.value for r in out.rejections)
    assert reasons == {"occupied_exceeds_total": 33, "out_of_range": 9}
    assert readings == 12474 - 42


@settings(max_examples=300, deadline=None)
@given(topic=st.binary(max_size=80), payload=st.binary(max_size=400))
def test_any_bytes_yield_readings_or_rejections_never_an_exception(topic, payload):
    out = decode_message(topic, payload, LIMITS)
    assert (
        out.readings or out.rejections or topic_format(topic.decode("utf-8", "replace"), "city") == FEEDBACK
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["observed_at", "occupied_spots", "total_spots", "status", "lat", "lon", "msg_id", "x"]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(doc=json_values)
def test_any_json_document_yields_readings_or_rejections(doc):
    try:
        raw = orjson.dumps(doc)
    except orjson.JSONEncodeError:
        return
    out = decode_message(TOPIC, raw, LIMITS)
    assert out.readings or out.rejections
    for r in out.readings:
        assert r["observed_at"].tzinfo is UTC


GATEWAY_TOPICS = [
    b"city/aberdeen/air_quality/union-st/senml",
    b"city/birmingham/parking/bhmbccmkt01/senml",
    b"v3/application-tts-name@ttn/devices/eui-1000000000000005/up",
    b"v3/test-decentlab@ttn/devices/03022/up",
    b"application/0b1f5c3e-7d2a-4c8e-9f61-3a5d2e8b4c17/device/24e1247100000007/event/up",
]
SAMPLE_REGISTRY = load_registry(Path(__file__).resolve().parents[2] / "samples" / "lorawan" / "registry")
gateway_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["bn", "bt", "bu", "bv", "bver", "n", "u", "v", "vs", "vb", "t", "x_"]
                + ["end_device_ids", "device_id", "application_ids", "application_id", "dev_eui"]
                + ["uplink_message", "decoded_payload", "received_at", "f_cnt", "correlation_ids"]
                + ["deviceInfo", "devEui", "applicationId", "object", "time", "deduplicationId", "fCnt"]
                + ["distance", "occupied", "pm2_5", "temperature", "humidity"]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=16,
)


@settings(max_examples=400, deadline=None)
@given(topic=st.sampled_from(GATEWAY_TOPICS), doc=gateway_values, payload=st.binary(max_size=200))
def test_gateway_formats_never_raise_on_any_document_or_bytes(topic, doc, payload):
    for raw in (orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS), payload):
        for registry in (None, SAMPLE_REGISTRY):
            out = decode_message(
                topic, raw, LIMITS, received_at=datetime(2026, 3, 2, tzinfo=UTC), registry=registry
            )
            assert out.readings or out.rejections
            for r in out.readings:
                assert r["observed_at"].tzinfo is UTC


@settings(max_examples=200, deadline=None)
@given(
    tail=st.lists(
        st.sampled_from(["a", "senml", "up", "event", "devices", "x@y", "", "feedback"]), max_size=5
    ),
    head=st.sampled_from(["city", "v3", "application", "town"]),
)
def test_strict_topics_of_every_format_yield_a_reading_or_a_rejection(head, tail):
    """...except Civicflow's own feedback topics, which yield nothing at all."""
    topic = "/".join([head, *tail]).encode()
    out = decode_message(topic, b'{"observed_at": 1, "status": "free"}', LIMITS, registry=SAMPLE_REGISTRY)
    if head == "city" and len(tail) == 4 and tail[3] == "feedback":
        assert (out.readings, out.rejections) == ([], [])
    else:
        assert out.readings or out.rejections


def test_a_feedback_topic_is_neither_a_reading_nor_a_rejection_and_names_its_device():
    """Summaries Civicflow publishes to gateways, were one ever landed, are not quarantine noise."""
    payload = b'{"observed_at": "2026-03-02T08:00:00Z", "occupied_spots": 1, "total_spots": 2}'
    out = decode_message(b"city/leeds/parking/p1/feedback", payload, LIMITS)
    assert (out.readings, out.rejections) == ([], [])
    assert not is_bad_topic("city/leeds/parking/p1/feedback", "city")
    assert is_bad_topic("city/leeds/parking/p1/feedbacks", "city")
    assert feedback_topic("town", "leeds", "parking", "p1") == "town/leeds/parking/p1/feedback"
    with pytest.raises(ValueError, match="not contract names"):
        feedback_topic("city", "Leeds!", "parking", "p1")
