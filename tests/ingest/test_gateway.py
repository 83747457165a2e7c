"""The gateway simulator: windowed QoS 1 publishing loses nothing and fails loudly."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import Collector, run_mosquitto

from civicflow.ingest.gateway import PublishStats, publish_messages

MESSAGES = 70_000
_CONNACK_ACCEPTED = bytes([0x20, 0x02, 0x00, 0x00])


def _payload(i: int) -> bytes:
    return b'{"seq":%06d}' % i


class SilentBroker:
    """Accepts one MQTT connection with a CONNACK, then never acknowledges anything.

    With `hang_up=True` it closes the connection once the first PUBLISH arrives instead.
    """

    def __init__(self, *, hang_up: bool = False) -> None:
        self.hang_up = hang_up
        self.hung_up = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with self._server:
            conn, _ = self._server.accept()
            self._connections.append(conn)
            conn.recv(1024)
            conn.sendall(_CONNACK_ACCEPTED)
            if self.hang_up:
                conn.recv(1024)
                conn.close()
                self.hung_up.set()
                return
            with contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
        self._server.close()


@pytest.mark.integration
def test_publishes_more_than_pahos_unacked_limit_without_losing_any(tmp_path: Path) -> None:
    expected = {_payload(i) for i in range(MESSAGES)}
    with run_mosquitto(tmp_path) as broker:
        collector = Collector(broker.host, broker.port, "civicflow/test/#", client_id="gateway-test-sub")
        assert collector.start() == [1]
        try:
            stats = publish_messages(
                broker.host,
                broker.port,
                ((f"civicflow/test/dev-{i % 50:02d}", _payload(i)) for i in range(MESSAGES)),
                qos=1,
                window=1000,
            )
            received = collector.wait_for(MESSAGES, timeout_s=180)  # a bound on waiting, not a speed
        finally:
            collector.stop()

    assert stats == PublishStats(messages=MESSAGES, bytes=14 * MESSAGES, seconds=stats.seconds)
    assert received == MESSAGES
    assert len(collector.payloads) == MESSAGES
    assert set(collector.payloads) == expected


@pytest.mark.unit
def test_rejects_a_window_paho_cannot_hold() -> None:
    with pytest.raises(ValueError, match="window must be between 1 and 65535, not 65536"):
        publish_messages("127.0.0.1", 1, [], window=65_536)


@pytest.mark.unit
def test_times_out_when_the_broker_stops_acknowledging() -> None:
    broker = SilentBroker()
    try:
        started = time.monotonic()
        with pytest.raises(
            TimeoutError,
            match=r"no acknowledgement for 1s while waiting for room in the "
            r"window of 2 \(2 unacknowledged, 0 acknowledged",
        ):
            publish_messages(
                "127.0.0.1",
                broker.port,
                [(f"civicflow/t/{i}", b"x") for i in range(5)],
                window=2,
                timeout_s=1.0,
            )
        assert time.monotonic() - started >= 1.0  # it waited out its timeout (no upper bound: CI is loaded)
    finally:
        broker.close()


@pytest.mark.unit
def test_a_qos0_publish_without_a_connection_names_the_topic() -> None:
    broker = SilentBroker(hang_up=True)

    def messages() -> Iterator[tuple[str, bytes]]:
        yield "civicflow/t/first", b"1"
        assert broker.hung_up.wait(5)
        time.sleep(0.5)
        yield "civicflow/t/second", b"2"

    try:
        with pytest.raises(
            RuntimeError,
            match=r"publishing to 'civicflow/t/second' failed with rc=.*"
            r"after 1 messages",
        ):
            publish_messages("127.0.0.1", broker.port, messages(), qos=0, timeout_s=5.0)
    finally:
        broker.close()
