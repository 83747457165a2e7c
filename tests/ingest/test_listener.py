"""The listener against a real Mosquitto: ack after flush, crash safety, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from brokers import free_port, run_mosquitto
from listeners import ListenerProcess, landed_payloads

from ingest.gateway import publish_messages
from warehouse.segments import read_segment_lenient

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
        [sys.executable, "-m", "app.cli", "listen", "--log-json"],
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
    assert lines and all({"event", "level", "logger", "timestamp"} <= set(doc) for doc in lines)
    assert any(d["level"] == "warning" and "cannot reach broker" in d["event"] for d in lines)
    assert lines[-1]["event"].startswith("listener stopped")
