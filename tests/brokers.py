"""Real MQTT brokers and subscribers for integration tests.

`run_mosquitto` starts a private Mosquitto on a free port, never the system one on 1883, with a
configuration that, unlike Mosquitto's defaults, never drops a QoS 1 message for a subscriber.
`Collector` is a paho subscriber that records every payload it receives.

`deploy_mosquitto_config` renders the example production configuration in deploy/mosquitto/ for a
test broker (free ports, temporary paths), so the security tests exercise the example itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

MOSQUITTO = Path(os.environ.get("CIVICFLOW_TEST_MOSQUITTO", "/usr/sbin/mosquitto"))
MOSQUITTO_PASSWD = os.environ.get("CIVICFLOW_TEST_MOSQUITTO_PASSWD") or shutil.which("mosquitto_passwd")
DEPLOY_MOSQUITTO = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"


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
    user = _current_user()
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


def _current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


_PATH_DIRECTIVES = ("cafile", "capath", "certfile", "keyfile", "crlfile", "password_file", "acl_file")


def deploy_mosquitto_config(
    workdir: Path,
    *,
    ports: Mapping[int, int],
    files: Mapping[str, Path],
    source: Path = DEPLOY_MOSQUITTO / "mosquitto.conf",
) -> str:
    """Render deploy/mosquitto/mosquitto.conf for a private test broker.

    Every line is kept except: each `listener <port> ...` moves to its test port on 127.0.0.1,
    each file directive (`cafile`, `password_file`, `acl_file`, ...) points at the test's file,
    persistence goes to `workdir`, logs go to stderr, and the broker runs as the current user.

    Args:
        workdir: Directory for the persistence file.
        ports: Test port for each port the example listens on, e.g. {8883: 41234, 1883: 41235}.
        files: Test path for each file directive the example uses, e.g. {"acl_file": ...}.
        source: The example configuration.

    Returns:
        The configuration text.

    Raises:
        ValueError: The example has a listener or a file directive the test gave no value for,
            so the rendered broker would not be the one the test meant to run.
    """
    out = [f"# Rendered by tests/brokers.py from {source.name} for one test."]
    for number, line in enumerate(source.read_text().splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            out.append(line)
            continue
        key = words[0]
        if key == "listener":
            port = int(words[1])
            if port not in ports:
                raise ValueError(f"{source}:{number}: no test port for listener {port}")
            out.append(f"listener {ports[port]} 127.0.0.1")
        elif key in _PATH_DIRECTIVES:
            if key not in files:
                raise ValueError(f"{source}:{number}: no test file for {key}")
            out.append(f"{key} {files[key]}")
        elif key == "persistence_location":
            out.append(f"persistence_location {workdir}/")
        elif key == "log_dest":
            out.append("log_dest stderr")
        elif key == "user":
            continue
        else:
            out.append(line)
    out.append("# As root Mosquitto would switch to the 'mosquitto' user, who cannot read pytest's tmp_path.")
    out.append(f"user {_current_user()}")
    out.append("")
    return "\n".join(out)


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """Write a Mosquitto password file (salted hashes) with `mosquitto_passwd -U`.

    The plain `user:password` lines are hashed in place, so no password is ever on a command line.
    """
    if MOSQUITTO_PASSWD is None:
        raise RuntimeError("mosquitto_passwd not found; set CIVICFLOW_TEST_MOSQUITTO_PASSWD")
    path.write_text("".join(f"{user}:{password}\n" for user, password in users.items()))
    path.chmod(0o600)
    subprocess.run([MOSQUITTO_PASSWD, "-U", str(path)], check=True, capture_output=True)
    return path


class MosquittoProcess:
    """One private Mosquitto broker; restartable on the same port and persistence file.

    By default it runs `mosquitto_config`; pass `config` to run another configuration (its
    listeners must include `port`, and `extra_ports` names any others to wait for at start).
    """

    def __init__(
        self,
        port: int,
        workdir: Path,
        *,
        persistence: bool = True,
        start_timeout_s: float = 10.0,
        config: str | None = None,
        extra_ports: Sequence[int] = (),
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.extra_ports = tuple(extra_ports)
        self.workdir = workdir
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.persistence_path = workdir / "mosquitto.db"
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        if config is None:
            config = mosquitto_config(port, workdir, persistence=persistence)
        self.config_path.write_text(config)

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
            if all(_accepts_connections(self.host, p) for p in (self.port, *self.extra_ports)):
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

    def reload(self) -> None:
        """Send SIGHUP: Mosquitto rereads its password and ACL files, keeping connections."""
        if self._process is None or not self.running:
            raise RuntimeError(f"mosquitto on port {self.port} is not running")
        self._process.send_signal(signal.SIGHUP)


@contextlib.contextmanager
def run_mosquitto(
    tmp_path: Path,
    port: int | None = None,
    persistence: bool = True,
    *,
    config: str | None = None,
    extra_ports: Sequence[int] = (),
) -> Iterator[MosquittoProcess]:
    """Run a private Mosquitto for the duration of a `with` block.

    Args:
        tmp_path: Directory for the configuration, log and persistence file.
        port: Port to listen on; a free one when None.
        persistence: Whether to keep sessions and queued messages across restarts.
        config: A whole configuration to run instead of `mosquitto_config` (it must listen on
            `port`, so pass `port` too).
        extra_ports: Other ports `config` listens on, to wait for at start.

    Yields:
        The running broker.
    """
    port = port if port is not None else free_port()
    broker = MosquittoProcess(
        port,
        tmp_path / f"mosquitto-{port}",
        persistence=persistence,
        config=config,
        extra_ports=extra_ports,
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Collector:
    """A paho subscriber that keeps every payload it receives, with a fixed client id.

    Optionally authenticated (`username`, `password`) and over TLS (`ca_file`: the CA that signed
    the broker's certificate).
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        *,
        client_id: str,
        qos: int = 1,
        clean_session: bool = False,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.topic_filter = topic_filter
        self.qos = qos
        self.payloads: list[bytes] = []
        self.topics: list[str] = []
        self.retained: list[bool] = []
        self.session_present: bool | None = None
        self.connack: ReasonCode | None = None
        self._condition = threading.Condition()
        self._subscribed = threading.Event()
        self._granted: list[ReasonCode] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
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
        self.connack = reason_code
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
            self.topics.append(message.topic)
            self.retained.append(bool(message.retain))
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


def deploy_nats_config(
    source: Path,
    *,
    addresses: Mapping[str, str],
    store_dir: Path,
    settings: Mapping[str, str] | None = None,
) -> str:
    """Render a configuration of deploy/nats/ (nats-server.conf, cluster.conf) for a private test server.

    Every line is kept except: each address in `addresses` (in `listen:`, `http:` and route lines,
    e.g. "0.0.0.0:8883" or "nats-2.civicflow.internal:6222") becomes its test address,
    `store_dir` moves to `store_dir`, each `<name>: <value>` named in `settings` gets the test's
    value, and the `tls { ... }` block is left out (the gateway simulator speaks plain MQTT).
    `include` lines stay relative: the test puts the included files beside the rendered one.

    Args:
        source: The example configuration.
        addresses: Test `host:port` for each address the example listens on or routes to.
        store_dir: JetStream's directory for the test server.
        settings: Test values for settings of the example, e.g. {"ack_wait": '"2s"'}.

    Returns:
        The configuration text.

    Raises:
        ValueError: The example has an address the test gave no value for (the test server would
            bind or dial a real one), or a setting to replace is not in the example.
    """
    settings = dict(settings or {})
    unused = set(settings)
    out = [f"# Rendered by tests/brokers.py from {source.name} for one test."]
    skipping = 0  # brace depth inside the left-out tls block
    for number, line in enumerate(source.read_text().splitlines(), 1):
        stripped = line.strip()
        if skipping:
            skipping += stripped.count("{") - stripped.count("}")
            continue
        if not stripped or stripped.startswith("#"):
            out.append(line)
            continue
        if stripped.startswith("tls {") or stripped.startswith("tls: {"):
            out.append(line[: len(line) - len(line.lstrip())] + "# tls block left out for the test")
            skipping = stripped.count("{") - stripped.count("}")
            continue
        key = stripped.split(":", 1)[0].strip()
        address = None
        if key in ("listen", "http"):
            address = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("nats-route://"):
            address = stripped.removeprefix("nats-route://")
        if address is not None:
            if address not in addresses:
                raise ValueError(f"{source}:{number}: no test address for {address}")
            out.append(line.replace(address, addresses[address]))
        elif key == "store_dir":
            out.append(f'  store_dir: "{store_dir}"')
        elif key in settings:
            out.append(f"{line[: len(line) - len(line.lstrip())]}{key}: {settings[key]}")
            unused.discard(key)
        else:
            out.append(line)
    if unused:
        raise ValueError(f"{source}: no setting {', '.join(sorted(unused))} to replace")
    out.append("")
    return "\n".join(out)
