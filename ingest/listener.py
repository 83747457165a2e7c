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

The session is the listener's queue, so losing it is reported as loudly as a landing failure: when
the broker closes the connection because another client connected with this client id (MQTT 5
reason code 0x8E, *session taken over*), and when a reconnect finds no session although this
client id had one (the queue is gone). Each is counted by cause, makes the listener unhealthy for
a while and logs an error that says what to do; the listener reconnects and goes on landing. It
speaks MQTT 5 to see the takeover's reason code, and MQTT 3.1.1 to a broker that refuses MQTT 5
(the embedded demo broker), where a takeover looks like any lost connection.

With an object store (`CIVICFLOW_STORAGE__URL`), a message is acknowledged only once the segment
holding it is in the store: closed segments go to `civicflow.ingest.upload.SegmentUploader`, and the
acknowledgements they are owed are sent when it reports them uploaded (docs/scaling.md).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from civicflow.health import closed_backlog
from civicflow.ingest.metrics import ListenerMetrics, serve
from civicflow.warehouse.segments import SegmentWriter
from civicflow.wire import is_bad_topic, is_feedback_topic

if TYPE_CHECKING:
    from civicflow.ingest.upload import Ack, SegmentUploader
    from civicflow.settings import Settings

log = logging.getLogger(__name__)

PUBACK_HEADER = bytes((0x40, 0x02))
"""PUBACK fixed header: packet type 4, remaining length 2 (the packet id follows). The same bytes in
MQTT 5, where a PUBACK without reason code and properties means success."""
SESSION_TAKEN_OVER = 0x8E
"""MQTT 5 DISCONNECT reason code: another client connected with this client id."""
UNSUPPORTED_PROTOCOL_VERSION = 0x84
"""MQTT 5 CONNACK reason code of a broker that does not speak MQTT 5 (paho maps 3.1.1's code 1 to it)."""
SESSION_NEVER_EXPIRES = 0xFFFFFFFF
"""Session Expiry Interval asking the broker to keep the session like an MQTT 3.1.1 persistent one;
Mosquitto caps it at `persistent_client_expiration`."""
MQTT5_CONNACK_TIMEOUT_S = 3.0
"""How long to wait for the answer to the first MQTT 5 CONNECT before taking the broker for one that
cannot parse it (amqtt 0.12 waits forever on a CONNECT with properties) and speaking MQTT 3.1.1."""
SESSION_ALARM_S = 600.0
"""How long a lost session keeps the listener unhealthy: long enough for a probe, `civicflow status`
or an alert to see it, though the listener is landing again."""


