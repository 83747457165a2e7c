"""Decode one raw MQTT message into contract readings, or say exactly why not.

Pure: `decode_message(topic, payload, limits, received_at=..., registry=...)` touches no file,
clock or network (the receive time and the device registry are arguments), so it is tested against
a table of real messages and property-tested with arbitrary bytes (it never raises). The wire
contract it implements is docs/mqtt-contract.md. The topic says which gateway format the payload
is in (`civicflow.wire.topic_format`); every format becomes the same contract reading objects,
which `decode_reading` validates.
"""

from __future__ import annotations

import calendar
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from civicflow.contract import (
    CLOCK_SKEW_MAX_S,
    COMMON_FIELDS,
    DATASETS,
    EPOCH_MAX,
    LOCATION_COLUMNS,
    MSG_ID_MAX,
    OBSERVED_FROM,
    OBSERVED_UNTIL,
    Column,
    Dataset,
    Domain,
    Reason,
    Rule,
    is_name,
)
from civicflow.registry import CouncilRegistry, Device, Registry
from civicflow.transforms.invalid import Invalid
from civicflow.transforms.lorawan import find_owner, parse_chirpstack, parse_tts, profile_reading
from civicflow.transforms.senml import group_by_time, reading_object, resolve_pack
from civicflow.wire import WireFormat, topic_format

