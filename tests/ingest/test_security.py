"""Broker security with a real Mosquitto running the example in deploy/mosquitto/.

The broker's configuration is rendered from deploy/mosquitto/mosquitto.conf and its ACL is
deploy/mosquitto/acl itself, the certificates come from deploy/mosquitto/make-test-certs.sh: what
these tests check is what the example ships. They check that a council's gateway can publish only
under its own council, that nobody gets in without a valid password, that no user can take
another's session (the listener's least of all), that `civicflow listen` lands readings over TLS
with credentials from the environment, and that it never logs its password.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from brokers import (
    DEPLOY_MOSQUITTO,
    Collector,
    MosquittoProcess,
    deploy_mosquitto_config,
    free_port,
    run_mosquitto,
    write_password_file,
)
from factories import land as factories_land
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from civicflow.ingest.gateway import publish_messages
from civicflow.warehouse.segments import list_closed_segments, read_segment

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
NOT_AUTHORIZED = 0x87
LISTENER_USER = "civicflow-listener-1"
SECOND_LISTENER_USER = "civicflow-listener-2"  # a second listener process: one user per connection
# Users of deploy/mosquitto/acl, with passwords made up for the test broker's password file.
PASSWORDS = {
    LISTENER_USER: "listener-pw-5a1e",
    SECOND_LISTENER_USER: "listener-pw-2c90",
    "gw-birmingham-1": "bham-pw-77c2",
    "gw-birmingham-2": "bham-pw-0e4d",
    "gw-leeds-1": "leeds-pw-19d0",
    "lns-chirpstack": "lns-pw-3b4f",
    "civicflow-feedback": "feedback-pw-6d3a",
}
# A password distinctive enough that finding it anywhere means it leaked.
SECRET = "Tr0ub4dor-civicflow-9f27c1e3-secret"
# The broker makes every client's id its user name (use_username_as_clientid), so the listener's
# client id, which names its raw directory, is its user name.
LISTENER_CLIENT_ID = LISTENER_USER


# -- Broker --------------------------------------------------------------------------------------


@dataclass
class SecureBroker:
    """The example broker: TLS on `tls_port`, plain MQTT on `plain_port` (both 127.0.0.1)."""

    process: MosquittoProcess
    tls_port: int
    plain_port: int
    certs: Path
    password_file: Path

    @property
    def ca_file(self) -> Path:
        return self.certs / "ca.crt"


def make_certs(directory: Path, *names: str) -> Path:
    """A throwaway CA and server certificate from the example's own script."""
    subprocess.run(
        ["sh", str(DEPLOY_MOSQUITTO / "make-test-certs.sh"), str(directory), *names],
        check=True,
        capture_output=True,
    )
    return directory


@contextlib.contextmanager
def secure_broker(tmp_path: Path, passwords: dict[str, str] = PASSWORDS) -> Iterator[SecureBroker]:
    certs = make_certs(tmp_path / "certs", "localhost", HOST)
    password_file = write_password_file(tmp_path / "passwd", passwords)
    tls_port, plain_port = free_port(), free_port()
    workdir = tmp_path / f"mosquitto-{plain_port}"
    config = deploy_mosquitto_config(
        workdir,
        ports={8883: tls_port, 1883: plain_port},
        files={
            "cafile": certs / "ca.crt",
            "certfile": certs / "server.crt",
            "keyfile": certs / "server.key",
            "password_file": password_file,
            "acl_file": DEPLOY_MOSQUITTO / "acl",
        },
    )
    with run_mosquitto(tmp_path, plain_port, config=config, extra_ports=[tls_port]) as process:
        yield SecureBroker(process, tls_port, plain_port, certs, password_file)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[SecureBroker]:
    with secure_broker(tmp_path) as running:
        yield running


# -- MQTT clients --------------------------------------------------------------------------------