@dataclass
class ListenerStats:
    received: int = 0
    landed: int = 0
    acked: int = 0
    bytes: int = 0
    flushes: int = 0
    connects: int = 0
    sessions_lost: int = 0
    sessions_lost_by_cause: Counter = field(default_factory=Counter)
    session_lost: dict | None = None  # the last one: cause, when, what it means and what to do
    landing_failures: int = 0
    feedback_skipped: int = 0  # Civicflow's own feedback summaries (retained): acknowledged, never landed
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
        session_alarm_s: float = SESSION_ALARM_S,
        clock: Callable[[], float] = time.time,
        uploader: SegmentUploader | None = None,
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
        self.session_alarm_s = session_alarm_s
        self._clock = clock
        self._session_lost_at: float | None = None
        self._takeovers_in_a_row = 0
        self._subscribed_since = 0.0
        # A session this client id had before (a restart) must still be on the broker.
        self._ever_connected = self._had_session_before()
        self.protocol = mqtt.MQTTv5
        self._downgrade = False
        self._mqtt5_answered = False  # a CONNACK to MQTT 5 came back: the broker speaks it
        self._connect_sent_at: float | None = None
        # Object storage: acknowledgements wait for the upload of the segment holding their message.
        self.uploader = uploader
        if uploader is not None:
            uploader.bind_metrics(self.metrics.registry)
        self._generation = 0  # connections made: a packet id is acknowledged on its own connection only
        self._awaiting_upload: list[Ack] = []  # the open segment's messages, landed, not acknowledged
        self.client = self._new_client()

    def _new_client(self) -> mqtt.Client:
        """A paho client for `self.protocol`, with a persistent session either way."""
        if self.protocol == mqtt.MQTTv5:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5, manual_ack=True
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                clean_session=False,
                protocol=self.protocol,
                manual_ack=True,
            )
        self.broker.configure(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    @classmethod
    def from_settings(cls, settings: Settings) -> Listener:
        """The listener `civicflow listen` runs: one settings object in, everything wired."""
        from civicflow.warehouse.layout import Layout

        mqtt_settings = settings.mqtt
        broker = BrokerAddress.from_settings(settings)
        directory = Layout(settings.data_root).raw / mqtt_settings.client_id
        uploader = None
        max_age_s = settings.landing.segment_max_age_s
        if settings.storage.url is not None:  # object storage: see ingest/upload.py
            from civicflow.ingest.upload import S3_SEGMENT_MAX_AGE_S, SegmentUploader
            from civicflow.warehouse.storage import open_store

            if "segment_max_age_s" not in settings.landing.model_fields_set:
                max_age_s = S3_SEGMENT_MAX_AGE_S
            store = open_store(settings.storage, settings.data_root)
            uploader = SegmentUploader(store, mqtt_settings.client_id, directory)
        writer = SegmentWriter(
            directory,
            max_bytes=settings.landing.segment_max_bytes,
            max_age_s=max_age_s,
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
            uploader=uploader,
        )

    def serve_metrics(self, host: str, port: int) -> None:
        server = serve(self.metrics, self.health, host, port)
        self.metrics_port = None if server is None else server.server_address[1]

    # -- MQTT callbacks -------------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connect_sent_at = None
        if reason_code == UNSUPPORTED_PROTOCOL_VERSION and self.protocol == mqtt.MQTTv5:
            log.info(
                "broker %s does not speak MQTT 5; using MQTT 3.1.1, where a session taken over by "
                "another client looks like a lost connection",
                self.broker,
            )
            self._downgrade = True
            return
        if self.protocol == mqtt.MQTTv5:
            self._mqtt5_answered = True
        if reason_code.is_failure:
            self.stats.last_error = f"broker refused the connection: {reason_code}"
            log.error(
                "broker %s refused the connection: %s; check CIVICFLOW_MQTT__USERNAME/PASSWORD "
                "and the broker's ACL",
                self.broker,
                reason_code,
                extra={"broker": str(self.broker), "reason_code": str(reason_code)},
            )
            self._set_state("refused")
            return
        self._connected = True
        self._generation += 1
        self.stats.connects += 1
        if self._ever_connected and not flags.session_present:
            self._session_lost(
                "not_present",
                f"SESSION LOST: broker {self.broker} no longer had session {self.client_id!r}, so "
                "messages queued for this listener while it was away are gone. Causes: a broker "
                "restarted without persistence or from an old persistence file, a session older than "
                "persistent_client_expiration, or another client that connected with this client id "
                "and a clean session. Check the broker's persistence settings and its log for this "
                "client id; Civicflow cannot recover those messages, ask the councils to resend them",
            )
        self._ever_connected = True
        client.subscribe([(f, self.qos) for f in self.topic_filters])
        log.info(
            "connected to %s (session present: %s), subscribing to %s",
            self.broker,
            flags.session_present,
            ", ".join(self.topic_filters),
            extra={"broker": str(self.broker), "session_present": bool(flags.session_present)},
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
        self._subscribed_since = time.monotonic()
        self._backoff = 0.2
        self.stats.last_error = None
        self._set_state("subscribed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected = False
        self._subscribed = False
        if reason_code == SESSION_TAKEN_OVER:
            self._takeovers_in_a_row += 1
            self._session_lost(
                "taken_over",
                f"SESSION TAKEN OVER: another client connected to {self.broker} with this listener's "
                f"client id {self.client_id!r}, and the broker closed this connection (MQTT reason "
                "code 0x8E). While that client holds the session, readings go to it, not to the raw "
                "zone. Find it in the broker's log (\"New client connected ... as "
                f'{self.client_id}"); give every listener process its own broker user and client id, '
                "and bind client ids to users on the broker (deploy/mosquitto/README.md). "
                "Reconnecting to take the session back",
                state="session_taken_over",
            )
            return
        if self.stats.state not in ("landing_failed", "stopping", "stopped"):
            self.stats.state = "disconnected"
            log.warning("disconnected from %s: %s", self.broker, reason_code)

    def _session_lost(self, cause: str, message: str, *, state: str | None = None) -> None:
        """Count, log and report a session that is no longer this listener's alone."""
        self.stats.sessions_lost += 1
        self.stats.sessions_lost_by_cause[cause] += 1
        self._session_lost_at = time.monotonic()
        self.stats.session_lost = {"cause": cause, "at": self._clock(), "message": message}
        self.stats.last_error = message
        log.error("%s", message)
        if state is not None:
            self._set_state(state)
        else:
            self.write_status(force=True)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        if self._fault is not None:
            return  # not landed, not acknowledged: the broker redelivers it after we resume
        payload = message.payload
        topic = message._topic  # bytes: paho's `topic` property raises on a topic that is not UTF-8
        if topic.endswith(b"/feedback") and is_feedback_topic(
            topic.decode("utf-8", "replace"), self.topic_prefix
        ):
            # `<prefix>/#` also matches the summaries Civicflow publishes to gateways: not readings.
            if message.qos > 0:
                if not self._pending:
                    self._oldest_pending = time.monotonic()
                self._pending.append((message.mid, message.qos))
            self._delivered += 1
            self.stats.feedback_skipped += 1
            return
        try:
            self.writer.append(topic, payload, time.time_ns(), message.qos, message.retain)
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
        try:
            bad_topic = is_bad_topic(topic.decode("utf-8"), self.topic_prefix)
        except UnicodeDecodeError:
            bad_topic = True
        # Staging judges the topic before the payload, so a bad topic is a bad topic whatever its size.
        if bad_topic:
            self.stats.rejections["bad_topic"] += 1
        elif len(payload) > self.max_payload_bytes:
            self.stats.rejections["payload_too_large"] += 1

    # -- health ---------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        self.stats.state = state
        self.stats.healthy = state == "subscribed" and self._fault is None
        self.write_status(force=True)

    def _session_alarm(self) -> bool:
        """Whether a lost session is recent enough to keep the listener unhealthy."""
        return (
            self._session_lost_at is not None
            and time.monotonic() - self._session_lost_at < self.session_alarm_s
        )

    @property
    def healthy(self) -> bool:
        """Subscribed and landing, with no session lost in the last `session_alarm_s` seconds."""
        return (
            self.stats.healthy
            and not self._session_alarm()
            and (self.uploader is None or self.uploader.healthy)
        )

    def closed_backlog(self) -> int:
        """Closed segments in this listener's directory that staging has not recorded yet."""
        return closed_backlog(self.writer.directory)

    def health(self) -> dict:
        stats = self.stats
        upload = None if self.uploader is None else self.uploader.health(len(self._awaiting_upload))
        return {
            "client_id": self.client_id,
            "pid": os.getpid(),
            "broker": str(self.broker),
            "healthy": self.healthy,
            "state": stats.state,
            # While the alarm lasts, what made the listener unhealthy is the lost session.
            "last_error": stats.last_error
            or (stats.session_lost["message"] if stats.session_lost and self._session_alarm() else None)
            or (upload["last_error"] if upload else None),
            "received": stats.received,
            "landed": stats.landed,
            "acked": stats.acked,
            "feedback_skipped": stats.feedback_skipped,
            "bytes": stats.bytes,
            "connects": stats.connects,
            "sessions_lost": stats.sessions_lost,
            "sessions_lost_by_cause": dict(stats.sessions_lost_by_cause),
            "session_lost": stats.session_lost,
            "protocol": "5" if self.protocol == mqtt.MQTTv5 else "3.1.1",
            "landing_failures": stats.landing_failures,
            "rejections": dict(stats.rejections),
            "open_segment_age_s": round(self.writer.open_age_s, 3),
            "segments_closed": len(stats.segments_closed),
            "metrics_port": self.metrics_port,
            "upload": upload,
            "updated_at": time.time(),
        }

    def _publish_metrics(self) -> None:
        m, now, seen = self.metrics, self.stats, self._published
        for name in ("received", "landed", "acked", "bytes", "landing_failures", "connects"):
            delta = getattr(now, name) - getattr(seen, name)
            if delta:
                getattr(m, name).inc(delta)
                setattr(seen, name, getattr(now, name))
        for reason, count in now.rejections.items():
            delta = count - seen.rejections[reason]
            if delta:
                m.rejections.labels(reason=reason).inc(delta)
                seen.rejections[reason] = count
        for cause, count in now.sessions_lost_by_cause.items():
            delta = count - seen.sessions_lost_by_cause[cause]
            if delta:
                m.sessions_lost.labels(cause=cause).inc(delta)
                seen.sessions_lost_by_cause[cause] = count
        m.healthy.set(1 if self.healthy else 0)
        m.connected.set(1 if self._connected else 0)
        m.open_segment_age.set(self.writer.open_age_s)
        m.closed_backlog.set(self.closed_backlog())
        if self.uploader is not None:
            self.uploader.publish_metrics(len(self._awaiting_upload))

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
        if self.uploader is not None:  # acknowledged once their segment is in the store
            self._awaiting_upload.extend((self._generation, mid, qos) for mid, qos in self._pending)
        elif self._connected and self._pending:
            self._send_acks()
            self.stats.acked += len(self._pending)
        self._pending.clear()
        self.write_status(min_interval_s=0.05 if drained else 0.5)

    def _send_acks(self, acks: list[tuple[int, int]] | None = None) -> None:
        """Send the group's PUBACKs, in one write when paho has nothing else queued.

        paho's `ack()` sends each PUBACK with its own system call; a group of 500 then costs 500
        writes. When paho's own output queue is empty, the group's PUBACKs (4 bytes each: type,
        length, packet id) go out in one blocking `sendall`, so they cannot interleave with a
        packet paho is writing. Otherwise, and for QoS 2, paho sends them one by one.
        """
        acks = self._pending if acks is None else acks
        sock = self.client.socket()
        if sock is None or self.client.want_write() or any(qos != 1 for _, qos in acks):
            for mid, qos in acks:
                self.client.ack(mid, qos)
            return
        data = b"".join(PUBACK_HEADER + mid.to_bytes(2, "big") for mid, _ in acks)
        sock.settimeout(10.0)
        try:
            sock.sendall(data)
        except OSError as exc:  # the connection broke: nothing acknowledged, the broker redelivers
            log.warning("sending %d acknowledgements failed (%s)", len(acks), exc)
        finally:
            sock.settimeout(0.0)

    def _roll(self) -> None:
        self._commit()
        closed = self.writer.roll()
        if closed is not None:
            self.stats.segments_closed.append(closed.name)
            if self.uploader is not None:
                self.uploader.submit(closed, self._awaiting_upload)
        self._awaiting_upload = []

    def _ack_uploaded(self) -> None:
        """Acknowledge the messages of segments the store now holds (object-storage mode).

        A packet id means something only on the connection it came on: messages of an earlier
        connection were redelivered on this one, landed again, and are acknowledged with those.
        """
        if self.uploader is None:
            return
        for segment in self.uploader.take_uploaded():
            acks = [(mid, qos) for generation, mid, qos in segment.acks if generation == self._generation]
            if acks and self._connected:
                self._send_acks(acks)
                self.stats.acked += len(acks)
            stale = len(segment.acks) - (len(acks) if self._connected else 0)
            if stale:
                log.info(
                    "segment %s is in the store; %d of its messages came on an earlier connection and "
                    "were redelivered since (landed again: staging de-duplicates)",
                    segment.name,
                    stale,
                )

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
            extra={"directory": str(self.writer.directory), "unacknowledged": unacked},
        )
        self._pending.clear()
        self._awaiting_upload = []  # the connection is dropped: these come again and are landed again
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
                if self.uploader is not None:
                    self.uploader.rescan()
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
        if self._downgrade:
            self._downgrade = False
            sock = self.client.socket()
            if sock is not None:
                sock.close()
            self.protocol = mqtt.MQTTv311
            self.client = self._new_client()
            self._connect_called = False
        while not stop.is_set():
            self._set_state("connecting")
            try:
                if self._connect_called:
                    self.client.reconnect()
                elif self.protocol == mqtt.MQTTv5:
                    self._connect_called = True
                    session = Properties(PacketTypes.CONNECT)
                    session.SessionExpiryInterval = SESSION_NEVER_EXPIRES
                    if self.uploader is not None:  # acks wait for uploads: a window that holds them
                        from civicflow.ingest.upload import RECEIVE_MAXIMUM

                        session.ReceiveMaximum = RECEIVE_MAXIMUM
                    self.client.connect(
                        self.broker.host,
                        self.broker.port,
                        keepalive=self.broker.keepalive_s,
                        clean_start=False,
                        properties=session,
                    )
                else:
                    self._connect_called = True
                    self.client.connect(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
                self._connect_sent_at = time.monotonic()
                return
            except (OSError, ssl.SSLError) as exc:
                self.stats.last_error = f"cannot reach broker: {exc}"
                log.warning(
                    "cannot reach broker %s (%s); retrying in %.1fs",
                    self.broker,
                    exc,
                    self._backoff,
                    extra={"broker": str(self.broker), "retry_in_s": round(self._backoff, 3)},
                )
                self._set_state("disconnected")
                stop.wait(self._backoff)
                self._backoff = min(self._backoff * 2, 30.0)

    def run(self, stop: threading.Event) -> ListenerStats:
        """Run until `stop` is set; then land, acknowledge and close what is open."""
        if self.uploader is not None:
            self.uploader.start()
        self._connect_with_backoff(stop)
        wait = 0.0
        while not stop.is_set():
            before = self._delivered
            rc = self.client.loop(timeout=wait)
            got_message = self._delivered != before
            if self._no_answer_to_mqtt5():
                log.info(
                    "broker %s did not answer an MQTT 5 CONNECT within %.0fs; using MQTT 3.1.1, where a "
                    "session taken over by another client looks like a lost connection",
                    self.broker,
                    MQTT5_CONNACK_TIMEOUT_S,
                )
                self._downgrade = True
                rc = MQTTErrorCode.MQTT_ERR_CONN_LOST
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
                    delay = self._reconnect_delay()
                    log.warning("connection to %s lost (%s); reconnecting in %.1fs", self.broker, rc, delay)
                    stop.wait(delay)
                    self._backoff = min(self._backoff * 2, 30.0)
                    self._connect_with_backoff(stop)
                    wait = 0.0
                    continue
                if (
                    self._takeovers_in_a_row
                    and time.monotonic() - self._subscribed_since > 60
                    and self._subscribed
                ):
                    self._takeovers_in_a_row = 0  # a minute without a takeover: the other client is gone
                if self._pending and (
                    not got_message
                    or len(self._pending) >= self.flush_max_messages
                    or time.monotonic() - self._oldest_pending >= self.flush_max_delay_s
                ):
                    self._commit(drained=not got_message)
                if self.writer.due_to_roll() or self._unacknowledged_full():
                    self._roll()
                self._ack_uploaded()
            except OSError as exc:
                self._landing_failed(exc, stop)
                wait = 0.0
                continue
            if not got_message:
                self.write_status()
            wait = 0.0 if got_message else 0.5
        self._shutdown()
        return self.stats

    def _unacknowledged_full(self) -> bool:
        if self.uploader is None:
            return False
        from civicflow.ingest.upload import ROLL_AT_UNACKNOWLEDGED

        return len(self._awaiting_upload) + len(self._pending) >= ROLL_AT_UNACKNOWLEDGED

    def _no_answer_to_mqtt5(self) -> bool:
        return (
            self.protocol == mqtt.MQTTv5
            and not self._mqtt5_answered
            and self._connect_sent_at is not None
            and time.monotonic() - self._connect_sent_at > MQTT5_CONNACK_TIMEOUT_S
        )

    def _reconnect_delay(self) -> float:
        """The wait before reconnecting: longer after each takeover in a row, so a listener and
        another client with its id take the session from each other at most every 30 s."""
        if self._downgrade:
            return 0.0
        if self._takeovers_in_a_row:
            return min(0.5 * 2 ** (self._takeovers_in_a_row - 1), 30.0)
        return self._backoff

    def _drain_uploads(self) -> None:
        """Give the last segments their upload and their messages their acknowledgement."""
        if self.uploader is None:
            return
        from civicflow.ingest.upload import SHUTDOWN_WAIT_S

        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        while self.uploader.busy and time.monotonic() < deadline:
            # Nothing is read from the broker now (what it sends is redelivered after a restart);
            # acknowledgements still go out as their segments reach the store.
            self.uploader.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            self._ack_uploaded()
            if self._connected and self.client.want_write():
                self.client.loop_write()
        segments, messages = self.uploader.waiting()
        if segments:
            log.error(
                "stopping with %d raw segments (%d messages) not yet in %s: they stay in %s and are "
                "uploaded at the next start; the broker redelivers their unacknowledged messages",
                segments,
                messages,
                self.uploader.store.url,
                self.writer.directory,
            )

    def _shutdown(self) -> None:
        self._set_state("stopping")
        try:
            self._roll()
        except OSError as exc:
            self.stats.last_error = f"raw zone refused the last write: {exc}"
            log.error("could not land the last messages (%s); they were not acknowledged", exc)
            self.writer.abandon()
        self._drain_uploads()
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
        if self.uploader is not None:
            self.uploader.stop()
        self._set_state("stopped")
        log.info(
            "listener stopped: %d received, %d acknowledged, %d segments closed",
            self.stats.received,
            self.stats.acked,
            len(self.stats.segments_closed),
            extra={
                "received": self.stats.received,
                "acknowledged": self.stats.acked,
                "segments_closed": len(self.stats.segments_closed),
            },
        )
