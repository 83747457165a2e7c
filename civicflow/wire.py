"""Which gateway format a topic carries (docs/mqtt-contract.md). Pure, shared by listener and decoder.

The listener uses it only to count what it will not be able to decode (it lands every message
anyway, so the bytes are kept); the decoder uses it to choose the format's parser.
"""

from __future__ import annotations

import re
from enum import StrEnum

from civicflow.contract import NAME_PATTERN, Domain, is_name


class WireFormat(StrEnum):
    NATIVE = "native"  # <prefix>/<council>/<domain>/<device_id>
    SENML = "senml"  # <prefix>/<council>/<domain>/<device_id>/senml
    TTS_V3 = "tts_v3"  # v3/<application>@<tenant>/devices/<device>/up
    CHIRPSTACK_V4 = "chirpstack_v4"  # application/<application-id>/device/<dev-eui>/event/up
    FEEDBACK = "feedback"  # <prefix>/<council>/<domain>/<device_id>/feedback: Civicflow's own output


FEEDBACK_LEVEL = "feedback"
"""Last level of the topic Civicflow publishes a device's rejection summary on (docs/mqtt-contract.md,
Feedback). The listener never lands it and the decoder never turns it into a reading or a rejection."""


_DOMAINS = frozenset(d.value for d in Domain)
_LORA_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
# The patterns are matched with `fullmatch` only: `$` would let a trailing newline through.
TTS_TOPIC_RE = re.compile(
    rf"v3/(?P<application>{_LORA_ID})@(?P<tenant>{_LORA_ID})/devices/(?P<device>{_LORA_ID})/up"
)
CHIRPSTACK_TOPIC_RE = re.compile(
    rf"application/(?P<application>{_LORA_ID})/device/(?P<dev_eui>[0-9A-Fa-f]{{16}})/event/up"
)


def topic_format(topic: str, prefix: str) -> WireFormat | None:
    """The format a topic announces, or None when it matches none of them (a `bad_topic`)."""
    parts = topic.split("/")
    if parts[0] == prefix:
        if len(parts) == 4:
            return WireFormat.NATIVE
        if len(parts) == 5 and parts[4] == "senml":
            return WireFormat.SENML
        if len(parts) == 5 and parts[4] == FEEDBACK_LEVEL:
            return WireFormat.FEEDBACK
        return None
    if TTS_TOPIC_RE.fullmatch(topic):
        return WireFormat.TTS_V3
    if CHIRPSTACK_TOPIC_RE.fullmatch(topic):
        return WireFormat.CHIRPSTACK_V4
    return None


def is_feedback_topic(topic: str, prefix: str) -> bool:
    """Whether `topic` is a feedback topic (`<prefix>/<council>/<domain>/<device_id>/feedback`),
    whatever its names: Civicflow's own output, never a reading."""
    return topic_format(topic, prefix) == WireFormat.FEEDBACK


def feedback_topic(prefix: str, council: str, domain: str, device_id: str) -> str:
    """The topic of a device's feedback summary; every level must be a contract name or domain."""
    if not (is_name(council) and is_name(device_id) and domain in _DOMAINS):
        raise ValueError(f"no feedback topic for {council!r}/{domain!r}/{device_id!r}: not contract names")
    return f"{prefix}/{council}/{domain}/{device_id}/{FEEDBACK_LEVEL}"


def is_bad_topic(topic: str, prefix: str) -> bool:
    """Whether staging will quarantine every message on this topic as `bad_topic`.

    The same judgement as the decoder's topic parser: no known format, or a `<prefix>/...` topic
    whose council or device id is not a name or whose domain is not one of the contract's. What it
    cannot see is a LoRaWAN uplink whose payload names another device than its topic; only
    decoding the payload tells, so staging alone counts those.
    """
    fmt = topic_format(topic, prefix)
    if fmt is None:
        return True
    if fmt == WireFormat.FEEDBACK:
        return False
    if fmt in (WireFormat.NATIVE, WireFormat.SENML):
        _, council, domain, device_id = topic.split("/")[:4]
        return not (is_name(council) and is_name(device_id) and domain in _DOMAINS)
    return False


__all__ = [
    "NAME_PATTERN",
    "WireFormat",
    "topic_format",
    "is_bad_topic",
    "is_feedback_topic",
    "feedback_topic",
    "FEEDBACK_LEVEL",
    "TTS_TOPIC_RE",
    "CHIRPSTACK_TOPIC_RE",
]
