"""LoRaWAN uplinks (The Things Stack v3, ChirpStack v4) into contract reading objects.

The topic names a LoRaWAN application and device, not a council: the device registry
(`civicflow.registry`) says which council, domain and device id the uplink belongs to and which
model profile (`civicflow.transforms.profiles`) maps its decoded payload. Values come from the network
server's payload codec (`uplink_message.decoded_payload`, ChirpStack's `object`); Civicflow does
not decode `frm_payload` bytes itself.

observed_at: LoRaWAN devices send no clock, and measure just before they transmit, so the
reading is observed when the network received it. The Things Stack: `uplink_message.received_at`
(the network server's time, set on every uplink by a synchronised server clock; gateway times in
`rx_metadata` are missing or wrong on gateways without GPS). ChirpStack v4: the event's `time`.
Both are the same in every redelivery of the same uplink, so redeliveries collapse to one reading.

msg_id: `tts:<DevEUI>:<f_cnt>:<network server uplink id>` and
`chirpstack:<DevEUI>:<fCnt>:<deduplicationId>`. The network server's uplink id (the `ns:uplink:`
correlation id) and ChirpStack's deduplication id name one uplink after the network has merged
the copies its gateways heard, so the msg_id is the same in every delivery of that uplink and
differs after the frame counter resets on a rejoin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from civicflow.contract import NAME_PATTERN, Dataset, Domain, Reason, is_name
from civicflow.registry import Device, Match, Registry
from civicflow.transforms.invalid import Invalid
from civicflow.transforms.profiles import PROFILES, Kind, Profile
from civicflow.transforms.units import convert
from civicflow.wire import CHIRPSTACK_TOPIC_RE, TTS_TOPIC_RE

DEV_EUI_RE = re.compile(r"[0-9A-Fa-f]{16}")  # fullmatch only


@dataclass(frozen=True)
class Uplink:
    """What Civicflow takes from one uplink, whichever network server sent it."""

    network: str  # "tts" or "chirpstack"
    application: str
    tenant: str | None
    device: str  # the network server's device id (TTS) or DevEUI (ChirpStack)
    dev_eui: str | None
    observed_at: Any
    msg_id: str
    fields: dict[str, Any]

    def describe(self) -> str:
        if self.network == "tts":
            return f"The Things Stack device {self.device!r} of {self.application}@{self.tenant}"
        return f"ChirpStack device {self.device} of application {self.application}"


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _text(value: Any, what: str, limit: int = 80) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Invalid(Reason.MISSING_FIELD, f"uplink has no usable {what}")
    return value


def parse_tts(topic: str, doc: Any) -> Uplink:
    """The Things Stack v3 uplink message (`v3/<application>@<tenant>/devices/<device>/up`)."""
    m = TTS_TOPIC_RE.fullmatch(topic)
    assert m is not None  # topic_format chose this parser
    if not isinstance(doc, dict):
        raise Invalid(Reason.NOT_AN_OBJECT, "a The Things Stack uplink must be a JSON object")
    ids = _get(doc, "end_device_ids")
    device = _text(_get(ids, "device_id"), "end_device_ids.device_id")
    application = _text(_get(ids, "application_ids", "application_id"), "application_ids.application_id")
    if (application, device) != (m["application"], m["device"]):
        raise Invalid(
            Reason.BAD_TOPIC,
            f"uplink of {application}/{device} published on the topic of {m['application']}/{m['device']}",
        )
    dev_eui = _get(ids, "dev_eui")
    if dev_eui is not None and (not isinstance(dev_eui, str) or not DEV_EUI_RE.fullmatch(dev_eui)):
        raise Invalid(Reason.INVALID_VALUE, "end_device_ids.dev_eui is not 16 hex digits")
    up = _get(doc, "uplink_message")
    if not isinstance(up, dict):
        raise Invalid(
            Reason.MISSING_FIELD, "message has no uplink_message; only uplinks (topic .../up) carry readings"
        )
    observed_at = up.get("received_at", doc.get("received_at"))
    if observed_at is None:
        raise Invalid(Reason.MISSING_FIELD, "uplink has no uplink_message.received_at")
    f_cnt = up.get("f_cnt", 0)  # The Things Stack leaves out a frame counter of 0
    if isinstance(f_cnt, bool) or not isinstance(f_cnt, int):
        raise Invalid(Reason.INVALID_TYPE, f"uplink_message.f_cnt must be an integer, got {f_cnt!r}")
    correlation = doc.get("correlation_ids")
    ns_id = next(
        (
            c.removeprefix("ns:uplink:")
            for c in (correlation if isinstance(correlation, list) else [])
            if isinstance(c, str) and c.startswith("ns:uplink:") and len(c) <= 80
        ),
        str(observed_at)[:40],
    )
    fields = up.get("decoded_payload")
    if not isinstance(fields, dict):
        raise Invalid(
            Reason.MISSING_FIELD,
            f"uplink f_port {up.get('f_port')!r} has no uplink_message.decoded_payload; set the device's "
            "payload formatter in The Things Stack (the LoRaWAN Device Repository has one per model)",
        )
    return Uplink(
        network="tts",
        application=application,
        tenant=m["tenant"],
        device=device,
        dev_eui=dev_eui.upper() if dev_eui else None,
        observed_at=observed_at,
        msg_id=f"tts:{dev_eui.upper() if dev_eui else device}:{f_cnt}:{ns_id}",
        fields=fields,
    )


def parse_chirpstack(topic: str, doc: Any) -> Uplink:
    """ChirpStack v4 up event (`application/<application-id>/device/<DevEUI>/event/up`)."""
    m = CHIRPSTACK_TOPIC_RE.fullmatch(topic)
    assert m is not None
    if not isinstance(doc, dict):
        raise Invalid(Reason.NOT_AN_OBJECT, "a ChirpStack up event must be a JSON object")
    dev_eui = _text(_get(doc, "deviceInfo", "devEui"), "deviceInfo.devEui")
    application = _text(_get(doc, "deviceInfo", "applicationId"), "deviceInfo.applicationId")
    if (application, dev_eui.upper()) != (m["application"], m["dev_eui"].upper()):
        raise Invalid(
            Reason.BAD_TOPIC,
            f"event of {application}/{dev_eui} published on the topic of {m['application']}/{m['dev_eui']}",
        )
    dedup = _text(doc.get("deduplicationId"), "deduplicationId")
    f_cnt = doc.get("fCnt", 0)  # protobuf JSON leaves out a frame counter of 0
    if isinstance(f_cnt, bool) or not isinstance(f_cnt, int):
        raise Invalid(Reason.INVALID_TYPE, f"fCnt must be an integer, got {f_cnt!r}")
    if "time" not in doc:
        raise Invalid(Reason.MISSING_FIELD, "up event has no time")
    fields = doc.get("object")
    if not isinstance(fields, dict):
        raise Invalid(
            Reason.MISSING_FIELD,
            f"up event fPort {doc.get('fPort')!r} has no object; set a payload codec in the device profile",
        )
    return Uplink(
        network="chirpstack",
        application=application,
        tenant=None,
        device=dev_eui.upper(),
        dev_eui=dev_eui.upper(),
        observed_at=doc["time"],
        msg_id=f"chirpstack:{dev_eui.upper()}:{f_cnt}:{dedup}",
        fields=fields,
    )


@dataclass(frozen=True)
class Owner:
    """Who an uplink belongs to, by the registry."""

    council: str
    device_id: str
    domain: Domain
    profile: Profile
    device: Device | None


def _unknown_device_id(uplink: Uplink) -> str:
    """Device id of an unregistered device a council accepts: its LoRaWAN id if it is a valid name,
    else `eui-<DevEUI>`; an uplink with neither is refused (the id becomes folders and keys)."""
    candidate = uplink.device.lower()
    if is_name(candidate):
        return candidate
    if uplink.dev_eui:
        return f"eui-{uplink.dev_eui.lower()}"
    raise Invalid(
        Reason.UNKNOWN_DEVICE,
        f"{uplink.describe()}: device id {uplink.device[:80]!r} is not a Civicflow device id "
        f"({NAME_PATTERN}) and the uplink has no DevEUI; register the device with a device_id",
    )


def find_owner(uplink: Uplink, registry: Registry | None) -> Owner:
    """The registered device an uplink comes from; raise Invalid(UNKNOWN_DEVICE) if it has none."""
    match: Match | None = None
    if registry is not None:
        if uplink.network == "tts":
            match = registry.match_tts(uplink.application, uplink.tenant or "", uplink.device, uplink.dev_eui)
        else:
            match = registry.match_chirpstack(uplink.application, uplink.device)
    if match is None:
        raise Invalid(
            Reason.UNKNOWN_DEVICE,
            f"{uplink.describe()} is in no council's device registry; add it to registry/<council>.toml",
        )
    if match.device is not None:
        model, domain, device_id = match.device.model, match.device.domain, match.device.device_id
    else:
        council = registry.councils[match.council] if registry else None
        if council is None or not council.accept_unknown_devices or match.application is None:
            raise Invalid(
                Reason.UNKNOWN_DEVICE,
                f"{uplink.describe()} is not in registry/{match.council}.toml; add it, or set "
                "accept_unknown_devices = true to take its application's unknown devices",
            )
        model, domain = match.application.model, match.application.domain
        device_id = _unknown_device_id(uplink)
    profile = PROFILES.get(model or "")
    if profile is None or profile.domain != domain:
        raise Invalid(
            Reason.UNKNOWN_DEVICE,
            f"{uplink.describe()} has model {model!r}, which no {domain} decoding profile describes; "
            f"fix it in registry/{match.council}.toml",
        )
    return Owner(match.council, device_id, domain, profile, match.device)


def profile_reading(uplink: Uplink, owner: Owner, dataset: Dataset) -> dict[str, Any]:
    """The contract reading object of an uplink's decoded payload, by its model's profile."""
    profile = owner.profile
    unknown = sorted(k for k in uplink.fields if k not in profile.fields and k not in profile.ignored)
    if unknown:
        raise Invalid(
            Reason.UNKNOWN_FIELD,
            f"{profile.model} fields not in its profile: {', '.join(unknown)[:160]}; "
            "map or ignore them in transforms/profiles.py",
        )
    columns = {c.name: c for c in dataset.reading_fields}
    obj: dict[str, Any] = {"observed_at": uplink.observed_at, "msg_id": uplink.msg_id}
    for name, rule in profile.fields.items():
        value = uplink.fields.get(name)
        if value is None:
            continue
        if rule.kind == Kind.OCCUPIED:
            if not isinstance(value, bool):
                raise Invalid(Reason.INVALID_TYPE, f"{profile.model} {name} must be a boolean, got {value!r}")
            obj[rule.measurement] = "occupied" if value else "free"
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(Reason.INVALID_TYPE, f"{profile.model} {name} must be a number, got {value!r}")
        if rule.kind == Kind.DISTANCE:
            obj[rule.measurement] = fill_level(value, rule.unit, owner)
            continue
        col = columns[rule.measurement]
        obj[rule.measurement] = convert(rule.measurement, col.unit, float(value), rule.unit)
    return obj


def fill_level(distance: float, unit: str | None, owner: Owner) -> float:
    """Fraction full of a bin whose sensor, at the top, measures the distance down to the contents.

    filling_level = 1 - distance / bin depth, with the depth (sensor to floor) from the registry.
    Without a depth the distance means nothing: the reading is quarantined, not guessed.
    """
    depth = owner.device.bin_depth_mm if owner.device is not None else None
    if depth is None:
        raise Invalid(
            Reason.UNCONVERTIBLE_UNIT,
            f"distance of {owner.profile.model} {owner.device_id!r} converts to filling_level only with "
            f"the bin depth; set bin_depth_mm for it in registry/{owner.council}.toml",
        )
    to_mm = {"mm": 1.0, "cm": 10.0, "m": 1000.0}.get(unit or "")
    if to_mm is None:
        raise Invalid(Reason.UNCONVERTIBLE_UNIT, f"distance in {unit!r} is not mm, cm or m")
    return 1 - distance * to_mm / depth


def registry_problems(registry: Registry) -> list[str]:
    """What in a registry no profile can decode: unknown models, a model used for another domain."""
    problems = []
    for council in registry.councils.values():
        entries = [(f"device {d.device_id!r}", d.model, d.domain) for d in council.devices if d.model]
        entries += [
            (f"application {a.tts or a.chirpstack!r}", a.model, a.domain) for a in council.applications
        ]
        for what, model, domain in entries:
            profile = PROFILES.get(model or "")
            if profile is None:
                problems.append(
                    f"registry/{council.council}.toml: {what} has model {model!r}; "
                    f"known models: {', '.join(sorted(PROFILES))}"
                )
            elif profile.domain != domain:
                problems.append(
                    f"registry/{council.council}.toml: {what} is {domain} but model {model!r} "
                    f"decodes {profile.domain}"
                )
    return problems
