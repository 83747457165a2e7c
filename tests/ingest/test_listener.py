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
from brokers import run_mosquitto

from ingest.gateway import publish_messages
from warehouse.segments import list_closed_segments, read_segment, read_segment_lenient

pytestmark = pytest.mark.integration
CLIENT_ID = "test-listener"


def start_listener(data_root: Path, port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {
        "CIVICFLOW_DATA_ROOT": str(data_root),
        "CIVICFLOW_MQTT__HOST": "127.0.0.1",
        "CIVICFLOW_MQTT__PORT": str(port),
        "CIVICFLOW_MQTT__CLIENT_ID": CLIENT_ID,
        "CIVICFLOW_LANDING__SEGMENT_MAX_AGE_S": "1",
        "CIVICFLOW_METRICS__PORT": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "civicflow.cli", "listen"],
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )


def status(data_root: Path) -> dict:
    path = data_root / "raw" / CLIENT_ID / "status.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"listener exited ({proc.returncode}) while {what}")
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out {what}")


def landed_payloads(data_root: Path) -> list[bytes]:
    return [r.payload for p in list_closed_segments(data_root / "raw") for r in read_segment(p)]


def messages(n: int):
    for i in range(n):
        yield f"city/testtown/parking/p{i % 7}", b'{"seq":%d}' % i


def test_sigkill_mid_stream_loses_nothing_the_broker_thinks_was_delivered(tmp_path):
    n = 10_000
    data_root = tmp_path / "data"
    log = tmp_path / "listener.log"
    with run_mosquitto(tmp_path, persistence=True) as broker:
        listener = start_listener(data_root, broker.port, log)
        wait_for(lambda: status(data_root).get("state") == "subscribed", 30, "subscribing", listener)
        publisher = threading.Thread(
            target=publish_messages,
            args=("127.0.0.1", broker.port, messages(n)),
            kwargs={"window": 500, "timeout_s": 120, "client_id": "test-gateway"},
        )
        publisher.start()
        wait_for(
            lambda: status(data_root).get("acked", 0) >= 1500, 60, "landing the first messages", listener
        )
        listener.send_signal(signal.SIGKILL)
        listener.wait(timeout=10)
        killed_at = sum(
            len(read_segment_lenient(p)[0])
            for p in (data_root / "raw" / CLIENT_ID).glob("*.*")
            if p.suffix in (".seg", ".open")
        )
        assert listener.returncode == -signal.SIGKILL

        listener = start_listener(data_root, broker.port, log)
        publisher.join(timeout=120)
        assert not publisher.is_alive()
        wait_for(lambda: status(data_root).get("state") == "subscribed", 30, "re-subscribing", listener)
        # The broker has every message (the publisher returned); wait until the listener has
        # landed and acknowledged all it still had to send.
        last = [-1, time.monotonic()]

        def settled() -> bool:
            acked = status(data_root).get("acked", 0)
            if acked != last[0]:
                last[:] = [acked, time.monotonic()]
            return time.monotonic() - last[1] > 2.0

        wait_for(settled, 120, "draining the session", listener)
        after_restart = status(data_root)
        listener.send_signal(signal.SIGTERM)
        assert listener.wait(timeout=30) == 0

    assert after_restart["sessions_lost"] == 0
    landed = landed_payloads(data_root)
    seqs = {json.loads(p)["seq"] for p in landed}
    assert seqs == set(range(n)), f"missing {sorted(set(range(n)) - seqs)[:10]}"
    assert len(landed) >= n
    assert 0 < killed_at < n
    assert not list((data_root / "raw" / CLIENT_ID).glob("*.open"))


def test_sigterm_closes_the_open_segment_and_exits_zero(tmp_path):
    data_root = tmp_path / "data"
    with run_mosquitto(tmp_path, persistence=False) as broker:
        env_age = {"CIVICFLOW_LANDING__SEGMENT_MAX_AGE_S": "3600"}
        os.environ.update(env_age)
        try:
            listener = start_listener(data_root, broker.port, tmp_path / "listener.log")
        finally:
            for k in env_age:
                os.environ.pop(k)
        wait_for(lambda: status(data_root).get("state") == "subscribed", 30, "subscribing", listener)
        publish_messages("127.0.0.1", broker.port, messages(250), client_id="test-gateway")
        wait_for(lambda: status(data_root).get("acked", 0) >= 250, 30, "landing", listener)
        listener.send_signal(signal.SIGTERM)
        assert listener.wait(timeout=30) == 0
    assert status(data_root)["state"] == "stopped"
    payloads = landed_payloads(data_root)
    assert sorted(json.loads(p)["seq"] for p in payloads) == list(range(250))
    assert not list((data_root / "raw" / CLIENT_ID).glob("*.open"))
