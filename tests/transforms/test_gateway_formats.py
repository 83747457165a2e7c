"""Gateway formats (docs/mqtt-contract.md, Gateway formats): SenML, The Things Stack v3, ChirpStack v4.

The Things Stack cases are real uplinks (samples/lorawan/, samples/NOTICE.md) decoded with the
sample registry; ChirpStack has no real sample, so its event is built from the v4 event schema.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from civicflow.contract import Reason
from civicflow.registry import CouncilRegistry, build_registry, load_registry
from civicflow.transforms.decode import Limits, decode_message

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
LORAWAN = ROOT / "samples" / "lorawan"
REGISTRY = load_registry(LORAWAN / "registry")
LIMITS = Limits()
T0 = 1772438400  # 2026-03-02T08:00:00Z
RECEIVED = datetime(2026, 3, 2, 8, 0, 5, tzinfo=UTC)
NS_UPLINK = "01H0S7ZJGS9KKD4HTTPKFEMWCV"  # the ns:uplink correlation id of the Milesight/Nwave/Bosch samples


def sample(name: str) -> tuple[bytes, bytes]:
    """A sample uplink file and the topic The Things Stack publishes it on."""
    raw = (LORAWAN / name).read_bytes()
    ids = orjson.loads(raw)["end_device_ids"]
    return f"v3/{ids['application_ids']['application_id']}@ttn/devices/{ids['device_id']}/up".encode(), raw


def only_reading(out):
    assert out.rejections == []
    [reading] = out.readings
    return reading


def only_rejection(out):
    assert out.readings == []
    [rejection] = out.rejections
    return rejection


# --- SenML (RFC 8428) -------------------------------------------------------------------------

SENML_AIR = b"city/aberdeen/air_quality/union-st/senml"


def senml(pack, topic: bytes = SENML_AIR, received_at=RECEIVED, registry=None):
    return decode_message(topic, orjson.dumps(pack), LIMITS, received_at=received_at, registry=registry)


def test_senml_pack_resolves_base_fields_and_groups_records_by_time():
    out = senml(
        [
            {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": T0, "bu": "ug/m3", "bver": 10, "n": "no2", "v": 40},
            {"n": "pm10", "v": 18},
            {"n": "pm2.5", "v": 7.5},
            {"n": "temperature", "u": "Cel", "v": 11.5},
            {"n": "humidity", "u": "%RH", "v": 81},
            {"n": "battery", "u": "%", "v": 90},
            {"n": "no2", "u": "ppb", "t": 300, "v": 20},
        ]
    )
    assert out.rejections == []
    first, second = out.readings
    assert (first["council"], first["device_id"]) == ("aberdeen", "union-st")
    assert first["observed_at"] == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    assert {k: first[k] for k in ("no2", "pm10", "pm25", "temperature", "relative_humidity", "co")} == {
        "no2": 40.0,
        "pm10": 18.0,
        "pm25": 7.5,
        "temperature": 11.5,
        "relative_humidity": 0.81,
        "co": None,
    }
    assert second["observed_at"] == datetime(2026, 3, 2, 8, 5, tzinfo=UTC)
    assert second["no2"] == pytest.approx(38.2741, rel=1e-5)  # 20 ppb × 46.0055 / 24.04
    assert second["pm10"] is None
    assert [first["reading_index"], second["reading_index"]] == [0, 1]


def test_senml_base_value_is_added_to_each_value_until_replaced():
    out = senml(
        [
            {"bt": T0, "bv": 100, "n": "intensity", "v": 12},
            {"bv": 0, "n": "speed", "u": "m/s", "v": 10},
        ],
        topic=b"city/leeds/traffic/a64/senml",
    )
    reading = only_reading(out)
    assert (reading["intensity"], reading["average_vehicle_speed"]) == (112, 36.0)
    assert reading["interval_s"] == 300  # the contract default


def test_senml_relative_times_count_from_the_receive_time():
    out = senml(
        [
            {"bn": "bin-1/", "n": "fillingLevel", "u": "%", "v": 40, "t": -60},
            {"n": "fillingLevel", "u": "%", "v": 41},
        ],
        topic=b"city/edinburgh/waste/bin-1/senml",
    )
    assert [(r["observed_at"], r["filling_level"]) for r in out.readings] == [
        (datetime(2026, 3, 2, 7, 59, 5, tzinfo=UTC), 0.4),
        (datetime(2026, 3, 2, 8, 0, 5, tzinfo=UTC), 0.41),
    ]


def test_senml_bay_status_from_a_boolean_or_a_string():
    topic = b"city/birmingham/parking/bay-7/senml"
    pack = [{"bt": T0, "n": "occupied", "vb": True}, {"t": 60, "n": "status", "vs": "free"}]
    out = senml(pack, topic=topic)
    assert [r["status"] for r in out.readings] == ["occupied", "free"]


def test_senml_car_park_counts_and_registry_capacity():
    registry = build_registry(
        [
            CouncilRegistry.model_validate(
                {
                    "council": "testtown",
                    "devices": [
                        {
                            "device_id": "p1",
                            "domain": "parking",
                            "total_spots": 577,
                            "lat": 52.4862,
                            "lon": -1.8904,
                        }
                    ],
                }
            )
        ]
    )
    pack = [{"bt": T0, "n": "occupiedSpotNumber", "u": "count", "v": 61}]
    reading = only_reading(senml(pack, topic=b"city/testtown/parking/p1/senml", registry=registry))
    assert (reading["occupied_spots"], reading["total_spots"]) == (61, 577)
    assert reading["occupancy"] == pytest.approx(61 / 577)
    assert (reading["lat"], reading["lon"]) == (52.4862, -1.8904)


def test_senml_bad_reading_is_quarantined_alone_with_its_records():
    out = senml(
        [
            {"bt": T0, "bu": "ug/m3", "n": "no2", "v": 40},
            {"t": 60, "n": "pm10", "u": "ppb", "v": 3},
            {"t": 120, "n": "nox", "v": 3},
        ]
    )
    [good] = out.readings
    assert good["no2"] == 40.0
    bad_unit, unknown = out.rejections
    assert (bad_unit.reason, bad_unit.reading_index) == (Reason.UNCONVERTIBLE_UNIT, 1)
    assert "pm10 in 'ppb' cannot be converted to ug/m3" in bad_unit.detail
    assert orjson.loads(bad_unit.payload) == [{"t": 60, "n": "pm10", "u": "ppb", "v": 3}]
    assert (unknown.reason, unknown.reading_index) == (Reason.UNKNOWN_FIELD, 2)
    assert "'nox' maps to no contract measurement" in unknown.detail


@pytest.mark.parametrize(
    ("pack", "reason", "detail"),
    [
        ({"n": "no2", "v": 1}, Reason.NOT_AN_OBJECT, "must be a JSON array of records"),
        ([], Reason.EMPTY_BATCH, "SenML pack is empty"),
        ([{"bver": 11, "bt": T0, "n": "no2", "u": "ug/m3", "v": 1}], Reason.INVALID_VALUE, "version 11"),
        ([{"bt": T0, "n": "no2", "u": "ug/m3", "v": 1, "x_": 1}], Reason.UNKNOWN_FIELD, "must understand"),
        ([{"bt": T0, "u": "ug/m3", "v": 1}], Reason.INVALID_VALUE, "name '' is empty"),
        ([{"bt": T0, "n": "no 2", "u": "ug/m3", "v": 1}], Reason.INVALID_VALUE, "name 'no 2'"),
        ([{"bt": T0, "n": "no2", "u": "ug/m3", "v": "1"}], Reason.INVALID_TYPE, "v must be a number"),
        ([{"bt": T0 * 1000, "n": "no2", "u": "ug/m3", "v": 1}], Reason.TIMESTAMP_OUT_OF_RANGE, "after 3000"),
        (
            [{"bt": -1e308, "n": "no2", "u": "ug/m3", "v": 1}],
            Reason.TIMESTAMP_OUT_OF_RANGE,
            "outside 1970..3000",
        ),
        ([1], Reason.NOT_AN_OBJECT, "SenML record 0 is a int"),
        ([{"bt": T0, "n": "temperature", "v": 5}], Reason.UNCONVERTIBLE_UNIT, "temperature has no unit"),
        ([{"bt": T0, "n": "status", "vs": "open"}], Reason.UNKNOWN_FIELD, "not a air_quality measurement"),
        (
            [{"bt": T0, "n": "no2", "u": "ug/m3", "v": 1}, {"n": "no2", "u": "ug/m3", "v": 2}],
            Reason.INVALID_VALUE,
            "two no2 values",
        ),
        ([{"bt": T0, "n": "pm10", "u": "ug/m3", "v": -1}], Reason.OUT_OF_RANGE, "pm10 -1.0 is below 0"),
    ],
)
def test_senml_rejections(pack, reason, detail):
    rejection = only_rejection(senml(pack))
    assert rejection.reason == reason
    assert detail in rejection.detail
    assert (rejection.council, rejection.device_id) == ("aberdeen", "union-st")


def test_senml_relative_time_without_a_receive_time_is_refused():
    rejection = only_rejection(senml([{"n": "no2", "u": "ug/m3", "v": 1}], received_at=None))
    assert rejection.reason == Reason.INVALID_TIMESTAMP
    assert "relative time (0 s) and the receive time is unknown" in rejection.detail


def test_senml_pack_longer_than_the_batch_limit():
    pack = [{"bt": T0, "n": "no2", "u": "ug/m3", "v": 1}] * 3
    out = decode_message(SENML_AIR, orjson.dumps(pack), Limits(max_batch_readings=2), received_at=RECEIVED)
    assert only_rejection(out).reason == Reason.BATCH_TOO_LARGE


# --- The Things Stack v3 ------------------------------------------------------------------------

UPLINK_AT = datetime(2023, 5, 19, 5, 33, 35, 641841, tzinfo=UTC)  # uplink_message.received_at


@pytest.mark.parametrize(
    ("file", "device_id", "domain", "observed_at", "msg_id", "expected"),
    [
        (
            "tts_v3_milesight_am319.json",
            "am319-1",
            "air_quality",
            UPLINK_AT,
            f"tts:1000000000000001:10335:{NS_UPLINK}",
            {"pm25": 32.0, "pm10": 48.0, "temperature": 23.8, "relative_humidity": 0.62, "no2": None},
        ),
        (
            "tts_v3_decentlab_dl_pm.json",
            "dl-pm-03022",
            "air_quality",
            datetime(2020, 2, 6, 9, 46, 5, 234172, tzinfo=UTC),
            "tts:70B3D57BA0000BCE:101:01E0CY8V1JGN0R5YZTBH48YXH3",
            {
                "pm25": 3.9,
                "pm10": 3.9,
                "temperature": 24.35660461425781,
                "relative_humidity": 0.4163221740722656,
            },
        ),
        (
            "tts_v3_bosch_parking_lot_sensor.json",
            "bay-2",
            "parking",
            UPLINK_AT,
            f"tts:1000000000000002:10335:{NS_UPLINK}",
            {"status": "occupied", "occupied_spots": None, "occupancy": None},
        ),
        (
            "tts_v3_nwave_g4_nps.json",
            "bay-3",
            "parking",
            UPLINK_AT,
            f"tts:1000000000000003:10335:{NS_UPLINK}",
            {"status": "occupied"},
        ),
        (
            "tts_v3_milesight_em310_udl.json",
            "bin-5",
            "waste",
            UPLINK_AT,
            f"tts:1000000000000005:10335:{NS_UPLINK}",
            {"filling_level": pytest.approx(1 - 2116 / 2500), "temperature": None},
        ),
        (
            "tts_v3_milesight_em400_udl.json",
            "bin-6",
            "waste",
            UPLINK_AT,
            f"tts:1000000000000006:10335:{NS_UPLINK}",
            {"filling_level": pytest.approx(0.1536), "temperature": 25.7},
        ),
    ],
)
def test_real_things_stack_uplinks_become_contract_readings(
    file, device_id, domain, observed_at, msg_id, expected
):
    topic, raw = sample(file)
    out = decode_message(topic, raw, LIMITS, registry=REGISTRY)
    reading = only_reading(out)
    assert out.domain == domain
    assert (reading["council"], reading["device_id"]) == ("example", device_id)
    assert (reading["observed_at"], reading["msg_id"]) == (observed_at, msg_id)
    assert {k: reading[k] for k in expected} == expected


def test_uplink_without_decoded_payload_says_to_set_a_payload_formatter():
    topic, raw = sample("tts_v3_milesight_em310_udl_no_formatter.json")
    rejection = only_rejection(decode_message(topic, raw, LIMITS, registry=REGISTRY))
    assert rejection.reason == Reason.MISSING_FIELD
    assert "f_port 85 has no uplink_message.decoded_payload; set the device's payload formatter" in (
        rejection.detail
    )
    assert rejection.payload == raw


def test_heartbeat_without_measurements_is_quarantined_as_no_measurement():
    topic, raw = sample("tts_v3_nwave_g4_ncc_heartbeat.json")
    rejection = only_rejection(decode_message(topic, raw, LIMITS, registry=REGISTRY))
    assert (rejection.reason, rejection.council, rejection.device_id) == (
        Reason.NO_MEASUREMENT,
        "example",
        "counter-4",
    )


def test_redelivered_uplink_decodes_to_the_same_key_and_msg_id():
    topic, raw = sample("tts_v3_milesight_am319.json")
    first = only_reading(decode_message(topic, raw, LIMITS, registry=REGISTRY))
    doc = orjson.loads(raw)
    doc["received_at"] = "2023-05-19T05:40:00Z"  # the application server delivered it again later
    again = only_reading(decode_message(topic, orjson.dumps(doc), LIMITS, registry=REGISTRY))
    assert (again["observed_at"], again["msg_id"]) == (first["observed_at"], first["msg_id"])


def edited(file: str, edit) -> tuple[bytes, bytes]:
    topic, raw = sample(file)
    doc = orjson.loads(raw)
    edit(doc)
    return topic, orjson.dumps(doc)


@pytest.mark.parametrize(
    ("topic_and_payload", "registry", "reason", "detail"),
    [
        (
            sample("tts_v3_milesight_am319.json"),
            None,
            Reason.UNKNOWN_DEVICE,
            "in no council's device registry",
        ),
        (
            (
                b"v3/application-tts-name@ttn/devices/eui-1000000000000009/up",
                sample("tts_v3_nwave_g4_nps.json")[1],
            ),
            REGISTRY,
            Reason.BAD_TOPIC,
            "published on the topic of application-tts-name/eui-1000000000000009",
        ),
        (
            edited(
                "tts_v3_milesight_am319.json", lambda d: d["uplink_message"]["decoded_payload"].update(o3=3)
            ),
            REGISTRY,
            Reason.UNKNOWN_FIELD,
            "milesight_am319 fields not in its profile: o3",
        ),
        (
            edited(
                "tts_v3_milesight_am319.json",
                lambda d: d["uplink_message"]["decoded_payload"].update(pm10="x"),
            ),
            REGISTRY,
            Reason.INVALID_TYPE,
            "milesight_am319 pm10 must be a number",
        ),
        (
            edited(
                "tts_v3_nwave_g4_nps.json",
                lambda d: d["uplink_message"]["decoded_payload"].update(occupied=1),
            ),
            REGISTRY,
            Reason.INVALID_TYPE,
            "nwave_g4_nps occupied must be a boolean",
        ),
        (
            edited(
                "tts_v3_milesight_em310_udl.json",
                lambda d: d["uplink_message"]["decoded_payload"].update(distance=2600),
            ),
            REGISTRY,
            Reason.OUT_OF_RANGE,
            "filling_level -0.04",
        ),
        (
            edited("tts_v3_milesight_am319.json", lambda d: d.pop("uplink_message")),
            REGISTRY,
            Reason.MISSING_FIELD,
            "has no uplink_message",
        ),
        (
            edited("tts_v3_milesight_am319.json", lambda d: d["end_device_ids"].update(dev_eui="xyz")),
            REGISTRY,
            Reason.INVALID_VALUE,
            "dev_eui is not 16 hex digits",
        ),
    ],
)
def test_things_stack_rejections(topic_and_payload, registry, reason, detail):
    topic, raw = topic_and_payload
    rejection = only_rejection(decode_message(topic, raw, LIMITS, registry=registry))
    assert rejection.reason == reason
    assert detail in rejection.detail


def council(**fields) -> CouncilRegistry:
    return CouncilRegistry.model_validate({"council": "leeds", **fields})


EM310_BIN = {
    "device_id": "bin-kirkgate",
    "domain": "waste",
    "model": "milesight_em310_udl",
    "lat": 53.7975,
    "lon": -1.5392,
    "lorawan": {"dev_eui": "1000000000000005"},
}


def test_device_found_by_dev_eui_gets_registry_position_but_needs_a_bin_depth():
    topic, raw = sample("tts_v3_milesight_em310_udl.json")
    rejection = only_rejection(
        decode_message(topic, raw, LIMITS, registry=build_registry([council(devices=[EM310_BIN])]))
    )
    assert (rejection.reason, rejection.council, rejection.device_id) == (
        Reason.UNCONVERTIBLE_UNIT,
        "leeds",
        "bin-kirkgate",
    )
    assert "set bin_depth_mm for it in registry/leeds.toml" in rejection.detail
    registry = build_registry([council(devices=[{**EM310_BIN, "bin_depth_mm": 3000}])])
    reading = only_reading(decode_message(topic, raw, LIMITS, registry=registry))
    assert reading["filling_level"] == pytest.approx(1 - 2116 / 3000)
    assert (reading["lat"], reading["lon"]) == (53.7975, -1.5392)


APPLICATION = {"tts": "application-tts-name@ttn", "domain": "parking", "model": "nwave_g4_nps"}


def test_unknown_device_of_a_council_application_is_quarantined_unless_the_council_opts_in():
    topic, raw = sample("tts_v3_nwave_g4_nps.json")
    strict = build_registry([council(applications=[APPLICATION])])
    rejection = only_rejection(decode_message(topic, raw, LIMITS, registry=strict))
    assert rejection.reason == Reason.UNKNOWN_DEVICE
    assert "is not in registry/leeds.toml; add it, or set accept_unknown_devices = true" in rejection.detail
    open_council = build_registry([council(applications=[APPLICATION], accept_unknown_devices=True)])
    reading = only_reading(decode_message(topic, raw, LIMITS, registry=open_council))
    assert (reading["council"], reading["device_id"], reading["status"]) == (
        "leeds",
        "eui-1000000000000003",
        "occupied",
    )


# --- ChirpStack v4 --------------------------------------------------------------------------------

CS_APPLICATION = "0b1f5c3e-7d2a-4c8e-9f61-3a5d2e8b4c17"
CS_TOPIC = f"application/{CS_APPLICATION}/device/24e1247100000007/event/up".encode()
CHIRPSTACK_UP = {
    "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
    "time": "2026-03-02T08:00:03.123456Z",
    "deviceInfo": {
        "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
        "tenantName": "ChirpStack",
        "applicationId": CS_APPLICATION,
        "applicationName": "air-quality",
        "deviceProfileId": "c2c6a6d1-8b58-4b6e-9d5e-0f1f3f5f0a11",
        "deviceProfileName": "Milesight AM319",
        "deviceName": "am319-7",
        "devEui": "24e1247100000007",
        "deviceClassEnabled": "CLASS_A",
        "tags": {},
    },
    "devAddr": "00b1c2d3",
    "adr": True,
    "dr": 5,
    "fCnt": 412,
    "fPort": 85,
    "confirmed": False,
    "data": "AXVhA2dUAARojwd9AAILfQsADH0TAA==",
    "object": {"battery": 97, "temperature": 8.4, "humidity": 71.5, "co2": 512, "pm2_5": 11, "pm10": 19},
    "rxInfo": [
        {
            "gatewayId": "0016c001f153a14c",
            "uplinkId": 4170515,
            "nsTime": "2026-03-02T08:00:03.131Z",
            "rssi": -97,
            "snr": 7.5,
            "channel": 2,
            "location": {},
            "context": "QY1DEw==",
            "metadata": {"region_config_id": "eu868", "region_common_name": "EU868"},
            "crcStatus": "CRC_OK",
        }
    ],
    "txInfo": {
        "frequency": 868500000,
        "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5"}},
    },
}


def test_chirpstack_up_event_becomes_a_contract_reading():
    out = decode_message(CS_TOPIC, orjson.dumps(CHIRPSTACK_UP), LIMITS, registry=REGISTRY)
    reading = only_reading(out)
    assert (out.domain, reading["council"], reading["device_id"]) == ("air_quality", "example", "am319-7")
    assert reading["observed_at"] == datetime(2026, 3, 2, 8, 0, 3, 123456, tzinfo=UTC)
    assert reading["msg_id"] == "chirpstack:24E1247100000007:412:3ac7e3c4-4401-4b8d-9386-a5c902f9202d"
    assert {k: reading[k] for k in ("pm25", "pm10", "temperature", "relative_humidity")} == {
        "pm25": 11.0,
        "pm10": 19.0,
        "temperature": 8.4,
        "relative_humidity": 0.715,
    }


def chirpstack(edit) -> bytes:
    doc = copy.deepcopy(CHIRPSTACK_UP)
    edit(doc)
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "detail"),
    [
        (
            f"application/{CS_APPLICATION}/device/24e1247100000008/event/up".encode(),
            orjson.dumps(CHIRPSTACK_UP),
            Reason.BAD_TOPIC,
            "published on the topic of",
        ),
        (CS_TOPIC, chirpstack(lambda d: d.pop("object")), Reason.MISSING_FIELD, "set a payload codec"),
        (CS_TOPIC, chirpstack(lambda d: d.pop("deduplicationId")), Reason.MISSING_FIELD, "deduplicationId"),
        (
            CS_TOPIC,
            chirpstack(lambda d: d.update(time="2026-03-02 08:00:03")),
            Reason.TIMESTAMP_WITHOUT_OFFSET,
            "no UTC offset",
        ),
        (
            b"application/another-app/device/24e1247100000007/event/up",
            chirpstack(lambda d: d["deviceInfo"].update(applicationId="another-app")),
            Reason.UNKNOWN_DEVICE,
            "ChirpStack device 24E1247100000007 of application another-app is in no council's",
        ),
    ],
)
def test_chirpstack_rejections(topic, payload, reason, detail):
    rejection = only_rejection(decode_message(topic, payload, LIMITS, registry=REGISTRY))
    assert rejection.reason == reason
    assert detail in rejection.detail


# --- City topics checked against the registry -------------------------------------------------


def test_registered_council_quarantines_unknown_devices_unless_it_opts_in():
    payload = orjson.dumps({"observed_at": T0, "occupied_spots": 3})
    topic = b"city/leeds/parking/p-unknown"
    strict = build_registry([council(devices=[{"device_id": "p1", "domain": "parking", "total_spots": 5}])])
    rejection = only_rejection(decode_message(topic, payload, LIMITS, registry=strict))
    assert rejection.reason == Reason.UNKNOWN_DEVICE
    assert "device 'p-unknown' is not in registry/leeds.toml" in rejection.detail
    registered = only_reading(decode_message(b"city/leeds/parking/p1", payload, LIMITS, registry=strict))
    assert (registered["occupied_spots"], registered["total_spots"]) == (3, 5)  # capacity from the registry
    opted_in = build_registry([council(accept_unknown_devices=True)])
    out = decode_message(
        topic, orjson.dumps({"observed_at": T0, "status": "free"}), LIMITS, registry=opted_in
    )
    assert only_reading(out)["status"] == "free"
    unregistered = decode_message(b"city/york/parking/p9", payload, LIMITS, registry=strict)
    assert only_rejection(unregistered).reason == Reason.MISSING_FIELD  # no registry file: contract v1


def test_device_published_under_another_domain_is_refused():
    registry = build_registry([council(devices=[{"device_id": "p1", "domain": "parking"}])])
    out = decode_message(
        b"city/leeds/waste/p1", b'{"observed_at": 1, "filling_level": 0.5}', LIMITS, registry=registry
    )
    rejection = only_rejection(out)
    assert (rejection.reason, rejection.detail) == (
        Reason.UNKNOWN_DEVICE,
        "device 'p1' is registered as parking, not waste; fix the topic or registry/leeds.toml",
    )
