"""The listener against a real Mosquitto: ack after flush, crash safety, clean shutdown, what it
counts as a bad topic, a session taken over; and against the embedded broker, which lacks MQTT 5."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from brokers import free_port, run_mosquitto
from listeners import ListenerProcess, landed_payloads
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from civicflow.ingest.broker import EmbeddedBroker
from civicflow.ingest.gateway import publish_messages
from civicflow.transforms.decode import Limits
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.segments import list_closed_segments, read_segment, read_segment_lenient

pytestmark = pytest.mark.integration
CLIENT_ID = "test-listener"


def start_listener(data_root: Path, port: int, log: Path, **env: str) -> ListenerProcess:
    return ListenerProcess(data_root, port, log, client_id=CLIENT_ID, **env).start()


def messages(n: int):
    for i in range(n):
        yield f"city/testtown/parking/p{i % 7}", b'{"seq":%d}' % i


def test_sigkill_mid_stream_loses_nothing_the_broker_thinks_was_delivered(tmp_path):
    n = 10_000
    data_root = tmp_path / "data"
    with run_mosquitto(tmp_path, persistence=True) as broker:
        listener = start_listener(data_root, broker.port, tmp_path / "listener.log")
        try:
            listener.wait_subscribed()
            publisher = threading.Thread(
                target=publish_messages,
                args=("127.0.0.1", broker.port, messages(n)),
                kwargs={"window": 500, "timeout_s": 120, "client_id": "test-gateway"},
            )
            publisher.start()
            listener.wait_for(lambda: listener.status().get("acked", 0) >= 1500, 60, "landing")
            listener.kill()
            assert listener.proc.returncode == -signal.SIGKILL
            killed_at = sum(
                len(read_segment_lenient(p)[0])
                for p in listener.directory.glob("*.*")
                if p.suffix in (".seg", ".open")
            )
            listener.start()
            publisher.join(timeout=120)
            assert not publisher.is_alive()
            listener.wait_subscribed()
            # The broker has every message (the publisher returned); wait until the listener has
            # landed and acknowledged all it still had to send.
            after_restart = listener.wait_settled()
            assert listener.terminate() == 0
        finally:
            listener.ensure_stopped()

    assert after_restart["sessions_lost"] == 0
    landed = landed_payloads(data_root / "raw")
    seqs = {json.loads(p)["seq"] for p in landed}
    assert seqs == set(range(n)), f"missing {sorted(set(range(n)) - seqs)[:10]}"
    assert len(landed) >= n
    assert 0 < killed_at < n
    assert not list(listener.directory.glob("*.open"))


def test_sigterm_closes_the_open_segment_and_exits_zero(tmp_path):
    data_root = tmp_path / "data"
    with run_mosquitto(tmp_path, persistence=False) as broker:
        listener = start_listener(
            data_root, broker.port, tmp_path / "listener.log", CIVICFLOW_LANDING__SEGMENT_MAX_AGE_S="3600"
        )
        try:
            listener.wait_subscribed()
            publish_messages("127.0.0.1", broker.port, messages(250), client_id="test-gateway")
            listener.wait_for(lambda: listener.status().get("acked", 0) >= 250, 30, "landing")
            assert listener.terminate() == 0
        finally:
            listener.ensure_stopped()
    assert listener.status()["state"] == "stopped"
    payloads = landed_payloads(data_root / "raw")
    assert sorted(json.loads(p)["seq"] for p in payloads) == list(range(250))
    assert not list(listener.directory.glob("*.open"))


def test_metrics_and_health_endpoint_count_what_landed(tmp_path):
    data_root = tmp_path / "data"
    with run_mosquitto(tmp_path, persistence=False) as broker:
        listener = start_listener(data_root, broker.port, tmp_path / "listener.log")
        try:
            listener.wait_subscribed()
            bad = [("city/testtown/parking/p1", b"x" * (256 * 1024 + 1)), ("city/Bad Topic/x", b"{}")]
            publish_messages("127.0.0.1", broker.port, [*messages(300), *bad], client_id="test-gateway")
            listener.wait_for(lambda: listener.status().get("acked", 0) >= 302, 30, "landing")
            code, health = listener.health()
            metrics = listener.metrics()
            assert listener.terminate() == 0
        finally:
            listener.ensure_stopped()
    assert code == 200 and health["healthy"] is True and health["state"] == "subscribed"
    assert (health["received"], health["acked"]) == (302, 302)
    expected = {
        "civicflow_listener_messages_received_total": 302.0,
        "civicflow_listener_messages_acknowledged_total": 302.0,
        'civicflow_listener_rejections_total{reason="payload_too_large"}': 1.0,
        'civicflow_listener_rejections_total{reason="bad_topic"}': 1.0,
        "civicflow_listener_healthy": 1.0,
    }
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#"))
    assert {k: float(values[k]) for k in expected} == expected
    assert float(values["civicflow_listener_payload_bytes_total"]) > 256 * 1024


def test_log_json_writes_one_json_object_per_line(tmp_path):
    env = os.environ | {
        "CIVICFLOW_DATA_ROOT": str(tmp_path / "data"),
        "CIVICFLOW_MQTT__HOST": "127.0.0.1",
        "CIVICFLOW_MQTT__PORT": str(free_port()),  # nothing listens there
        "CIVICFLOW_METRICS__PORT": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "civicflow.app.cli", "listen", "--log-json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    status_path = tmp_path / "data" / "raw" / "civicflow-listener-1" / "status.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and '"disconnected"' not in (
        status_path.read_text() if status_path.exists() else ""
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines and all(list(doc)[:4] == ["time", "level", "logger", "message"] for doc in lines)
    [unreachable, *_] = [d for d in lines if d["message"].startswith("cannot reach broker")]
    broker = env["CIVICFLOW_MQTT__HOST"] + ":" + env["CIVICFLOW_MQTT__PORT"]
    assert (unreachable["level"], unreachable["logger"], unreachable["broker"]) == (
        "warning",
        "civicflow.ingest.listener",
        f"mqtt://{broker}",
    )
    assert lines[-1]["message"].startswith("listener stopped")
    assert (lines[-1]["received"], lines[-1]["acknowledged"], lines[-1]["segments_closed"]) == (0, 0, 0)


# Topics a plain broker delivers to the listener's subscriptions (city/#, v3/+/devices/+/up,
# application/+/device/+/event/up) that staging quarantines as bad_topic, one of each kind.
BAD_TOPICS = [
    "city/testtown",  # too few levels
    "city/testtown/parking",
    "city/testtown/parking/p1/extra",  # too many
    "city/testtown/parking/p1/senml/more",
    "city/testtown/bikes/p1",  # not a contract domain
    "city/testtown/Parking/p1",
    "city/Testtown/parking/p1",  # council not a name
    "city//parking/p1",  # empty council
    "city/testtown/parking/",  # empty device id
    "city/testtown/parking/P1",  # device id not a name
    "city/testtown/parking/p 1",
    "city/testtown/parking/-p1",
    "city/testtown/parking/" + "d" * 65,  # device id too long
    "v3/app-without-tenant/devices/d1/up",  # The Things Stack topic without <application>@<tenant>
    "application/app/device/not-a-dev-eui/event/up",  # ChirpStack DevEUI is 16 hex digits
]
GOOD_TOPICS = [
    "city/testtown/parking/p1",
    "city/testtown/air_quality/p1/senml",
    "v3/app@tenant/devices/d1/up",
    "application/app/device/0011223344556677/event/up",
]


def test_every_bad_topic_the_listener_receives_is_counted(tmp_path):
    """One count per message on a topic staging rejects as bad_topic, none for a good topic; a
    feedback summary (`city/#` matches Civicflow's own output too) is acknowledged, never landed."""
    data_root = tmp_path / "data"
    feedback = ("city/testtown/parking/p1/feedback", b'{"council": "testtown"}')
    sent = [(t, b"{}") for t in [*BAD_TOPICS, *GOOD_TOPICS, BAD_TOPICS[4], GOOD_TOPICS[0]]] + [feedback]
    with run_mosquitto(tmp_path, persistence=False) as broker:
        listener = start_listener(data_root, broker.port, tmp_path / "listener.log")
        try:
            listener.wait_subscribed()
            publish_messages("127.0.0.1", broker.port, sent, client_id="test-gateway")
            listener.wait_for(lambda: listener.status().get("acked", 0) >= len(sent), 30, "landing")
            metrics = listener.metrics()
            assert listener.terminate() == 0
        finally:
            listener.ensure_stopped()
    assert listener.status()["rejections"] == {"bad_topic": len(BAD_TOPICS) + 1}
    assert (listener.status()["feedback_skipped"], listener.status()["received"]) == (1, len(sent) - 1)
    assert f'civicflow_listener_rejections_total{{reason="bad_topic"}} {len(BAD_TOPICS) + 1}.0' in metrics
    landed = {r.topic.decode() for p in list_closed_segments(data_root / "raw") for r in read_segment(p)}
    assert landed == set(BAD_TOPICS) | set(GOOD_TOPICS)  # counted, and landed like any other message


def test_a_session_wiped_by_another_client_is_reported_and_taken_back(tmp_path):
    """A client connects with the listener's client id and a clean start, as a broker that does not
    bind client ids to users lets anyone do: the listener's queue is gone. It reports that, takes the
    session back and lands what comes next. (Mosquitto 2.0.11 closes the listener's connection
    without MQTT 5's "session taken over" reason code, so the loss shows on reconnect.)"""
    data_root = tmp_path / "data"
    log = tmp_path / "listener.log"
    with run_mosquitto(tmp_path, persistence=False) as broker:
        listener = start_listener(data_root, broker.port, log)
        try:
            listener.wait_subscribed()
            other = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, protocol=mqtt.MQTTv5)
            connack = []
            other.on_connect = lambda client, userdata, flags, rc, props: connack.append(rc)
            other.connect("127.0.0.1", broker.port, clean_start=True)
            listener.wait_for(lambda: other.loop(timeout=0.05) or connack, 10, "the other client's CONNACK")
            assert connack[0].value == 0
            status = listener.wait_for(
                lambda: (doc := listener.own_status()).get("sessions_lost") and doc, 30, "noticing"
            )
            listener.wait_subscribed()
            # The listener has the session again: the other client is the one disconnected now.
            listener.wait_for(
                lambda: other.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS, 10, "kicking"
            )
            code, health = listener.health()
            publish_messages("127.0.0.1", broker.port, messages(5), client_id="test-gateway")
            listener.wait_for(lambda: listener.own_status().get("acked", 0) >= 5, 30, "landing")
            metrics = listener.metrics()
            assert listener.terminate() == 0
        finally:
            listener.ensure_stopped()
    assert status["sessions_lost_by_cause"]["not_present"] == 1
    assert status["session_lost"]["cause"] == "not_present"
    assert (code, health["state"], health["healthy"], health["protocol"]) == (503, "subscribed", False, "5")
    assert health["last_error"].startswith("SESSION LOST: broker mqtt://127.0.0.1:")
    assert "another client that connected with this client id and a clean session" in health["last_error"]
    [line] = [line for line in log.read_text().splitlines() if "SESSION LOST" in line]
    assert "[error" in line
    assert 'civicflow_listener_sessions_lost_total{cause="not_present"} 1.0' in metrics
    assert sorted(json.loads(p)["seq"] for p in landed_payloads(data_root / "raw")) == list(range(5))