class Client:
    """A paho client driven by hand (`loop`), so a test sees each CONNACK and PUBACK itself."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None = None,
        *,
        protocol: int = mqtt.MQTTv5,
        ca_file: Path | None = None,
        client_id: str | None = None,
    ) -> None:
        self.port = port
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, ReasonCode] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"sec-{username or 'anonymous'}-{protocol}",
            protocol=protocol,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        self.connack = rc

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        self.pubacks[mid] = rc

    def _loop_until(self, done: Callable[[], bool], timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from the broker")
            if self.client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS and not done():
                return  # connection closed before the answer

    def connect(self) -> ReasonCode | None:
        """Connect and return the CONNACK's reason code (None: closed without one)."""
        self.client.connect(HOST, self.port, keepalive=10)
        self._loop_until(lambda: self.connack is not None)
        return self.connack

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        assert info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
        self._loop_until(lambda: info.mid in self.pubacks)
        assert info.mid in self.pubacks, f"connection closed before the PUBACK for {topic}"
        return self.pubacks[info.mid]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
            self.client.loop(timeout=0.05)


@contextlib.contextmanager
def connected(port: int, username: str, **kwargs: Any) -> Iterator[Client]:
    client = Client(port, username, PASSWORDS[username], **kwargs)
    try:
        connack = client.connect()
        assert connack is not None and connack.value == 0, f"{username} refused: {connack}"
        yield client
    finally:
        client.close()


_collector_ids = itertools.count()


@contextlib.contextmanager
def collecting(port: int, topic_filter: str, username: str, **kwargs: Any) -> Iterator[Collector]:
    collector = Collector(
        HOST,
        port,
        topic_filter,
        client_id=f"sec-collector-{next(_collector_ids)}",
        clean_session=True,
        username=username,
        password=PASSWORDS[username],
        **kwargs,
    )
    assert collector.start() == [1]
    try:
        yield collector
    finally:
        collector.stop()


# -- ACL: a gateway publishes only under its own council ----------------------------------------

FORGED_BY_BIRMINGHAM = [
    "city/leeds/parking/lds-car-park-3",  # another council
    "city/leedsx/parking/p1",  # a council whose name starts like another's
    "city/traffic/birmingham/p1",  # its own name at the wrong level
    "v3/parking@leeds/devices/dev1/up",  # LoRaWAN uplinks belong to network servers
    "application/parking/device/0011223344556677/event/up",
    "civicflow/birmingham/parking/p1",  # outside the city/ prefix
]


def test_gateway_is_refused_outside_its_council_and_nothing_reaches_the_listener(
    broker: SecureBroker,
) -> None:
    with (
        collecting(broker.plain_port, "#", LISTENER_USER) as everything,
        connected(broker.plain_port, "gw-birmingham-1") as birmingham,
        connected(broker.plain_port, "gw-leeds-1") as leeds,
    ):
        refused = {topic: birmingham.publish(topic, b'{"forged": true}') for topic in FORGED_BY_BIRMINGHAM}
        assert {t: rc.value for t, rc in refused.items()} == dict.fromkeys(
            FORGED_BY_BIRMINGHAM, NOT_AUTHORIZED
        )
        assert all(str(rc) == "Not authorized" for rc in refused.values())
        # The listener's own credential cannot inject readings either.
        with connected(broker.plain_port, SECOND_LISTENER_USER) as listener_user:
            assert listener_user.publish("city/leeds/parking/p9", b'{"forged": true}').value == NOT_AUTHORIZED

        assert birmingham.publish("city/birmingham/parking/bhm-001", b'{"seq": 1}').value == 0
        assert leeds.publish("city/leeds/parking/lds-001", b'{"seq": 2}').value == 0
        # A denied publish is dropped before it is routed, so once the two allowed messages
        # (published after every denied one) have arrived, anything else would have too.
        assert everything.wait_for(2, timeout_s=5) == 2
        assert everything.quiet_for(0.3) == 2

    assert sorted(zip(everything.topics, everything.payloads, strict=True)) == [
        ("city/birmingham/parking/bhm-001", b'{"seq": 1}'),
        ("city/leeds/parking/lds-001", b'{"seq": 2}'),
    ]
    assert b"forged" not in b"".join(everything.payloads)


def test_mqtt311_gateway_outside_its_council_gets_a_plain_puback_but_nothing_is_delivered(
    broker: SecureBroker,
) -> None:
    """MQTT 3.1.1 has no PUBACK reason codes: the broker drops the message without saying so."""
    with (
        collecting(broker.plain_port, "city/#", LISTENER_USER) as listener_view,
        connected(broker.plain_port, "gw-birmingham-1", protocol=mqtt.MQTTv311) as birmingham,
    ):
        assert birmingham.publish("city/leeds/parking/p1", b"forged").value == 0
        assert birmingham.publish("city/birmingham/parking/p1", b"genuine").value == 0
        assert listener_view.wait_for(1, timeout_s=5) == 1
        assert listener_view.quiet_for(0.3) == 1
    assert listener_view.payloads == [b"genuine"]