# RFC 3339 date-time, ASCII digits only (`\d` would take any script's digits), matched in full
RFC3339_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"([Zz]|([+-])([0-9]{2}):([0-9]{2}))?"
)
CLOCK_SKEW_MAX = timedelta(seconds=CLOCK_SKEW_MAX_S)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Limits:
    """What a message may be. Larger or odder input is quarantined, never processed."""

    topic_prefix: str = "city"
    max_payload_bytes: int = 256 * 1024
    max_batch_readings: int = 10_000
    max_json_depth: int = 32


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message, or one reading of it, was refused, with the bytes that were refused."""

    reason: Reason
    detail: str
    payload: bytes
    reading_index: int | None = None
    council: str | None = None
    domain: str | None = None
    device_id: str | None = None


@dataclass
class Decoded:
    domain: Domain | None = None
    readings: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


_Invalid = Invalid  # the name this module used before the gateway formats had modules of their own


@dataclass(frozen=True, slots=True)
class Topic:
    council: str
    domain: Domain
    device_id: str


def parse_topic(topic: bytes, prefix: str) -> Topic:
    """Parse `<prefix>/<council>/<domain>/<device_id>[/senml]`; raise _Invalid(BAD_TOPIC) otherwise."""
    try:
        text = topic.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid(Reason.BAD_TOPIC, "topic is not UTF-8") from exc
    parts = text.split("/")
    if len(parts) == 5 and parts[4] == "senml":
        parts = parts[:4]
    if len(parts) != 4 or parts[0] != prefix:
        raise _Invalid(
            Reason.BAD_TOPIC,
            f"topic {text[:200]!r} is not {prefix}/<council>/<domain>/<device_id>[/senml], "
            "v3/<application>@<tenant>/devices/<device>/up or "
            "application/<application-id>/device/<dev-eui>/event/up",
        )
    _, council, domain, device_id = parts
    for what, value in (("council", council), ("device_id", device_id)):
        if not is_name(value):
            raise _Invalid(Reason.BAD_TOPIC, f"{what} {value[:80]!r} must match [a-z0-9][a-z0-9_-]{{0,63}}")
    try:
        dom = Domain(domain)
    except ValueError as exc:
        known = ", ".join(d.value for d in Domain)
        raise _Invalid(Reason.BAD_TOPIC, f"domain {domain[:80]!r} is not one of {known}") from exc
    return Topic(council, dom, device_id)


def parse_observed_at(value: Any, council: CouncilRegistry | None = None) -> datetime:
    """RFC 3339 with a UTC offset, or epoch seconds; returned as aware UTC inside the contract's window.

    A datetime comes only from a gateway format's parser (SenML resolves times itself), never
    from JSON, and is always aware. RFC 3339 without an offset is local time of the council's
    `timezone` when its registry file declares one (`local_to_utc`), and refused otherwise.
    Refused, each with its own reason: text that is not RFC 3339 (`invalid_timestamp`), a date or
    time the calendar does not have such as 2023-02-29, 24:00:00 or a leap second (`invalid_date`),
    an offset beyond ±23:59 such as +01:60 (`invalid_offset`), and a time outside
    [1970-01-01, 3000-01-01) UTC (`timestamp_out_of_range`).
    """
    if isinstance(value, datetime) and value.tzinfo is not None:
        return _in_window(value.astimezone(UTC), value)
    if isinstance(value, bool):
        raise _Invalid(Reason.INVALID_TIMESTAMP, "observed_at is a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _Invalid(Reason.INVALID_TIMESTAMP, f"observed_at {value!r} is not a number of seconds")
        if not 0 <= value < EPOCH_MAX:
            raise _Invalid(
                Reason.TIMESTAMP_OUT_OF_RANGE,
                f"observed_at {value!r} is not epoch seconds between 1970 and 3000 (milliseconds?)",
            )
        return datetime.fromtimestamp(value, tz=UTC)
    if not isinstance(value, str):
        raise _Invalid(Reason.INVALID_TIMESTAMP, "observed_at must be an RFC 3339 string or a number")
    m = RFC3339_RE.fullmatch(value)
    if m is None:
        raise _Invalid(Reason.INVALID_TIMESTAMP, f"observed_at {value[:64]!r} is not RFC 3339")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, offset, sign, off_h, off_m = m.groups()[6:]
    if sign is not None and (int(off_h) > 23 or int(off_m) > 59):
        raise _Invalid(
            Reason.INVALID_OFFSET,
            f"observed_at {value!r} has offset {offset}, which is no UTC offset (-23:59 to +23:59)",
        )
    if not (
        1 <= month <= 12
        and 1 <= day <= calendar.monthrange(max(year, 1), month)[1]
        and hour <= 23
        and minute <= 59
        and second <= 59
    ):
        raise _Invalid(
            Reason.INVALID_DATE,
            f"observed_at {value!r} is not a date and time of the calendar (months 01-12, days of "
            "the month, hours 00-23, minutes and seconds 00-59; no leap seconds)",
        )
    zone = council.zone if council is not None else None
    if offset is None and zone is None:
        raise _Invalid(
            Reason.TIMESTAMP_WITHOUT_OFFSET,
            f"observed_at {value!r} has no UTC offset (add Z or +hh:mm, or declare the council's "
            "timezone in its registry file)",
        )
    if not 1969 <= year <= 3000:  # the offset moves a time by less than a day
        raise _out_of_range(value)
    micros = int(((fraction or "")[1:] + "000000")[:6])
    naive = datetime(year, month, day, hour, minute, second, micros)
    if offset is None and council is not None and zone is not None:
        return _in_window(local_to_utc(naive, zone, council.ambiguous_local_time, value), value)
    if sign is None:  # Z
        utc = naive.replace(tzinfo=UTC)
    else:
        delta = timedelta(hours=int(off_h), minutes=int(off_m))
        utc = naive.replace(tzinfo=timezone(delta if sign == "+" else -delta)).astimezone(UTC)
    return _in_window(utc, value)


def _out_of_range(value: Any) -> Invalid:
    return _Invalid(
        Reason.TIMESTAMP_OUT_OF_RANGE,
        f"observed_at {str(value)[:64]!r} is outside the contract's window, 1970-01-01 to "
        "3000-01-01 UTC (is the gateway's clock set?)",
    )


def _in_window(utc: datetime, value: Any) -> datetime:
    if not OBSERVED_FROM <= utc < OBSERVED_UNTIL:
        raise _out_of_range(value)
    return utc


def local_to_utc(naive: datetime, zone: ZoneInfo, ambiguous: str, text: str) -> datetime:
    """A wall-clock time of `zone` as aware UTC, by an explicit rule for the clock changes.

    A time in the hour the clocks skip (01:30 on 2016-03-27 in Europe/London) never happened:
    `nonexistent_local_time`, always. A time in the hour the clocks go back happens twice
    (01:30 on 2016-10-30 is 00:30Z and 01:30Z): `ambiguous_local_time`, unless the council's
    `ambiguous_local_time` takes the "earlier" or the "later" occurrence.
    """
    first = naive.replace(tzinfo=zone, fold=0)
    second = naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first.astimezone(UTC)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        raise _Invalid(
            Reason.NONEXISTENT_LOCAL_TIME,
            f"observed_at {text!r} does not exist in {zone.key}: the clocks skip that hour",
        )
    if ambiguous == "earlier":
        return first.astimezone(UTC)
    if ambiguous == "later":
        return second.astimezone(UTC)
    a, b = first.astimezone(UTC), second.astimezone(UTC)
    raise _Invalid(
        Reason.AMBIGUOUS_LOCAL_TIME,
        f"observed_at {text!r} happens twice in {zone.key} ({a:%H:%M}Z and {b:%H:%M}Z): send a UTC "
        "offset, or set ambiguous_local_time to earlier or later in the council's registry file",
    )


def _check_column(col: Column, value: Any) -> Any:
    if col.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(Reason.INVALID_TYPE, f"{col.name} must be an integer, got {value!r}")
        if isinstance(value, float):
            if not value.is_integer():
                raise _Invalid(Reason.INVALID_TYPE, f"{col.name} must be an integer, got {value!r}")
            value = int(value)
        if not INT64_MIN <= value <= INT64_MAX:  # the warehouse stores 64-bit integers
            raise _Invalid(Reason.OUT_OF_RANGE, f"{col.name} {value} does not fit a 64-bit integer")
    elif col.type == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(Reason.INVALID_TYPE, f"{col.name} must be a number, got {value!r}")
        value = float(value)
    elif col.type == "string":
        if not isinstance(value, str):
            raise _Invalid(Reason.INVALID_TYPE, f"{col.name} must be a string, got {value!r}")
        if col.enum is not None and value not in col.enum:
            raise _Invalid(
                Reason.INVALID_VALUE, f"{col.name} {value[:40]!r} is not one of {', '.join(col.enum)}"
            )
    if col.minimum is not None and value < col.minimum:
        raise _Invalid(Reason.OUT_OF_RANGE, f"{col.name} {value} is below {col.minimum:g}")
    if col.maximum is not None and value > col.maximum:
        raise _Invalid(Reason.OUT_OF_RANGE, f"{col.name} {value} is above {col.maximum:g}")
    return value


def _car_park_counts(reading: dict[str, Any]) -> None:
    occupied, total = reading.get("occupied_spots"), reading.get("total_spots")
    if occupied is None and total is None:
        return  # a single-bay sensor: status only
    if occupied is None or total is None:
        missing = "occupied_spots" if occupied is None else "total_spots"
        raise _Invalid(Reason.MISSING_FIELD, f"car park reading has no {missing}")
    if occupied > total:
        raise _Invalid(
            Reason.OCCUPIED_EXCEEDS_TOTAL, f"occupied_spots {occupied} exceeds total_spots {total}"
        )
    reading["occupancy"] = occupied / total


RULES = {Rule.CAR_PARK_COUNTS: _car_park_counts}
"""How this decoder applies each rule a dataset declares (`Dataset.rules` in the contract)."""
_missing = {rule for dataset in DATASETS.values() for rule in dataset.rules} - set(RULES)
if _missing:  # a rule the contract declares must never be skipped
    raise RuntimeError(f"civicflow.transforms.decode implements no check for rule(s) {sorted(_missing)}")


def decode_reading(
    obj: Any,
    dataset: Dataset,
    topic: Topic,
    *,
    council: CouncilRegistry | None = None,
    received_at: datetime | None = None,
) -> dict[str, Any]:
    """Validate one reading object against the dataset contract; raise _Invalid if it fails.

    `council` (its registry file) gives the time zone of naive times and the lateness horizon,
    which is judged against `received_at`: a reading with no receive time is never too late.
    """
    if not isinstance(obj, dict):
        raise _Invalid(Reason.NOT_AN_OBJECT, f"a reading must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - COMMON_FIELDS - {c.name for c in dataset.reading_fields})
    if unknown:
        raise _Invalid(
            Reason.UNKNOWN_FIELD, f"fields not in the {dataset.domain} contract: {', '.join(unknown)[:200]}"
        )
    if "observed_at" not in obj:
        raise _Invalid(Reason.MISSING_FIELD, "reading has no observed_at")
    observed_at = parse_observed_at(obj["observed_at"], council)
    if received_at is not None and observed_at > received_at + CLOCK_SKEW_MAX:
        raise _Invalid(
            Reason.FUTURE_TIMESTAMP,
            f"observed_at {observed_at:%Y-%m-%dT%H:%M:%S}Z is more than {CLOCK_SKEW_MAX_S} s after "
            f"the message was received ({received_at.astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z): set the "
            "gateway's clock (NTP) or send its local time with a UTC offset",
        )
    reading: dict[str, Any] = {
        "council": topic.council,
        "device_id": topic.device_id,
        "observed_at": observed_at,
        "event_date": observed_at.date(),
    }
    for col in dataset.reading_fields:
        value = obj.get(col.name, col.default)
        if value is None and col.required:  # sent as null: the staged column has no nulls
            default = f", or leave it out for {col.default}" if col.default is not None else ""
            raise _Invalid(
                Reason.INVALID_TYPE, f"{col.name} is null: send a value of type {col.type}{default}"
            )
        reading[col.name] = None if value is None else _check_column(col, value)
    if all(reading[name] is None for name in dataset.measurement_names):
        raise _Invalid(
            Reason.NO_MEASUREMENT,
            f"{dataset.domain} reading carries none of {', '.join(dataset.measurement_names)}",
        )
    for col in dataset.derived:
        reading[col.name] = None
    msg_id = obj.get("msg_id")
    if msg_id is not None:
        if isinstance(msg_id, bool) or not isinstance(msg_id, str | int) or len(str(msg_id)) > MSG_ID_MAX:
            raise _Invalid(
                Reason.INVALID_TYPE, f"msg_id must be a string or integer of at most {MSG_ID_MAX} characters"
            )
        msg_id = str(msg_id)
    reading["msg_id"] = msg_id
    lat, lon = obj.get("lat"), obj.get("lon")
    if (lat is None) != (lon is None):
        raise _Invalid(Reason.MISSING_FIELD, "lat and lon come together")
    for col, value in zip(LOCATION_COLUMNS, (lat, lon), strict=True):
        reading[col.name] = None if value is None else _check_column(col, value)
    for rule in dataset.rules:
        RULES[rule](reading)
    if council is not None and received_at is not None and council.too_late(observed_at, received_at):
        raise _Invalid(
            Reason.TOO_LATE,
            f"observed_at {observed_at:%Y-%m-%dT%H:%M:%S}Z was received on "
            f"{received_at.astimezone(UTC):%Y-%m-%d}, more than max_lateness_days = "
            f"{council.max_lateness_days} after its event date {observed_at:%Y-%m-%d}; "
            "that day's release is final",
        )
    return reading


def fill_from_registry(obj: Any, device: Device | None) -> Any:
    """Add the registry's position and car-park capacity to a reading object that leaves them out."""
    if device is None or not isinstance(obj, dict):
        return obj
    extra: dict[str, Any] = {}
    if device.lat is not None and "lat" not in obj and "lon" not in obj:
        extra.update(lat=device.lat, lon=device.lon)
    if device.total_spots is not None and "occupied_spots" in obj and "total_spots" not in obj:
        extra["total_spots"] = device.total_spots
    return {**obj, **extra} if extra else obj


