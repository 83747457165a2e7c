"""The MQTT listener: lands every message in the raw zone, then acknowledges it.

The only module that imports paho. Its callback hands bytes to the segment writer and returns;
decoding happens later, in batch, so a malformed message can never stop the listener.

Delivery guarantee: QoS 1 with a persistent session and `manual_ack`, so the broker keeps a message
until its PUBACK. The listener runs its own network loop and commits in groups: it reads until the
socket has nothing more (or a group is full, or the oldest message has waited long enough), fsyncs
the segment once, and only then sends the PUBACKs of that group. A crash at any point loses nothing
the broker believes was delivered; at worst a message is landed twice, and staging de-duplicates.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from warehouse.segments import SegmentWriter

log = logging.getLogger(__name__)


@dataclass
class ListenerStats:
    received: int = 0
    acked: int = 0
    flushes: int = 0
    connects: int = 0
    sessions_lost: int = 0
    segments_closed: list[str] = field(default_factory=list)
    state: str = "starting"


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30


class Listener:
    """Subscribe to `<prefix>/#` and land messages in raw segments, acking after fsync."""

    def __init__(
        self,
        broker: BrokerAddress,
        *,
        client_id: str,
        topic_filter: str,
        writer: SegmentWriter,
        qos: int = 1,
        flush_max_messages: int = 500,
        flush_max_delay_s: float = 0.05,
        status_path: Path | None = None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.status_path = status_path
        self._status_written = 0.0
        self.topic_filter = topic_filter
        self.qos = qos
        self.writer = writer
        self.flush_max_messages = flush_max_messages
        self.flush_max_delay_s = flush_max_delay_s
        self.stats = ListenerStats()
        self._pending: list[tuple[int, int]] = []
        self._oldest_pending = 0.0
        self._delivered = 0
        self._ever_connected = False
        self._connected = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error(
                "broker %s:%d refused the connection: %s", self.broker.host, self.broker.port, reason_code
            )
            return
        self._connected = True
        self.stats.connects += 1
        if self._ever_connected and not flags.session_present:
            self.stats.sessions_lost += 1
            log.error(
                "broker %s:%d lost this listener's session: messages queued while it was "
                "away may be gone; check the broker's persistence settings",
                self.broker.host,
                self.broker.port,
            )
        self._ever_connected = True
        client.subscribe(self.topic_filter, qos=self.qos)
        log.info(
            "connected to %s:%d (session present: %s), subscribing to %s",
            self.broker.host,
            self.broker.port,
            flags.session_present,
            self.topic_filter,
        )

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("subscription to %s refused: %s", self.topic_filter, reason_codes)
            self._set_state("subscription_refused")
            return
        self._set_state("subscribed")

    def _set_state(self, state: str) -> None:
        self.stats.state = state
        self.write_status(force=True)

    def write_status(self, *, force: bool = False) -> None:
        """Publish the listener's counters to a JSON file operators and the demo can read."""
        if self.status_path is None:
            return
        now = time.monotonic()
        if not force and now - self._status_written < 0.5:
            return
        self._status_written = now
        doc = asdict(self.stats) | {
            "pid": os.getpid(),
            "client_id": self.client_id,
            "updated_at": time.time(),
        }
        doc["segments_closed"] = len(self.stats.segments_closed)
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.status_path)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected = False
        self.stats.state = "disconnected"
        log.warning("disconnected from %s:%d: %s", self.broker.host, self.broker.port, reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        self.writer.append(message._topic, message.payload, time.time_ns(), message.qos, message.retain)
        if message.qos > 0:
            if not self._pending:
                self._oldest_pending = time.monotonic()
            self._pending.append((message.mid, message.qos))
        self._delivered += 1
        self.stats.received += 1

    def _commit(self) -> None:
        """Make landed messages durable, then acknowledge them."""
        self.writer.flush()
        self.stats.flushes += 1
        if self._connected:
            for mid, qos in self._pending:
                self.client.ack(mid, qos)
            self.stats.acked += len(self._pending)
        self._pending.clear()
        self.write_status()

    def _roll(self) -> None:
        self._commit()
        closed = self.writer.roll()
        if closed is not None:
            self.stats.segments_closed.append(closed.name)

    def _connect_with_backoff(self, stop: threading.Event) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                if self._ever_connected:
                    self.client.reconnect()
                else:
                    self.client.connect(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
                return
            except OSError as exc:
                log.warning(
                    "cannot reach broker %s:%d (%s); retrying in %.1fs",
                    self.broker.host,
                    self.broker.port,
                    exc,
                    delay,
                )
                stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def run(self, stop: threading.Event) -> ListenerStats:
        """Run until `stop` is set; then land, acknowledge and close what is open."""
        self._connect_with_backoff(stop)
        wait = 0.0
        while not stop.is_set():
            before = self._delivered
            rc = self.client.loop(timeout=wait)
            got_message = self._delivered != before
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                if self._pending:
                    self.writer.flush()
                    self._pending.clear()
                self._connected = False
                log.warning("connection lost (%s); reconnecting", rc)
                stop.wait(0.2)
                self._connect_with_backoff(stop)
                wait = 0.0
                continue
            if self._pending and (
                not got_message
                or len(self._pending) >= self.flush_max_messages
                or time.monotonic() - self._oldest_pending >= self.flush_max_delay_s
            ):
                self._commit()
            if self.writer.due_to_roll():
                self._roll()
            if not got_message:
                self.write_status()
            wait = 0.0 if got_message else 0.5
        self._shutdown()
        return self.stats

    def _shutdown(self) -> None:
        self._roll()
        deadline = time.monotonic() + 5.0
        while self._connected and self.client.want_write() and time.monotonic() < deadline:
            self.client.loop(timeout=0.05)
        if self._connected:
            self.client.disconnect()
            while self.client.want_write() and time.monotonic() < deadline:
                self.client.loop(timeout=0.05)
        self.writer.close()
        self._set_state("stopped")
        log.info(
            "listener stopped: %d received, %d acknowledged, %d segments closed",
            self.stats.received,
            self.stats.acked,
            len(self.stats.segments_closed),
        )