def test_gateway_cannot_read_any_council(broker: SecureBroker) -> None:
    with (
        collecting(broker.plain_port, "city/#", LISTENER_USER) as listener_view,
        collecting(broker.plain_port, "city/#", "gw-birmingham-2") as birmingham_snooping,
        connected(broker.plain_port, "gw-birmingham-1") as birmingham,
        connected(broker.plain_port, "gw-leeds-1") as leeds,
    ):
        # Mosquitto grants the subscription and checks read access on every delivery.
        assert birmingham.publish("city/birmingham/parking/p1", b"bham").value == 0
        assert leeds.publish("city/leeds/parking/p1", b"leeds").value == 0
        assert listener_view.wait_for(2, timeout_s=5) == 2
        assert birmingham_snooping.quiet_for(0.3) == 0
    assert sorted(listener_view.payloads) == [b"bham", b"leeds"]
    assert birmingham_snooping.payloads == []


def test_listener_user_reads_lorawan_uplinks_and_shared_subscriptions(broker: SecureBroker) -> None:
    uplink = "application/parking/device/0011223344556677/event/up"
    with (
        collecting(broker.plain_port, "application/+/device/+/event/up", LISTENER_USER) as lorawan,
        collecting(broker.plain_port, "$share/civicflow/city/#", SECOND_LISTENER_USER) as shared,
        connected(broker.plain_port, "lns-chirpstack") as network_server,
        connected(broker.plain_port, "gw-birmingham-1") as birmingham,
    ):
        assert network_server.publish(uplink, b'{"deviceInfo": {}}').value == 0
        # A network server writes its own uplink topics only.
        assert network_server.publish("city/leeds/parking/p1", b"forged").value == NOT_AUTHORIZED
        assert birmingham.publish("city/birmingham/parking/p1", b"bham").value == 0
        assert lorawan.wait_for(1, timeout_s=5) == 1
        assert shared.wait_for(1, timeout_s=5) == 1
        assert shared.quiet_for(0.3) == 1
    assert list(zip(lorawan.topics, lorawan.payloads, strict=True)) == [(uplink, b'{"deviceInfo": {}}')]
    assert list(zip(shared.topics, shared.payloads, strict=True)) == [("city/birmingham/parking/p1", b"bham")]


def test_broker_takes_a_full_size_reading_and_disconnects_a_client_sending_a_bigger_packet(
    broker: SecureBroker,
) -> None:
    """max_packet_size fits Civicflow's 256 KiB payload limit on the longest topic, and no more."""
    max_payload = 256 * 1024  # CIVICFLOW_MAX_PAYLOAD_BYTES' default
    longest_topic = "city/birmingham/air_quality/" + "d" * 64  # names are at most 64 characters
    full_size = b"[" + b" " * (max_payload - 2) + b"]"
    with (
        collecting(broker.plain_port, "city/#", LISTENER_USER) as listener_view,
        connected(broker.plain_port, "gw-birmingham-1", protocol=mqtt.MQTTv311) as gateway,
    ):
        assert gateway.publish(longest_topic, full_size).value == 0
        assert listener_view.wait_for(1, timeout_s=5) == 1

        too_big = gateway.client.publish(longest_topic, b"x" * (max_payload + 4096), qos=1)
        deadline = time.monotonic() + 5
        while gateway.client.loop(timeout=0.05) == MQTTErrorCode.MQTT_ERR_SUCCESS:
            assert time.monotonic() < deadline, "the broker kept the connection open"
        assert too_big.mid not in gateway.pubacks
        assert listener_view.quiet_for(0.3) == 1
    assert [len(p) for p in listener_view.payloads] == [max_payload]
    assert listener_view.topics == [longest_topic]