def test_a_broker_without_mqtt5_gets_mqtt311_and_the_listener_lands(tmp_path):
    """The embedded demo broker (amqtt) refuses MQTT 5: the listener speaks 3.1.1 to it instead.

    amqtt also routes topics Mosquitto refuses, such as a level ending in a newline: such a
    message lands (nothing is dropped), is counted as a bad topic, and is quarantined at staging,
    never staged as council `nl\n` (a folder of that name, ids that look like real ones).
    """
    data_root = tmp_path / "data"
    reading = b'{"observed_at":"2026-03-01T08:00:00Z","occupied_spots":5,"total_spots":100}'
    hostile = [
        ("city/nl\n/parking/d1", reading),
        ("city/nl/parking/d1\n", reading),
        ("city/nl/parking/d1", reading),
    ]
    with EmbeddedBroker() as broker:
        listener = start_listener(data_root, broker.port, tmp_path / "listener.log")
        try:
            status = listener.wait_subscribed()
            publish_messages("127.0.0.1", broker.port, [*messages(5), *hostile], client_id="test-gateway")
            listener.wait_for(lambda: listener.own_status().get("acked", 0) >= 8, 30, "landing")
            counted = listener.own_status()["rejections"]
            assert listener.terminate() == 0
        finally:
            listener.ensure_stopped()
    assert (status["protocol"], status["connects"], status["sessions_lost"]) == ("3.1.1", 1, 0)
    landed = [p for p in landed_payloads(data_root / "raw") if p != reading]
    assert sorted(json.loads(p)["seq"] for p in landed) == list(range(5))
    assert counted == {"bad_topic": 2}

    layout = Layout(data_root)
    con = connect(layout.warehouse)
    try:
        stage_segments(layout, con, Limits())
        staged = con.execute("SELECT DISTINCT council, device_id FROM staged.parking").fetchall()
        refused = con.execute("SELECT topic, reason FROM quarantine.readings WHERE reason = 'bad_topic'")
        assert sorted(refused.fetchall()) == [
            ("city/nl\n/parking/d1", "bad_topic"),
            ("city/nl/parking/d1\n", "bad_topic"),
        ]
    finally:
        con.close()
    assert staged == [("nl", "d1")]
    assert sorted(p.name for p in (data_root / "staged" / "parking").iterdir()) == ["council=nl"]
