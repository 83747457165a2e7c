"""Publish rejection summaries back to gateways: one retained QoS 1 message per device.

The summaries come from `civicflow.warehouse.feedback`; this module only talks MQTT. It connects to the
listener's broker (host, port, TLS) with the feedback account (`CIVICFLOW_FEEDBACK__USERNAME`, else
the listener's user) and a clean session of its own client id, so it never touches the listener's
session, publishes each summary retained on `<prefix>/<council>/<domain>/<device_id>/feedback` and
returns the topics the broker acknowledged. A summary the broker did not acknowledge is not
recorded, so the next run publishes it again.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from civicflow.errors import TransientError
from civicflow.ingest.listener import BrokerAddress
from civicflow.wire import feedback_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedbackTarget:
    broker: BrokerAddress
    prefix: str
    client_id: str = "civicflow-feedback"
    timeout_s: float = 30.0


def summary_topic(prefix: str, summary: dict) -> str:
    return feedback_topic(prefix, summary["council"], summary["domain"], summary["device_id"])


def encode_summary(summary: dict) -> bytes:
    """The message's bytes: compact JSON, keys sorted, so one summary is always the same bytes."""
    return json.dumps(summary, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def publish_summaries(target: FeedbackTarget, summaries: list[dict]) -> list[dict]:
    """Publish every summary retained at QoS 1; return those whose PUBACK came back.

    Raises TransientError when the broker cannot be reached or refuses the connection (the task
    is retried). A broker that acknowledges a publish it does not allow (MQTT 3.1.1 cannot say no)
    is taken at its word: check the feedback user's ACL when gateways see nothing.
    """
    if not summaries:
        return []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=target.client_id, clean_session=True, protocol=mqtt.MQTTv311
    )
    target.broker.configure(client)
    connected = threading.Event()
    refused: list[str] = []
    acked: set[int] = set()
    done = threading.Condition()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            refused.append(str(reason_code))
        connected.set()

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        with done:
            acked.add(mid)
            done.notify_all()

    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        client.connect(target.broker.host, target.broker.port, keepalive=target.broker.keepalive_s)
    except OSError as exc:
        raise TransientError(
            f"cannot reach broker {target.broker} to publish feedback: {exc}; check CIVICFLOW_MQTT__HOST "
            "and PORT, then retry the feedback task"
        ) from exc
    client.loop_start()
    try:
        if not connected.wait(target.timeout_s) or refused:
            why = refused[0] if refused else f"no answer within {target.timeout_s:.0f} s"
            raise TransientError(
                f"broker {target.broker} refused the feedback connection ({why}); check "
                "CIVICFLOW_FEEDBACK__USERNAME/PASSWORD and that its ACL may write <prefix>/+/+/+/feedback"
            )
        sent: dict[int, dict] = {}
        for summary in summaries:
            info = client.publish(
                summary_topic(target.prefix, summary), encode_summary(summary), qos=1, retain=True
            )
            sent[info.mid] = summary
        with done:
            done.wait_for(lambda: set(sent) <= acked, target.timeout_s)
        published = [s for mid, s in sent.items() if mid in acked]
        if len(published) < len(sent):
            log.warning(
                "broker %s acknowledged %d of %d feedback summaries; the others go out on the next run",
                target.broker,
                len(published),
                len(sent),
            )
        return published
    finally:
        client.disconnect()
        client.loop_stop()