# -- Authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["v5", "v311"])
@pytest.mark.parametrize(
    ("username", "password"),
    [
        (None, None),
        ("gw-birmingham-1", "wrong"),
        ("gw-birmingham-1", ""),
        ("gw-birmingham-1", PASSWORDS["gw-leeds-1"]),  # another user's password
        ("gw-unknown-1", "whatever"),
        (LISTENER_USER, PASSWORDS[LISTENER_USER].upper()),
    ],
    ids=["anonymous", "wrong-password", "empty-password", "other-users-password", "unknown-user", "case"],
)
def test_connect_is_refused_without_valid_credentials(
    broker: SecureBroker, username: str | None, password: str | None, protocol: int
) -> None:
    for port, ca_file in ((broker.plain_port, None), (broker.tls_port, broker.ca_file)):
        client = Client(port, username, password, protocol=protocol, ca_file=ca_file)
        try:
            connack = client.connect()
        finally:
            client.close()
        # MQTT 3.1.1's return code 5 reaches paho as the same reason code.
        assert connack is not None and connack.value == NOT_AUTHORIZED, (port, connack)


def test_tls_listener_refuses_plain_mqtt_and_clients_of_another_ca(
    broker: SecureBroker, tmp_path: Path
) -> None:
    plain = Client(broker.tls_port, "gw-birmingham-1", PASSWORDS["gw-birmingham-1"])
    try:
        assert plain.connect() is None  # Mosquitto waits for a TLS handshake, not a CONNECT
    finally:
        plain.close()

    other_ca = make_certs(tmp_path / "other-certs") / "ca.crt"
    stranger = Client(broker.tls_port, "gw-birmingham-1", PASSWORDS["gw-birmingham-1"], ca_file=other_ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        stranger.connect()
    stranger.close()

    with (
        collecting(broker.tls_port, "city/#", LISTENER_USER, ca_file=broker.ca_file) as listener_view,
        connected(broker.tls_port, "gw-birmingham-1", ca_file=broker.ca_file) as gateway,
    ):
        assert gateway.publish("city/birmingham/parking/p1", b"over-tls").value == 0
        assert gateway.publish("city/leeds/parking/p1", b"forged").value == NOT_AUTHORIZED
        assert listener_view.wait_for(1, timeout_s=5) == 1
        assert listener_view.quiet_for(0.3) == 1
    assert listener_view.payloads == [b"over-tls"]


# -- civicflow listen ----------------------------------------------------------------------------


def start_listener(
    data_root: Path, port: int, password: str, log_dir: Path, *, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "CIVICFLOW_DATA_ROOT": str(data_root),
        "CIVICFLOW_MQTT__HOST": HOST,
        "CIVICFLOW_MQTT__PORT": str(port),
        "CIVICFLOW_MQTT__CLIENT_ID": LISTENER_CLIENT_ID,
        "CIVICFLOW_MQTT__USERNAME": LISTENER_USER,
        "CIVICFLOW_MQTT__PASSWORD": password,
        "CIVICFLOW_METRICS__PORT": "0",
        "CIVICFLOW_LANDING__SEGMENT_MAX_AGE_S": "3600",
    }
    env |= extra_env or {}
    log_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "civicflow.app.cli", "listen", "-v"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=(log_dir / "listener.stdout").open("ab"),
        stderr=(log_dir / "listener.stderr").open("ab"),
    )


def tls_env(broker: SecureBroker) -> dict[str, str]:
    return {
        "CIVICFLOW_MQTT__TLS__ENABLED": "true",
        "CIVICFLOW_MQTT__TLS__CA_FILE": str(broker.ca_file),
    }


