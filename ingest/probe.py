"""Is the broker there, and does it take our credentials? One MQTT CONNECT, for `civicflow status`.

The probe connects with a clean session and a client id of its own (never the listener's: taking
over its id would disconnect the running listener and end its persistent session), waits for the
CONNACK, and disconnects. It tells apart a broker that cannot be reached from one that refuses the
credentials, and says what to check in each case.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from civicflow.ingest.listener import BrokerAddress


@dataclass(frozen=True)
class BrokerProbe:
    broker: str
    reachable: bool
    accepted: bool
    latency_ms: float | None
    problem: str | None

    def to_dict(self) -> dict:
        return {
            "broker": self.broker,
            "reachable": self.reachable,
            "accepted": self.accepted,
            "latency_ms": self.latency_ms,
            "problem": self.problem,
        }


def probe_broker(address: BrokerAddress, timeout_s: float = 3.0) -> BrokerProbe:
    """Connect once to `address` and report what happened; never raises for a broker's answer."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"civicflow-status-{os.getpid()}",
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    address.configure(client)
    answered = threading.Event()
    outcome: dict = {}

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        outcome["reason"] = reason_code
        answered.set()

    client.on_connect = on_connect
    started = time.monotonic()
    try:
        client.connect(address.host, address.port, keepalive=10)
    except (OSError, ssl.SSLError) as exc:
        return BrokerProbe(
            str(address),
            False,
            False,
            None,
            f"cannot reach the broker: {exc}; check CIVICFLOW_MQTT__HOST/PORT and that it runs",
        )
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            return BrokerProbe(
                str(address),
                True,
                False,
                None,
                f"no CONNACK within {timeout_s:.0f}s: is it an MQTT broker, and does it expect TLS?",
            )
        latency = round((time.monotonic() - started) * 1000, 1)
        reason = outcome["reason"]
        if reason.is_failure:
            return BrokerProbe(
                str(address),
                True,
                False,
                latency,
                f"the broker refused the connection ({reason}); check CIVICFLOW_MQTT__USERNAME/PASSWORD",
            )
        client.disconnect()
        return BrokerProbe(str(address), True, True, latency, None)
    finally:
        client.loop_stop()
