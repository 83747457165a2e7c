"""The MQTT listener: lands every message in the raw zone, then acknowledges it.

The only module that talks MQTT for Civicflow. Its callback hands bytes to the segment writer and
returns; decoding happens later, in batch, so a malformed message can never stop the listener.

Delivery guarantee: QoS 1 with a persistent session and `manual_ack`, so the broker keeps a message
until its PUBACK. The listener runs its own network loop and commits in groups: it reads until the
socket has nothing more (or a group is full, or the oldest message has waited long enough), fsyncs
the segment once, and only then sends the PUBACKs of that group. A crash at any point loses nothing
the broker believes was delivered; at worst a message is landed twice, and staging de-duplicates.

When the raw zone refuses a write (disk full, directory unwritable), the listener stops
acknowledging, disconnects so the broker keeps queueing for its session, reports itself unhealthy,
probes the disk with backoff and reconnects when it takes writes again: the broker then redelivers
everything that was not acknowledged.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from civicflow.health import closed_backlog
from civicflow.wire import topic_format
from ingest.metrics import ListenerMetrics, serve
from warehouse.segments import SegmentWriter

if TYPE_CHECKING:
    from civicflow.settings import Settings

log = logging.getLogger(__name__)

PUBACK_HEADER = bytes((0x40, 0x02))
"""MQTT 3.1.1 PUBACK fixed header: packet type 4, remaining length 2 (the packet id follows)."""


@dataclass
class ListenerStats:
    received: int = 0
    landed: int = 0
    acked: int = 0
    bytes: int = 0
    flushes: int = 0
    connects: int = 0
    sessions_lost: int = 0
    landing_failures: int = 0
    rejections: Counter = field(default_factory=Counter)
    segments_closed: list[str] = field(default_factory=list)
    state: str = "starting"
    healthy: bool = False
    last_error: str | None = None


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive_s: int = 30
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def configure(self, client: mqtt.Client) -> None:
        """Give a paho client this broker's credentials and TLS settings."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(
                ca_certs=str(self.ca_file) if self.ca_file else None,
                certfile=str(self.cert_file) if self.cert_file else None,
                keyfile=str(self.key_file) if self.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerAddress:
        m = settings.mqtt
        if m.host is None:
            raise ValueError("set CIVICFLOW_MQTT__HOST (and CIVICFLOW_MQTT__PORT) to the broker to listen to")
        return cls(
            m.host,
            m.port,
            m.username,
            m.password.get_secret_value() if m.password else None,
            m.keepalive_s,
            tls=m.tls.enabled,
            ca_file=m.tls.ca_file,
            cert_file=m.tls.cert_file,
            key_file=m.tls.key_file,
        )