def json_too_deep(doc: Any, payload: bytes, limit: int) -> bool:
    """Whether containers nest deeper than `limit`; iterative, so no input can exhaust the stack."""
    if payload.count(b"[") + payload.count(b"{") <= limit or not isinstance(doc, dict | list):
        return False  # fewer brackets than the limit cannot nest deeper than it
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


# Every JSON string, and whether it is an object key (followed by a colon). Matching whole strings
# from the first quote keeps the scan aligned: in valid JSON every other quote opens a string.
_JSON_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"([ \t\n\r]*:)?', re.S)


class DuplicateKeys(dict):
    """A JSON object in which a key appears more than once; `key` is the first one repeated."""

    key: str


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    repeated = None
    for key, value in pairs:
        if repeated is None and key in obj:
            repeated = key
        obj[key] = value
    if repeated is None:
        return obj
    out = DuplicateKeys(obj)
    out.key = repeated
    return out


def _keys_parsed(doc: Any) -> int:
    """How many keys the parsed document's objects hold; iterative."""
    count, stack = 0, [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            count += len(node)
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))
    return count


def duplicate_key_detail(obj: DuplicateKeys) -> str:
    return f"key {obj.key[:80]!r} appears more than once in one JSON object: send each key once"


def _refuse_nested_duplicates(doc: Any, items: bool) -> None:
    """Raise DUPLICATE_KEY for a repeated key anywhere but in the readings themselves (`items`)."""
    if items:
        roots = doc if isinstance(doc, list) else [doc]
        stack = [v for item in roots if isinstance(item, dict) for v in item.values()]
        stack += [item for item in roots if isinstance(item, list)]
    else:
        stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, DuplicateKeys):
            raise Invalid(Reason.DUPLICATE_KEY, duplicate_key_detail(node))
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def load_json(payload: bytes, limits: Limits, *, items: bool = False) -> Any:
    """Parse a UTF-8 JSON payload no deeper than the limit and without repeated keys; raise Invalid otherwise.

    A key given twice in one object (`{"occupied_spots": 5, "occupied_spots": 500}`) is refused as
    `duplicate_key`, never resolved silently. With `items`, an object that is a reading (the
    document, or an element of a top-level array) is returned as a `DuplicateKeys` for the caller
    to refuse that reading alone; a repeated key anywhere else refuses the whole message.
    """
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(Reason.NOT_UTF8, f"payload is not UTF-8 at byte {exc.start}") from exc
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise Invalid(
                Reason.JSON_TOO_DEEP, f"JSON nests deeper than {limits.max_json_depth} levels"
            ) from exc
        raise Invalid(Reason.NOT_JSON, f"payload is not JSON: {str(exc)[:160]}") from exc
    if json_too_deep(doc, payload, limits.max_json_depth):
        raise Invalid(Reason.JSON_TOO_DEEP, f"JSON nests deeper than {limits.max_json_depth} levels")
    if b'"' in payload:
        in_text = sum(1 for colon in _JSON_STRING_RE.findall(payload) if colon)
        if in_text != _keys_parsed(doc):  # orjson kept the last of a repeated key's values
            doc = json.loads(payload, object_pairs_hook=_pairs)
            _refuse_nested_duplicates(doc, items)
    return doc


