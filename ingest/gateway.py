"""A gateway simulator: publishes readings the way Civicflow's field gateways do.

Real gateways publish QoS 1 over MQTT 3.1.1 and keep a bounded number of messages waiting for
PUBACK. The bound matters: paho keeps every unacknowledged QoS 1 message in memory and can hold at
most 65,535 of them (one per packet id); past that `publish` fails with MQTT_ERR_QUEUE_SIZE. So
this simulator publishes in a sliding window and waits for acknowledgements before going on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

_PAHO_MAX_UNACKED = 65_535


@dataclass(frozen=True)
class PublishStats:
    """What one `publish_messages` call sent.

    Attributes:
        messages: Messages published and acknowledged (for QoS 0: written to the socket).
        bytes: Sum of the payload sizes.
        seconds: Wall-clock time from the broker's CONNACK to the last acknowledgement.
    """

    messages: int
    bytes: int
    seconds: float


class _AckWindow:
    """Counts messages handed to paho that the broker has not acknowledged yet.

    Counting, rather than tracking mids, avoids a race: paho may call `on_publish` for a message
    before `publish` has returned its mid. The lock is never held while calling into paho, because
    paho holds its own out-message lock while it runs `on_publish`.
    """

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.outstanding = 0
        self.acked = 0
        self.connack: ReasonCode | None = None
        self.disconnects = 0
        self.closing = False

    def on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        with self.condition:
            self.connack = reason_code
            self.condition.notify_all()

    def on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        with self.condition:
            if self.closing:
                return
            self.disconnects += 1
        log.warning(
            "gateway simulator disconnected: %s; paho reconnects and resends unacked messages", reason_code
        )

    def on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused message mid=%d: %s", mid, reason_code)
        with self.condition:
            self.outstanding -= 1
            self.acked += 1
            self.condition.notify_all()

    def wait_for(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait until `ready()` holds, failing if no acknowledgement arrives for `timeout_s`.

        The timeout measures silence, not total time, so a large batch that keeps making progress
        is never cut off while a broker that has stopped answering is noticed promptly.

        Raises:
            TimeoutError: Nothing was acknowledged for `timeout_s` seconds.
        """
        with self.condition:
            progress = self.acked
            deadline = time.monotonic() + timeout_s
            while not ready():
                if self.acked != progress:
                    progress = self.acked
                    deadline = time.monotonic() + timeout_s
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no acknowledgement for {timeout_s:g}s while {what} "
                        f"({self.outstanding} unacknowledged, {self.acked} acknowledged, "
                        f"{self.disconnects} disconnects)"
                    )
                self.condition.wait(remaining)


def _connect(client: mqtt.Client, window: _AckWindow, host: str, port: int, timeout_s: float) -> None:
    client.connect(host, port, keepalive=30)
    client.loop_start()
    with window.condition:
        if not window.condition.wait_for(lambda: window.connack is not None, timeout_s):
            raise TimeoutError(f"no CONNACK from {host}:{port} within {timeout_s:g}s")
        connack = window.connack
    if connack is not None and connack.is_failure:
        raise ConnectionError(f"broker {host}:{port} refused the gateway simulator: {connack}")


def publish_messages(
    host: str,
    port: int,
    messages: Iterable[tuple[str, bytes]],
    *,
    qos: int = 1,
    window: int = 1000,
    client_id: str = "civicflow-gateway-sim",
    timeout_s: float = 60.0,
    username: str | None = None,
    password: str | None = None,
) -> PublishStats:
    """Publish `(topic, payload)` pairs and return once the broker has acknowledged all of them.

    At most `window` messages are unacknowledged at any time, which keeps paho below its 65,535
    limit and keeps memory flat however long `messages` is (it is consumed lazily).

    Args:
        host: Broker host.
        port: Broker port.
        messages: Topics and payloads, published in order.
        qos: 0, 1 or 2; gateways use 1.
        window: Most messages waiting for PUBACK at once (1 to 65,535).
        client_id: MQTT client id; the session is clean.
        timeout_s: Longest wait for the CONNACK, and longest stretch without any acknowledgement.
        username: Optional user name.
        password: Optional password (used only with a user name).

    Returns:
        Counts and timing of what was sent.

    Raises:
        ValueError: `qos` or `window` is out of range.
        ConnectionError: The broker refused the connection.
        RuntimeError: paho refused a publish (the message names the topic and return code).
        TimeoutError: The broker stopped acknowledging for `timeout_s`.
        OSError: The broker could not be reached.
    """
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, not {qos}")
    if not 1 <= window <= _PAHO_MAX_UNACKED:
        raise ValueError(f"window must be between 1 and {_PAHO_MAX_UNACKED}, not {window}")
    acks = _AckWindow()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
    )
    # No paho in-flight limit: `window` already bounds it, and with a limit set paho rescans every
    # unacknowledged message on each PUBACK, which made a window of 5,000 four times slower.
    client.max_inflight_messages_set(0)
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = acks.on_connect
    client.on_disconnect = acks.on_disconnect
    client.on_publish = acks.on_publish
    count = 0
    size = 0
    try:
        _connect(client, acks, host, port, timeout_s)
        started = time.monotonic()
        for topic, payload in messages:
            acks.wait_for(
                lambda: acks.outstanding < window, timeout_s, f"waiting for room in the window of {window}"
            )
            with acks.condition:
                acks.outstanding += 1
            info = client.publish(topic, payload, qos=qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not (
                qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
            ):
                with acks.condition:
                    acks.outstanding -= 1
                raise RuntimeError(
                    f"publishing to {topic!r} failed with rc={info.rc} ({mqtt.error_string(info.rc)}) "
                    f"after {count} messages"
                )
            count += 1
            size += len(payload)
        acks.wait_for(
            lambda: acks.outstanding == 0,
            timeout_s,
            f"waiting for the last acknowledgements of {count} messages",
        )
        seconds = time.monotonic() - started
    finally:
        with acks.condition:
            acks.closing = True
        client.disconnect()
        client.loop_stop()
    log.debug("published %d messages (%d bytes) to %s:%d in %.2fs", count, size, host, port, seconds)
    return PublishStats(messages=count, bytes=size, seconds=seconds)