def status(data_root: Path) -> dict[str, Any]:
    try:
        return json.loads((data_root / "raw" / LISTENER_CLIENT_ID / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_for(predicate: Callable[[], Any], what: str, proc: subprocess.Popen[bytes], log_dir: Path) -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"listener exited ({proc.returncode}) while {what}:\n{logs(log_dir)}")
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out {what}:\n{logs(log_dir)}")


def logs(log_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(log_dir.glob("listener.*")))


@contextlib.contextmanager
def listener_process(*args: Any, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_listener(*args, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=20)


def test_civicflow_listen_over_tls_lands_a_tls_gateways_readings(
    broker: SecureBroker, tmp_path: Path
) -> None:
    data_root, log_dir = tmp_path / "data", tmp_path / "logs"
    readings = [
        (f"city/birmingham/parking/bhm-{i:03d}", b'{"observed_at": 1475564382, "occupied_spots": %d}' % i)
        for i in range(5)
    ]
    with listener_process(
        data_root, broker.tls_port, PASSWORDS[LISTENER_USER], log_dir, extra_env=tls_env(broker)
    ) as listener:
        wait_for(lambda: status(data_root).get("state") == "subscribed", "subscribing", listener, log_dir)
        with connected(broker.tls_port, "gw-birmingham-1", ca_file=broker.ca_file) as gateway:
            assert [gateway.publish(t, p).value for t, p in readings] == [0] * len(readings)
            assert gateway.publish("city/leeds/parking/lds-001", b"forged").value == NOT_AUTHORIZED
        wait_for(lambda: status(data_root).get("acked", 0) >= len(readings), "landing", listener, log_dir)
        assert stop(listener) == 0, logs(log_dir)

    final = status(data_root)
    assert final["state"] == "stopped"
    assert (final["received"], final["acked"]) == (len(readings), len(readings))
    landed = [(r.topic, r.payload) for p in list_closed_segments(data_root / "raw") for r in read_segment(p)]
    assert sorted(landed) == sorted((t.encode(), p) for t, p in readings)
    # The listener came in on the TLS port, as its user.
    assert connection_ports(broker.process.log_text(), LISTENER_CLIENT_ID, LISTENER_USER) == [broker.tls_port]


def connection_ports(broker_log: str, client_id: str, username: str) -> list[int]:
    """The broker ports `client_id` connected to as `username`, from Mosquitto's log."""
    port_of = {m[1]: int(m[2]) for m in re.finditer(r"New connection from (\S+) on port (\d+)\.", broker_log)}
    connected_from = re.findall(
        rf"New client connected from (\S+) as {client_id} \(.*u'{username}'\)", broker_log
    )
    return [port_of[address] for address in connected_from]


def test_civicflow_listen_never_logs_its_password(broker: SecureBroker, tmp_path: Path) -> None:
    """Refused, accepted, disconnected by a broker restart, reconnected, stopped: the password
    appears in none of the listener's output or files."""
    data_root, log_dir = tmp_path / "data", tmp_path / "logs"
    with listener_process(data_root, broker.tls_port, SECRET, log_dir, extra_env=tls_env(broker)) as listener:
        # The broker does not know this password yet: CONNECT is refused, again and again.
        wait_for(lambda: logs(log_dir).count("Not authorized") >= 2, "being refused", listener, log_dir)
        assert status(data_root).get("state") != "subscribed"

        write_password_file(broker.password_file, PASSWORDS | {LISTENER_USER: SECRET})
        broker.process.reload()
        wait_for(lambda: status(data_root).get("state") == "subscribed", "subscribing", listener, log_dir)
        with connected(broker.tls_port, "gw-leeds-1", ca_file=broker.ca_file) as gateway:
            assert gateway.publish("city/leeds/parking/lds-001", b'{"seq": 1}').value == 0
        wait_for(lambda: status(data_root).get("acked", 0) >= 1, "landing", listener, log_dir)

        broker.process.stop()
        wait_for(lambda: status(data_root).get("state") != "subscribed", "noticing", listener, log_dir)
        broker.process.start()
        wait_for(lambda: status(data_root).get("connects", 0) >= 2, "reconnecting", listener, log_dir)
        wait_for(lambda: status(data_root).get("state") == "subscribed", "resubscribing", listener, log_dir)
        assert stop(listener) == 0, logs(log_dir)

    files = [p for p in [*log_dir.rglob("*"), *data_root.rglob("*")] if p.is_file()]
    assert (data_root / "raw" / LISTENER_CLIENT_ID / "status.json") in files
    assert any(p.suffix == ".seg" for p in files)
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaks == []
    text = logs(log_dir)
    assert "Not authorized" in text and len(text) > 200  # the failures were logged, minus the secret
    assert SECRET not in broker.process.log_text()


@pytest.mark.parametrize(
    "bad_env",
    [
        {"CIVICFLOW_MQTT__PORT": "not-a-port"},
        {"CIVICFLOW_MQTT__TLS": "not-a-table"},
        {"CIVICFLOW_MQTT__TLS__ENABLED": "true", "CIVICFLOW_MQTT__TLS__CA_FILE": "/nonexistent/ca.crt"},
    ],
    ids=["bad-port", "bad-tls-section", "missing-ca-file"],
)
def test_civicflow_listen_failing_at_startup_does_not_print_its_password(
    tmp_path: Path, bad_env: dict[str, str]
) -> None:
    log_dir = tmp_path / "logs"
    with listener_process(tmp_path / "data", free_port(), SECRET, log_dir, extra_env=bad_env) as listener:
        returncode = listener.wait(timeout=30)
    output = logs(log_dir)
    assert returncode != 0, output
    assert output.strip()
    assert SECRET not in output


# -- civicflow status's broker probe --------------------------------------------------------------


def test_status_probe_tells_a_refused_login_from_an_unreachable_broker(broker: SecureBroker) -> None:
    from civicflow.ingest.listener import BrokerAddress
    from civicflow.ingest.probe import probe_broker

    good = probe_broker(BrokerAddress(HOST, broker.plain_port, LISTENER_USER, PASSWORDS[LISTENER_USER]))
    assert (good.reachable, good.accepted, good.problem) == (True, True, None)
    assert 0 < good.latency_ms < 3000
    over_tls = probe_broker(
        BrokerAddress(
            HOST, broker.tls_port, LISTENER_USER, PASSWORDS[LISTENER_USER], tls=True, ca_file=broker.ca_file
        )
    )
    assert (over_tls.broker, over_tls.accepted) == (f"mqtts://{HOST}:{broker.tls_port}", True)

    wrong = probe_broker(BrokerAddress(HOST, broker.plain_port, LISTENER_USER, "not-the-password"))
    assert (wrong.reachable, wrong.accepted) == (True, False)
    assert "refused the connection" in wrong.problem and "CIVICFLOW_MQTT__USERNAME/PASSWORD" in wrong.problem
    assert "not-the-password" not in str(wrong.to_dict())

    plain_to_tls = probe_broker(BrokerAddress(HOST, broker.tls_port, LISTENER_USER, "x"), timeout_s=1)
    assert (plain_to_tls.accepted, plain_to_tls.problem) == (
        False,
        "no CONNACK within 1s: is it an MQTT broker, and does it expect TLS?",
    )

    closed = probe_broker(BrokerAddress(HOST, free_port()))
    assert (closed.reachable, closed.accepted) == (False, False)
    assert (
        closed.problem.startswith("cannot reach the broker: ")
        and "CIVICFLOW_MQTT__HOST/PORT" in closed.problem
    )


# -- Client ids: no user can take another's session -----------------------------------------------


def connect_as_the_listener(port: int, username: str, *, clean: bool) -> ReasonCode | None:
    """Connect as `username` with the listener's client id (MQTT 5, a session that outlives the
    connection unless `clean`), let the broker deliver what it would, and disconnect."""
    thief = Client(port, username, PASSWORDS[username], client_id=LISTENER_CLIENT_ID)
    received: list[bytes] = []
    thief.client.on_message = lambda client, userdata, message: received.append(message.payload)
    expiry = Properties(PacketTypes.CONNECT)
    expiry.SessionExpiryInterval = 0 if clean else 3600
    try:
        thief.client.connect(HOST, port, keepalive=10, clean_start=clean, properties=expiry)
        thief._loop_until(lambda: thief.connack is not None)
        for _ in range(5):  # queued messages, if it had the listener's session, come right after CONNACK
            thief.client.loop(timeout=0.05)
    finally:
        thief.close()
    assert received == []
    return thief.connack


def test_a_gateway_cannot_take_the_listeners_session_or_its_queue(
    broker: SecureBroker, tmp_path: Path
) -> None:
    """Gateways connecting with the listener's client id get their own session: the running listener
    is not disconnected, and 100 readings queued while it is down all reach it afterwards."""
    data_root, log_dir = tmp_path / "data", tmp_path / "logs"
    password = PASSWORDS[LISTENER_USER]
    with listener_process(data_root, broker.plain_port, password, log_dir) as listener:
        wait_for(lambda: status(data_root).get("state") == "subscribed", "subscribing", listener, log_dir)
        for user, clean in (("gw-birmingham-1", False), ("gw-leeds-1", True)):
            connack = connect_as_the_listener(broker.plain_port, user, clean=clean)
            assert connack is not None and connack.value == 0  # accepted, under its own id
        with connected(broker.plain_port, "gw-birmingham-1", protocol=mqtt.MQTTv311) as gateway:
            assert gateway.publish("city/birmingham/parking/live", b'{"seq": -1}').value == 0
        wait_for(lambda: status(data_root).get("acked", 0) >= 1, "landing", listener, log_dir)
        running = status(data_root)
        assert stop(listener) == 0, logs(log_dir)
    assert (running["connects"], running["sessions_lost"], running["state"]) == (1, 0, "subscribed")
    assert f"Client {LISTENER_CLIENT_ID} already connected" not in broker.process.log_text()

    # The listener is down; its persistent session queues what the gateway publishes.
    readings = [(f"city/birmingham/parking/bhm-{i % 10}", b'{"seq": %d}' % i) for i in range(100)]
    user = "gw-birmingham-1"
    published = publish_messages(
        HOST, broker.plain_port, readings, client_id="gw", username=user, password=PASSWORDS[user]
    )
    assert published.messages == 100
    for user, clean in (("gw-leeds-1", False), ("gw-birmingham-2", True), ("lns-chirpstack", False)):
        connack = connect_as_the_listener(broker.plain_port, user, clean=clean)
        assert connack is not None and connack.value == 0

    with listener_process(data_root, broker.plain_port, password, log_dir) as listener:
        wait_for(lambda: status(data_root).get("acked", 0) >= 100, "landing the queue", listener, log_dir)
        after = status(data_root)
        assert stop(listener) == 0, logs(log_dir)
    assert (after["connects"], after["sessions_lost"]) == (1, 0)
    landed = [r.payload for p in list_closed_segments(data_root / "raw") for r in read_segment(p)]
    assert sorted(landed) == sorted([b'{"seq": -1}', *(payload for _, payload in readings)])
    # Every one of them connected under its own user name, none as the listener.
    for user in ("gw-birmingham-1", "gw-birmingham-2", "gw-leeds-1", "lns-chirpstack"):
        assert connection_ports(broker.process.log_text(), user, user)
    assert (
        connection_ports(broker.process.log_text(), LISTENER_CLIENT_ID, LISTENER_USER)
        == [broker.plain_port] * 2
    )


# -- Feedback: each council's gateways read their own devices' rejection summaries ---------------

PLATE = "AB12 CDE"  # a value a rejection's detail quotes: masked in the summary


def test_feedback_summaries_reach_only_their_councils_gateways_once(
    broker: SecureBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stage bad messages of a Birmingham and a Leeds device, run the feedback step: each council's
    gateway user receives exactly its device's retained summary with the right counts, no payload
    bytes and a masked detail; the other council's gateway, the listener's user and a gateway
    writing a feedback topic get nothing; a second run publishes nothing; `civicflow status
    --device` shows the same."""
    from civicflow.jobs import feedback_job
    from civicflow.settings import FeedbackSettings, MqttSettings, Settings
    from civicflow.transforms.decode import Limits
    from civicflow.transforms.stage import stage_segments
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.layout import Layout

    (tmp_path / "registry").mkdir()
    settings = Settings(
        data_root=tmp_path / "data",
        registry_dir=tmp_path / "registry",
        mqtt=MqttSettings(
            host=HOST, port=broker.plain_port, username=LISTENER_USER, password=PASSWORDS[LISTENER_USER]
        ),
        feedback=FeedbackSettings(username="civicflow-feedback", password=PASSWORDS["civicflow-feedback"]),
    )
    now = time.time_ns()
    ok = {"observed_at": "2026-03-02T08:00:00Z", "occupied_spots": 3, "total_spots": 9}
    layout = Layout(settings.data_root)
    factories_land(
        layout,
        [
            ("city/birmingham/parking/bhm-001", b"not json"),
            ("city/birmingham/parking/bhm-001", b"{nor this"),
            ("city/birmingham/parking/bhm-002", json.dumps(ok).encode()),  # good: no summary
            ("city/leeds/air_quality/lds-aq-1", b'{"observed_at": 1772438400, "pm10": 3, "colour": "red"}'),
            ("city/Leeds!/parking/x", b"{}"),  # bad topic: no device to tell
            ("city/birmingham/parking/bhm-001", json.dumps(ok | {"occupied_spots": PLATE}).encode()),
        ],
        received_at_ns=now,
    )
    con = connect(layout.warehouse)
    try:
        stage_segments(layout, con, Limits())  # the staging merge's own quarantining, without Airflow
    finally:
        con.close()
    first = feedback_job(settings)
    assert sorted(first["published"]) == [
        "city/birmingham/parking/bhm-001/feedback",
        "city/leeds/air_quality/lds-aq-1/feedback",
    ]
    assert (first["unaddressable"], first["unaddressable_by_reason"]) == (1, {"bad_topic": 1})

    with (
        collecting(broker.plain_port, "city/birmingham/+/+/feedback", "gw-birmingham-2") as birmingham,
        collecting(broker.plain_port, "city/leeds/+/+/feedback", "gw-leeds-1") as leeds,
        collecting(broker.plain_port, "city/birmingham/#", "gw-leeds-1") as leeds_snooping,
        collecting(broker.plain_port, "city/#", LISTENER_USER) as listener_view,
        connected(broker.plain_port, "gw-birmingham-1") as gateway,
        connected(broker.plain_port, SECOND_LISTENER_USER) as listener_user,
    ):
        assert birmingham.wait_for(1, timeout_s=5) == 1 and leeds.wait_for(1, timeout_s=5) == 1
        # Only Civicflow's feedback user writes feedback topics.
        forged = "city/birmingham/parking/bhm-001/feedback"
        assert gateway.publish(forged, b"{}").value == NOT_AUTHORIZED
        assert listener_user.publish(forged, b"{}").value == NOT_AUTHORIZED
        assert gateway.publish("city/birmingham/parking/bhm-003", b"{}").value == 0  # readings still go
        assert listener_view.wait_for(1, timeout_s=5) == 1
        second = feedback_job(settings)
        assert birmingham.quiet_for(0.3) == 1 and leeds.quiet_for(0.1) == 1
        assert leeds_snooping.quiet_for(0.1) == 0

    assert (second["published"], second["devices"]) == ([], 0)
    assert listener_view.topics == ["city/birmingham/parking/bhm-003"]  # never a feedback topic
    assert (birmingham.topics, birmingham.retained) == (["city/birmingham/parking/bhm-001/feedback"], [True])
    assert (leeds.topics, leeds.retained) == (["city/leeds/air_quality/lds-aq-1/feedback"], [True])
    bham, lds = json.loads(birmingham.payloads[0]), json.loads(leeds.payloads[0])
    assert (bham["council"], bham["domain"], bham["device_id"]) == ("birmingham", "parking", "bhm-001")
    assert bham["window"]["by_reason"] == {"not_json": 2, "invalid_type": 1}
    assert bham["window"]["rejected"] == 3 and bham["window"]["hours"] == 24
    assert bham["since_previous"] == {
        "previous_made_at": None,
        "rejected": 3,
        "by_reason": bham["window"]["by_reason"],
    }
    last = bham["last"]
    assert last["reason"] == "invalid_type" and "'…'" in last["detail"]
    assert last["segment_id"].startswith("l1/") and last["record_offset"] >= 0
    assert bham["window"]["from"] < last["received_at"] <= last["quarantined_at"] <= bham["made_at"]
    assert PLATE.encode() not in birmingham.payloads[0] and b"not json" not in birmingham.payloads[0]
    assert lds["window"]["by_reason"] == {"unknown_field": 1} and lds["last"]["reason"] == "unknown_field"

    from typer.testing import CliRunner

    from civicflow.app.cli import app

    monkeypatch.setenv("CIVICFLOW_DATA_ROOT", str(settings.data_root))
    shown = CliRunner().invoke(app, ["status", "--device", "birmingham/bhm-001", "--json"])
    assert shown.exit_code == 0, shown.output
    (summary,) = json.loads(shown.stdout)["summaries"]
    assert summary["window"] == bham["window"] | {"from": summary["window"]["from"]}
    assert (summary["last"], summary["published_at"]) == (bham["last"], bham["made_at"])
    table = CliRunner().invoke(app, ["status", "--device", "birmingham/bhm-001"])
    assert table.exit_code == 0 and "invalid_type" in table.stdout and "not_json" in table.stdout
    assert PLATE not in table.stdout
    assert CliRunner().invoke(app, ["status", "--device", "bhm-001"]).exit_code == 2