def decode_message(
    topic: bytes,
    payload: bytes,
    limits: Limits,
    *,
    received_at: datetime | None = None,
    registry: Registry | None = None,
) -> Decoded:
    """Decode one message. Never raises: every failure becomes a Rejection.

    Args:
        received_at: when the listener received the message; SenML relative times count from it.
        registry: the device registry. Without one, LoRaWAN uplinks are quarantined as
            `unknown_device` (nothing says whose they are) and city topics are taken as in
            contract v1; with one, a council that has a registry file takes only its devices.
    """
    out = Decoded()
    try:
        text = topic.decode("utf-8")
    except UnicodeDecodeError:
        out.rejections.append(Rejection(Reason.BAD_TOPIC, "topic is not UTF-8", payload))
        return out
    fmt = topic_format(text, limits.topic_prefix)
    if fmt == WireFormat.FEEDBACK:
        # Civicflow's own summary to a gateway (landed only by an older listener): neither a
        # reading nor a gateway's mistake, so neither staged nor quarantined.
        return out
    if fmt in (WireFormat.TTS_V3, WireFormat.CHIRPSTACK_V4):
        return _decode_lorawan(out, fmt, text, payload, limits, received_at, registry)
    return _decode_city(out, fmt, topic, payload, limits, received_at, registry)