class Listener:
    """Subscribe to the topic filters and land messages in raw segments, acking after fsync."""

    def __init__(
        self,
        broker: BrokerAddress,
        *,
        client_id: str,
        topic_filters: list[str],
        writer: SegmentWriter,
        qos: int = 1,
        flush_max_messages: int = 500,
        flush_max_delay_s: float = 0.05,
        status_path: Path | None = None,
        topic_prefix: str = "city",
        max_payload_bytes: int = 256 * 1024,
        metrics: ListenerMetrics | None = None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.status_path = status_path
        self._status_written = 0.0
        self.topic_filters = topic_filters
        self.qos = qos
        self.writer = writer
        self.flush_max_messages = flush_max_messages
        self.flush_max_delay_s = flush_max_delay_s
        self.topic_prefix = topic_prefix
        self.max_payload_bytes = max_payload_bytes
        self.metrics = metrics or ListenerMetrics()
        self.metrics_port: int | None = None
        self.stats = ListenerStats()
        self._pending: list[tuple[int, int]] = []
        self._oldest_pending = 0.0
        self._delivered = 0
        self._fault: OSError | None = None
        self._backoff = 0.2
        self._connected = False
        self._subscribed = False
        self._connect_called = False
        self._published = ListenerStats()  # what the Prometheus counters have seen
        # A session this client id had before (a restart) must still be on the broker.
        self._ever_connected = self._had_session_before()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        broker.configure(self.client)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    @classmethod
    def from_settings(cls, settings: Settings) -> Listener:
        """The listener `civicflow listen` runs: one settings object in, everything wired."""
        from warehouse.layout import Layout

        mqtt_settings = settings.mqtt
        broker = BrokerAddress.from_settings(settings)
        directory = Layout(settings.data_root).raw / mqtt_settings.client_id
        writer = SegmentWriter(
            directory,
            max_bytes=settings.landing.segment_max_bytes,
            max_age_s=settings.landing.segment_max_age_s,
            fsync=settings.landing.fsync,
        )
        return cls(
            broker,
            client_id=mqtt_settings.client_id,
            topic_filters=mqtt_settings.topic_filters(),
            writer=writer,
            qos=mqtt_settings.qos,
            flush_max_messages=settings.landing.flush_max_messages,
            flush_max_delay_s=settings.landing.flush_max_delay_s,
            status_path=directory / "status.json",
            topic_prefix=mqtt_settings.topic_prefix,
            max_payload_bytes=settings.max_payload_bytes,
        )

    def serve_metrics(self, host: str, port: int) -> None:
        server = serve(self.metrics, self.health, host, port)
        self.metrics_port = None if server is None else server.server_address[1]

    # -- MQTT callbacks -------------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.stats.last_error = f"broker refused the connection: {reason_code}"
            log.error(
                "broker %s refused the connection: %s; check CIVICFLOW_MQTT__USERNAME/PASSWORD "
                "and the broker's ACL",
                self.broker,
                reason_code,
            )
            self._set_state("refused")
            return
        self._connected = True
        self.stats.connects += 1
        if self._ever_connected and not flags.session_present:
            self.stats.sessions_lost += 1
            log.error(
                "SESSION LOST: broker %s no longer had session %r. Messages queued for this listener "
                "while it was away may be gone; check the broker's persistence and "
                "persistent_client_expiration settings",
                self.broker,
                self.client_id,
            )
        self._ever_connected = True
        client.subscribe([(f, self.qos) for f in self.topic_filters])
        log.info(
            "connected to %s (session present: %s), subscribing to %s",
            self.broker,
            flags.session_present,
            ", ".join(self.topic_filters),
        )

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [f for f, rc in zip(self.topic_filters, reason_codes, strict=False) if rc.is_failure]
        if refused:
            self.stats.last_error = f"subscription refused for {', '.join(refused)}"
            log.error(
                "broker refused the subscription to %s; check the listener user's ACL", ", ".join(refused)
            )
            self._set_state("subscription_refused")
            return
        self._subscribed = True
        self._backoff = 0.2
        self.stats.last_error = None
        self._set_state("subscribed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected = False
        self._subscribed = False
        if self.stats.state not in ("landing_failed", "stopping", "stopped"):
            self.stats.state = "disconnected"
            log.warning("disconnected from %s: %s", self.broker, reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        if self._fault is not None:
            return  # not landed, not acknowledged: the broker redelivers it after we resume
        payload = message.payload
        try:
            self.writer.append(message._topic, payload, time.time_ns(), message.qos, message.retain)
        except OSError as exc:
            self._fault = exc
            return
        if message.qos > 0:
            if not self._pending:
                self._oldest_pending = time.monotonic()
            self._pending.append((message.mid, message.qos))
        self._delivered += 1
        self.stats.received += 1
        self.stats.bytes += len(payload)
        if len(payload) > self.max_payload_bytes:
            self.stats.rejections["payload_too_large"] += 1
        elif topic_format(message.topic, self.topic_prefix) is None:
            self.stats.rejections["bad_topic"] += 1

    # -- health ---------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        self.stats.state = state
        self.stats.healthy = state == "subscribed" and self._fault is None
        self.write_status(force=True)

    def closed_backlog(self) -> int:
        """Closed segments in this listener's directory that staging has not recorded yet."""
        return closed_backlog(self.writer.directory)

    def health(self) -> dict:
        stats = self.stats
        return {
            "client_id": self.client_id,
            "pid": os.getpid(),
            "broker": str(self.broker),
            "healthy": stats.healthy,
            "state": stats.state,
            "last_error": stats.last_error,
            "received": stats.received,
            "landed": stats.landed,
            "acked": stats.acked,
            "bytes": stats.bytes,
            "connects": stats.connects,
            "sessions_lost": stats.sessions_lost,
            "landing_failures": stats.landing_failures,
            "rejections": dict(stats.rejections),
            "open_segment_age_s": round(self.writer.open_age_s, 3),
            "segments_closed": len(stats.segments_closed),
            "metrics_port": self.metrics_port,
            "updated_at": time.time(),
        }

    def _publish_metrics(self) -> None:
        m, now, seen = self.metrics, self.stats, self._published
        for name in ("received", "landed", "acked", "bytes", "landing_failures", "sessions_lost", "connects"):
            delta = getattr(now, name) - getattr(seen, name)
            if delta:
                getattr(m, name).inc(delta)
                setattr(seen, name, getattr(now, name))
        for reason, count in now.rejections.items():
            delta = count - seen.rejections[reason]
            if delta:
                m.rejections.labels(reason=reason).inc(delta)
                seen.rejections[reason] = count
        m.healthy.set(1 if now.healthy else 0)
        m.connected.set(1 if self._connected else 0)
        m.open_segment_age.set(self.writer.open_age_s)
        m.closed_backlog.set(self.closed_backlog())

    def write_status(self, *, force: bool = False, min_interval_s: float = 0.5) -> None:
        """Publish counters to the metrics and to a JSON file operators and `civicflow status` read."""
        now = time.monotonic()
        if not force and now - self._status_written < min_interval_s:
            return
        self._status_written = now
        self._publish_metrics()
        if self.status_path is None:
            return
        tmp = self.status_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.health()))
            os.replace(tmp, self.status_path)
        except OSError as exc:  # the raw zone is failing; /health still tells the truth
            log.debug("cannot write %s: %s", self.status_path, exc)

    def _had_session_before(self) -> bool:
        if self.status_path is None:
            return False
        try:
            return json.loads(self.status_path.read_text()).get("connects", 0) > 0
        except (OSError, ValueError):
            return False

    # -- landing --------------------------------------------------------------------------------

    def _commit(self, *, drained: bool = False) -> None:
        """Make landed messages durable, then acknowledge them."""
        self.writer.flush()
        self.stats.flushes += 1
        self.stats.landed = self.stats.received
        if self._connected and self._pending:
            self._send_acks()
            self.stats.acked += len(self._pending)
        self._pending.clear()
        self.write_status(min_interval_s=0.05 if drained else 0.5)

    def _send_acks(self) -> None:
        """Send the group's PUBACKs, in one write when paho has nothing else queued.

        paho's `ack()` sends each PUBACK with its own system call; a group of 500 then costs 500
        writes. When paho's own output queue is empty, the group's PUBACKs (4 bytes each: type,
        length, packet id) go out in one blocking `sendall`, so they cannot interleave with a
        packet paho is writing. Otherwise, and for QoS 2, paho sends them one by one.
        """
        sock = self.client.socket()
        if sock is None or self.client.want_write() or any(qos != 1 for _, qos in self._pending):
            for mid, qos in self._pending:
                self.client.ack(mid, qos)
            return
        data = b"".join(PUBACK_HEADER + mid.to_bytes(2, "big") for mid, _ in self._pending)
        sock.settimeout(10.0)
        try:
            sock.sendall(data)
        except OSError as exc:  # the connection broke: nothing acknowledged, the broker redelivers
            log.warning("sending %d acknowledgements failed (%s)", len(self._pending), exc)
        finally:
            sock.settimeout(0.0)

    def _roll(self) -> None:
        self._commit()
        closed = self.writer.roll()
        if closed is not None:
            self.stats.segments_closed.append(closed.name)

    def _landing_failed(self, exc: OSError, stop: threading.Event) -> None:
        """Stop acknowledging, step away from the broker, wait for the disk, then resume."""
        self._fault = exc
        self.stats.landing_failures += 1
        self.stats.last_error = f"raw zone refused a write: {exc}"
        unacked = len(self._pending)
        log.error(
            "LANDING FAILED in %s: %s. Stopped acknowledging; %d unacknowledged messages stay with "
            "the broker and are redelivered once the raw zone takes writes again. Free space or fix "
            "permissions there; the listener resumes by itself",
            self.writer.directory,
            exc,
            unacked,
        )
        self._pending.clear()
        self.stats.received = self.stats.landed  # what was not landed will come again
        self.writer.abandon()
        self._set_state("landing_failed")
        if self._connected:
            self.client.disconnect()
            deadline = time.monotonic() + 2.0
            while self.client.want_write() and time.monotonic() < deadline:
                self.client.loop(timeout=0.05)
        self._connected = False
        delay = 0.5
        while not stop.wait(delay):
            try:
                self.writer.probe()
                self.writer.recover()
            except OSError as again:
                self.stats.last_error = f"raw zone refused a write: {again}"
                log.warning("raw zone still refuses writes (%s); next check in %.0fs", again, delay)
                self.write_status(force=True)
                delay = min(delay * 2, 10.0)
                continue
            break
        self._fault = None
        if stop.is_set():
            return
        log.info("raw zone takes writes again; reconnecting to %s to resume", self.broker)
        self._set_state("resuming")
        self._connect_with_backoff(stop)

    def _connect_with_backoff(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._set_state("connecting")
            try:
                if self._connect_called:
                    self.client.reconnect()
                else:
                    self._connect_called = True
                    self.client.connect(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
                return
            except (OSError, ssl.SSLError) as exc:
                self.stats.last_error = f"cannot reach broker: {exc}"
                log.warning("cannot reach broker %s (%s); retrying in %.1fs", self.broker, exc, self._backoff)
                self._set_state("disconnected")
                stop.wait(self._backoff)
                self._backoff = min(self._backoff * 2, 30.0)

    def run(self, stop: threading.Event) -> ListenerStats:
        """Run until `stop` is set; then land, acknowledge and close what is open."""
        self._connect_with_backoff(stop)
        wait = 0.0
        while not stop.is_set():
            before = self._delivered
            rc = self.client.loop(timeout=wait)
            got_message = self._delivered != before
            # paho's loop() reads one packet; read on while messages keep coming, up to a group.
            while (
                got_message
                and rc == MQTTErrorCode.MQTT_ERR_SUCCESS
                and len(self._pending) < self.flush_max_messages
            ):
                more = self._delivered
                rc = self.client.loop_read()
                if self._delivered == more:
                    break
            try:
                if self._fault is not None:
                    raise self._fault
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._connected = False
                    self._commit()  # keeps what arrived; the acks cannot be sent, so it comes again
                    log.warning(
                        "connection to %s lost (%s); reconnecting in %.1fs", self.broker, rc, self._backoff
                    )
                    stop.wait(self._backoff)
                    self._backoff = min(self._backoff * 2, 30.0)
                    self._connect_with_backoff(stop)
                    wait = 0.0
                    continue
                if self._pending and (
                    not got_message
                    or len(self._pending) >= self.flush_max_messages
                    or time.monotonic() - self._oldest_pending >= self.flush_max_delay_s
                ):
                    self._commit(drained=not got_message)
                if self.writer.due_to_roll():
                    self._roll()
            except OSError as exc:
                self._landing_failed(exc, stop)
                wait = 0.0
                continue
            if not got_message:
                self.write_status()
            wait = 0.0 if got_message else 0.5
        self._shutdown()
        return self.stats

    def _shutdown(self) -> None:
        self._set_state("stopping")
        try:
            self._roll()
        except OSError as exc:
            self.stats.last_error = f"raw zone refused the last write: {exc}"
            log.error("could not land the last messages (%s); they were not acknowledged", exc)
            self.writer.abandon()
        deadline = time.monotonic() + 5.0
        while self._connected and self.client.want_write() and time.monotonic() < deadline:
            self.client.loop(timeout=0.05)
        if self._connected:
            self.client.disconnect()
            while self.client.want_write() and time.monotonic() < deadline:
                self.client.loop(timeout=0.05)
        try:
            self.writer.close()
        except OSError as exc:
            log.error("could not close the open segment (%s); the next start recovers it", exc)
        self._set_state("stopped")
        log.info(
            "listener stopped: %d received, %d acknowledged, %d segments closed",
            self.stats.received,
            self.stats.acked,
            len(self.stats.segments_closed),
        )
