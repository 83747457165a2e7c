"""Real MQTT brokers and subscribers for integration tests.

`run_mosquitto` starts a private Mosquitto on a free port, never the system one on 1883, with a
configuration that, unlike Mosquitto's defaults, never drops a QoS 1 message for a subscriber.
`Collector` is a paho subscriber that records every payload it receives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

MOSQUITTO = Path(os.environ.get("CIVICFLOW_TEST_MOSQUITTO", "/usr/sbin/mosquitto"))


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def mosquitto_config(port: int, workdir: Path, *, persistence: bool) -> str:
    """Render the test broker's mosquitto.conf.

    Args:
        port: Port of the only listener, on 127.0.0.1.
        workdir: Directory for the persistence file.
        persistence: Whether sessions and queued messages survive a restart.

    Returns:
        The configuration text.
    """
    user = pwd.getpwuid(os.geteuid()).pw_name
    return "\n".join(
        [
            "# Written by tests/brokers.py for one test; not for production.",
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "# Run as whoever started the test: as root Mosquitto would otherwise switch to the",
            "# 'mosquitto' user, which cannot write the persistence file under pytest's private tmp_path.",
            f"user {user}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {workdir}/",
            "persistence_file mosquitto.db",
            "autosave_interval 1",
            "# Mosquitto's default max_queued_messages of 1000 silently drops QoS 1 messages for an",
            "# offline persistent subscriber (and for an online one whose in-flight window is full).",
            "# The tests publish tens of thousands of messages and must see every one, so: no limits.",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "max_inflight_messages 1000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "",
        ]
    )


class MosquittoProcess:
    """One private Mosquitto broker; restartable on the same port and persistence file."""

    def __init__(
        self, port: int, workdir: Path, *, persistence: bool = True, start_timeout_s: float = 10.0
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.workdir = workdir
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.persistence_path = workdir / "mosquitto.db"
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(mosquitto_config(port, workdir, persistence=persistence))

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        """The broker's log so far, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def start(self) -> None:
        """Start (or restart) the broker and wait until its port accepts connections.

        Raises:
            RuntimeError: Mosquitto exited or did not listen within the timeout; the message
                includes its log.
        """
        if self.running:
            raise RuntimeError(f"mosquitto on port {self.port} is already running")
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with code {self._process.returncode} before "
                    f"listening on port {self.port}; its log:\n{self.log_text()}"
                )
            if _accepts_connections(self.host, self.port):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"mosquitto did not listen on port {self.port} within "
            f"{self.start_timeout_s:.0f}s; its log:\n{self.log_text()}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker with SIGTERM, which saves the persistence file; SIGKILL if it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("mosquitto on port %d ignored SIGTERM; killing it", self.port)
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Kill the broker with SIGKILL: a crash, losing whatever was not autosaved."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


@contextlib.contextmanager
def run_mosquitto(
    tmp_path: Path, port: int | None = None, persistence: bool = True
) -> Iterator[MosquittoProcess]:
    """Run a private Mosquitto for the duration of a `with` block.

    Args:
        tmp_path: Directory for the configuration, log and persistence file.
        port: Port to listen on; a free one when None.
        persistence: Whether to keep sessions and queued messages across restarts.

    Yields:
        The running broker.
    """
    port = port if port is not None else free_port()
    broker = MosquittoProcess(port, tmp_path / f"mosquitto-{port}", persistence=persistence)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Collector:
    """A paho subscriber that keeps every payload it receives, with a fixed client id."""

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        *,
        client_id: str,
        qos: int = 1,
        clean_session: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.topic_filter = topic_filter
        self.qos = qos
        self.payloads: list[bytes] = []
        self.session_present: bool | None = None
        self._condition = threading.Condition()
        self._subscribed = threading.Event()
        self._granted: list[ReasonCode] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        self.session_present = flags.session_present
        if not reason_code.is_failure:
            client.subscribe(self.topic_filter, qos=self.qos)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode], properties: Any
    ) -> None:
        self._granted = list(reason_codes)
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._condition:
            self.payloads.append(message.payload)
            self._condition.notify_all()

    def start(self, timeout_s: float = 10.0) -> list[int]:
        """Connect, subscribe and return the granted QoS levels."""
        self._subscribed.clear()
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            raise TimeoutError(f"no SUBACK from {self.host}:{self.port} within {timeout_s:.0f}s")
        return [rc.value for rc in self._granted]

    def stop(self) -> None:
        """Disconnect cleanly, leaving a persistent session behind on the broker."""
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, count: int, timeout_s: float) -> int:
        """Wait until `count` messages have arrived, or `timeout_s` passes; return the count."""
        with self._condition:
            self._condition.wait_for(lambda: len(self.payloads) >= count, timeout_s)
            return len(self.payloads)

    def quiet_for(self, seconds: float) -> int:
        """Wait until no message has arrived for `seconds`; return the count."""
        with self._condition:
            while True:
                before = len(self.payloads)
                self._condition.wait(seconds)
                if len(self.payloads) == before:
                    return before