def _decode_city(
    out: Decoded,
    fmt: WireFormat | None,
    topic: bytes,
    payload: bytes,
    limits: Limits,
    received_at: datetime | None,
    registry: Registry | None,
) -> Decoded:
    """`<prefix>/<council>/<domain>/<device_id>`: native readings, or a SenML pack with `/senml`."""
    try:
        parsed_topic = parse_topic(topic, limits.topic_prefix)
    except _Invalid as exc:
        out.rejections.append(Rejection(exc.reason, exc.detail, payload))
        return out
    out.domain = parsed_topic.domain
    council, device_id = parsed_topic.council, parsed_topic.device_id
    where = {"council": council, "domain": parsed_topic.domain.value, "device_id": device_id}

    def reject_message(reason: Reason, detail: str) -> Decoded:
        out.rejections.append(Rejection(reason, detail, payload, **where))
        return out

    if len(payload) > limits.max_payload_bytes:
        return reject_message(
            Reason.PAYLOAD_TOO_LARGE, f"payload of {len(payload)} bytes exceeds {limits.max_payload_bytes}"
        )
    dataset = DATASETS.get(parsed_topic.domain)
    if dataset is None:
        return reject_message(
            Reason.DOMAIN_NOT_ENABLED,
            f"domain {parsed_topic.domain} has no published dataset yet; kept for replay once it is declared",
        )
    device = registry.device(council, device_id) if registry is not None else None
    registered = registry.councils.get(council) if registry is not None else None
    if registered is not None and device is None and not registered.accept_unknown_devices:
        return reject_message(
            Reason.UNKNOWN_DEVICE,
            f"device {device_id!r} is not in registry/{council}.toml; add it, or set "
            "accept_unknown_devices = true",
        )
    if device is not None and device.domain != parsed_topic.domain:
        return reject_message(
            Reason.UNKNOWN_DEVICE,
            f"device {device_id!r} is registered as {device.domain}, not {parsed_topic.domain}; "
            f"fix the topic or registry/{council}.toml",
        )
    try:
        doc = load_json(payload, limits, items=fmt != WireFormat.SENML)
    except Invalid as exc:
        return reject_message(exc.reason, exc.detail)
    if fmt == WireFormat.SENML:
        return _decode_senml(
            out, doc, dataset, parsed_topic, device, registered, limits, received_at, where, payload
        )
    if isinstance(doc, dict):
        items = [doc]
    elif isinstance(doc, list):
        if not doc:
            return reject_message(Reason.EMPTY_BATCH, "batch array is empty")
        if len(doc) > limits.max_batch_readings:
            return reject_message(
                Reason.BATCH_TOO_LARGE, f"batch of {len(doc)} readings exceeds {limits.max_batch_readings}"
            )
        items = doc
    else:
        return reject_message(Reason.NOT_AN_OBJECT, "payload must be a JSON object or an array of objects")
    batch = isinstance(doc, list)
    for index, item in enumerate(items):
        if isinstance(item, DuplicateKeys):  # the bytes as sent: the parsed object kept one value
            detail = duplicate_key_detail(item)
            out.rejections.append(Rejection(Reason.DUPLICATE_KEY, detail, payload, index, **where))
            continue
        try:
            reading = decode_reading(
                fill_from_registry(item, device),
                dataset,
                parsed_topic,
                council=registered,
                received_at=received_at,
            )
        except _Invalid as exc:
            raw = orjson.dumps(item) if batch else payload
            out.rejections.append(Rejection(exc.reason, exc.detail, raw, index, **where))
            continue
        reading["reading_index"] = index
        out.readings.append(reading)
    return out


