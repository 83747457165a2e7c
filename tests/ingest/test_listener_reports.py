"""What the listener counts and reports, checked without a broker: its bad-topic judgement is the
decoder's, and a session taken over (MQTT 5 reason code 0x8E) is counted, logged and shown."""

from __future__ import annotations

import logging

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import generate_latest
from test_listener import BAD_TOPICS, GOOD_TOPICS

from civicflow.contract import Reason
from civicflow.ingest.listener import BrokerAddress, Listener
from civicflow.transforms.decode import Limits, decode_message
from civicflow.warehouse.segments import SegmentWriter
from civicflow.wire import is_bad_topic

pytestmark = pytest.mark.unit

MORE_TOPICS = [
    "city/testtown/parking/p1/senml",
    "city/testtown/parking/senml",  # a device called senml
    "city/testtown/traffic/a64_york-rd",
    "city/a/waste/" + "d" * 64,
    "city/testtown/parking/p1/SENML",
    "town/testtown/parking/p1",  # never reaches the listener: it does not subscribe to town/#
    "v3/app@tenant/devices/d1/down",
]


@pytest.mark.parametrize("topic", [*BAD_TOPICS, *GOOD_TOPICS, *MORE_TOPICS])
def test_listener_calls_a_topic_bad_exactly_when_staging_does(topic: str) -> None:
    decoded = decode_message(topic.encode(), b"{}", Limits(topic_prefix="city"))
    staged_as_bad_topic = any(r.reason == Reason.BAD_TOPIC for r in decoded.rejections)
    assert is_bad_topic(topic, "city") is staged_as_bad_topic


def test_a_session_taken_over_is_counted_logged_and_makes_the_listener_unhealthy(tmp_path, caplog) -> None:
    listener = Listener(
        BrokerAddress("127.0.0.1", 1883),
        client_id="civicflow-listener-1",
        topic_filters=["city/#"],
        writer=SegmentWriter(tmp_path / "raw", max_bytes=1 << 20, max_age_s=60),
        status_path=tmp_path / "status.json",
        clock=lambda: 1_800_000_000.0,
    )
    listener._set_state("subscribed")
    assert listener.health()["healthy"] is True

    with caplog.at_level(logging.ERROR, logger="civicflow.ingest.listener"):
        listener._on_disconnect(
            listener.client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E), None
        )

    health = listener.health()
    assert (health["state"], health["healthy"]) == ("session_taken_over", False)
    assert (health["sessions_lost"], health["sessions_lost_by_cause"]) == (1, {"taken_over": 1})
    assert health["session_lost"]["cause"] == "taken_over"
    assert health["session_lost"]["at"] == 1_800_000_000.0
    assert health["last_error"].startswith(
        "SESSION TAKEN OVER: another client connected to mqtt://127.0.0.1:1883"
    )
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.getMessage() == health["last_error"]
    assert "give every listener process its own broker user and client id" in record.getMessage()
    metrics = generate_latest(listener.metrics.registry).decode()
    assert 'civicflow_listener_sessions_lost_total{cause="taken_over"} 1.0' in metrics
    assert 'civicflow_listener_sessions_lost_total{cause="not_present"} 0.0' in metrics
    assert "civicflow_listener_healthy 0.0" in metrics
    # Reconnected and subscribed, it stays unhealthy until the alarm has run its time.
    listener._set_state("subscribed")
    assert listener.health()["healthy"] is False
    listener.session_alarm_s = 0.0
    assert listener.health()["healthy"] is True
    # The next reconnect waits longer after each takeover in a row, up to 30 s.
    assert listener._reconnect_delay() == 0.5
    listener._takeovers_in_a_row = 10
    assert listener._reconnect_delay() == 30.0