def _decode_senml(
    out: Decoded,
    doc: Any,
    dataset: Dataset,
    topic: Topic,
    device: Device | None,
    council: CouncilRegistry | None,
    limits: Limits,
    received_at: datetime | None,
    where: dict[str, str],
    payload: bytes,
) -> Decoded:
    """A SenML pack: one reading per resolved time (transforms/senml.py)."""

    def reject_message(reason: Reason, detail: str) -> Decoded:
        out.rejections.append(Rejection(reason, detail, payload, **where))
        return out

    if not isinstance(doc, list):
        return reject_message(Reason.NOT_AN_OBJECT, "a SenML pack must be a JSON array of records")
    if not doc:
        return reject_message(Reason.EMPTY_BATCH, "SenML pack is empty")
    if len(doc) > limits.max_batch_readings:
        return reject_message(
            Reason.BATCH_TOO_LARGE, f"SenML pack of {len(doc)} records exceeds {limits.max_batch_readings}"
        )
    try:
        records = resolve_pack(doc, received_at)
    except Invalid as exc:
        return reject_message(exc.reason, exc.detail)
    for index, group in enumerate(group_by_time(records)):
        try:
            obj = reading_object(group, dataset)
            reading = decode_reading(
                fill_from_registry(obj, device), dataset, topic, council=council, received_at=received_at
            )
        except Invalid as exc:
            raw = orjson.dumps([doc[r.index] for r in group])
            out.rejections.append(Rejection(exc.reason, exc.detail, raw, index, **where))
            continue
        reading["reading_index"] = index
        out.readings.append(reading)
    return out


def _decode_lorawan(
    out: Decoded,
    fmt: WireFormat,
    topic: str,
    payload: bytes,
    limits: Limits,
    received_at: datetime | None,
    registry: Registry | None,
) -> Decoded:
    """A The Things Stack v3 or ChirpStack v4 uplink: one reading (transforms/lorawan.py)."""
    if len(payload) > limits.max_payload_bytes:
        detail = f"payload of {len(payload)} bytes exceeds {limits.max_payload_bytes}"
        out.rejections.append(Rejection(Reason.PAYLOAD_TOO_LARGE, detail, payload))
        return out
    try:
        doc = load_json(payload, limits)
        uplink = parse_tts(topic, doc) if fmt == WireFormat.TTS_V3 else parse_chirpstack(topic, doc)
        owner = find_owner(uplink, registry)
    except Invalid as exc:
        out.rejections.append(Rejection(exc.reason, exc.detail, payload))
        return out
    out.domain = owner.domain
    where = {"council": owner.council, "domain": owner.domain.value, "device_id": owner.device_id}
    dataset = DATASETS.get(owner.domain)
    if dataset is None:
        detail = f"domain {owner.domain} has no published dataset yet; kept for replay once it is declared"
        out.rejections.append(Rejection(Reason.DOMAIN_NOT_ENABLED, detail, payload, **where))
        return out
    try:
        obj = profile_reading(uplink, owner, dataset)
        topic_of_device = Topic(owner.council, owner.domain, owner.device_id)
        council = registry.councils.get(owner.council) if registry is not None else None
        reading = decode_reading(
            fill_from_registry(obj, owner.device),
            dataset,
            topic_of_device,
            council=council,
            received_at=received_at,
        )
    except Invalid as exc:
        out.rejections.append(Rejection(exc.reason, exc.detail, payload, 0, **where))
        return out
    reading["reading_index"] = 0
    out.readings.append(reading)
    return out
