"""Hostile MQTT messages: hand-written mutators over `random.Random`, and Hypothesis strategies.

Every generator is a function `(rng) -> Message` (topic bytes, payload bytes), so the deep run
draws 100,000 messages from one seeded `random.Random` in seconds, and Hypothesis drives the same
generators through `st.randoms()` in the property tests.

Valid readings come from a few councils, devices and days only, so staging makes few partitions
(the quality gate judges tens of council-days, not thousands) and identical re-sends and
corrections of one reading happen often. The control council (`CONTROL_COUNCIL`) is never
generated: its clean readings are added by the harness, and must come out exactly as sent.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st

from civicflow.ingest.samples import (
    aberdeen_air_quality_messages,
    birmingham_parking_messages,
    edinburgh_waste_messages,
    synthetic_traffic_messages,
)

Message = tuple[bytes, bytes]
Generator = Callable[[random.Random], Message]

ROOT = Path(__file__).resolve().parents[2]
LORAWAN_SAMPLES = ROOT / "samples" / "lorawan"
PREFIX = "city"
FUZZ_COUNCILS = ("fuzztown", "fuzzbury")
CONTROL_COUNCIL = "fuzzcontrol"
LORA_COUNCIL = "fuzzlora"  # tests/fuzz/registry/fuzzlora.toml: takes its applications' unknown devices
TTS_APP, TTS_TENANT = "fuzz-app", "ttn"
CHIRP_APP = "fuzz-chirp"
DAYS = (date(2026, 3, 1), date(2026, 3, 2))
DEVICES = tuple(f"d{i}" for i in range(6))
DOMAINS = ("traffic", "parking", "air_quality", "waste")
MAX_PAYLOAD = 256 * 1024  # Limits.max_payload_bytes
MAX_BATCH = 10_000  # Limits.max_batch_readings

EDGE_TIMES = (
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59-01:00",
    "2026-03-01T00:00:00+01:60",
    "2026-03-01T00:00:00-23:59",
    "2026-03-01T00:00:00+24:00",
    "2023-02-29T00:00:00Z",
    "2023-02-30T00:00:00Z",
    "2024-02-29T12:00:00Z",
    "2026-03-01T24:00:00Z",
    "2016-12-31T23:59:60Z",
    "2026-13-01T00:00:00Z",
    "2026-03-01T00:00:00.1234567891234Z",
    "2026-03-01t00:00:00z",
    "2026-03-01 00:00:00Z",
    "2026-03-01T00:00:00",
    "2016-10-30T01:30:00",
    "2016-03-27T01:30:00",
    "2026-03-01",
    "2099-01-01T00:00:00Z",
    "2999-12-31T23:59:59Z",
    "3000-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "1970-01-01T00:00:00Z",
    "",
    " 2026-03-01T00:00:00Z",
    "2026-03-01T00:00:00Z\n",
    "２０２６-03-01T00:00:00Z",
)
EDGE_EPOCHS = (0, -1, 1772323200, 1772323200.5, 1772323200000, 32503679999, 32503680000, 1e300, 2**63)
EDGE_NUMBERS = (
    0,
    -0.0,
    -1,
    1,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64,
    10**30,
    1e308,
    -1e308,
    5e-324,
    0.1,
    1.0000000000000002,
    float("nan"),
    float("inf"),
    float("-inf"),
)
WRONG_TYPES = ("12", "", "NaN", [1], [], {"v": 1}, {}, None, True, False)
INVALID_UTF8 = (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80", b"\xfe\xff")
STRANGE_LEVELS = (
    "\n",
    "nl\n",
    "\x00",
    "a\x00b",
    "\t",
    "\x7f",
    "\u0085",
    "\ufdd0",
    "\uffff",
    "é",
    "ß",
    "Straße",
    "日本",
    "\U0001f697",
    "\u2028",
    "\u00a0",
    "\u200b",
    "..",
    ".",
    "a..b",
    "",
    " ",
    "-dash",
    "_under",
    "UPPER",
    "+",
    "#",
    "a+b",
    "a#",
    "x" * 64,
    "x" * 65,
    "x" * 300,
    "x" * 70_000,
)
WRONG_PREFIXES = ("City", "city2", "ciity", "", "/city", "$SYS", "town", "v3", "application", "city/city")


# -- valid readings ---------------------------------------------------------------------------


def observed_at(rng: random.Random, day: date | None = None) -> Any:
    """A valid time on one of the fuzz days: RFC 3339 in UTC or with an offset, or epoch seconds."""
    day = day or rng.choice(DAYS)
    at = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=5 * rng.randrange(288))
    style = rng.random()
    if style < 0.6:
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style < 0.8:
        return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00"
    return int(at.timestamp())


def clean_reading(rng: random.Random, domain: str) -> dict[str, Any]:
    """A reading the contract accepts (docs/mqtt-contract.md), in one of the domain's shapes."""
    obj: dict[str, Any] = {"observed_at": observed_at(rng)}
    if domain == "traffic":
        obj["intensity"] = rng.randrange(0, 500)
        if rng.random() < 0.7:
            obj["average_vehicle_speed"] = round(rng.uniform(0, 120), 1)
        if rng.random() < 0.5:
            obj["occupancy"] = round(rng.random(), 3)
        if rng.random() < 0.3:
            obj["lane_id"] = rng.randrange(3)
    elif domain == "parking":
        if rng.random() < 0.8:
            total = rng.randrange(1, 600)
            obj |= {"occupied_spots": rng.randrange(0, total + 1), "total_spots": total}
        else:
            obj["status"] = rng.choice(("free", "occupied", "closed", "unknown"))
    elif domain == "air_quality":
        for name in rng.sample(("no2", "pm10", "pm25", "o3", "temperature", "relative_humidity"), 3):
            obj[name] = round(rng.uniform(0, 1 if name == "relative_humidity" else 60), 2)
    else:
        obj["filling_level"] = round(rng.random(), 2)
        if rng.random() < 0.3:
            obj["status"] = rng.choice(("ok", "lidOpen", "burning"))
    if rng.random() < 0.1:
        obj["msg_id"] = rng.choice((f"m{rng.randrange(10**6)}", rng.randrange(10**6)))
    if rng.random() < 0.1:
        obj |= {"lat": round(rng.uniform(50, 58), 5), "lon": round(rng.uniform(-5, 1), 5)}
    return obj


def native_topic(rng: random.Random, domain: str | None = None, council: str | None = None) -> str:
    domain = domain or rng.choice(DOMAINS)
    return f"{PREFIX}/{council or rng.choice(FUZZ_COUNCILS)}/{domain}/{rng.choice(DEVICES)}"


def dumps(obj: Any, rng: random.Random | None = None) -> bytes:
    """JSON as a gateway might write it: big integers and NaN tokens allowed, any spacing."""
    ascii_only = rng is None or rng.random() < 0.5
    compact = rng is None or rng.random() < 0.7
    text = json.dumps(obj, ensure_ascii=ascii_only, separators=(",", ":") if compact else None)
    return text.encode("utf-8", "surrogatepass")


@cache
def sample_messages() -> tuple[Message, ...]:
    """A slice of each real recording in samples/, as its gateways publish it (ingest/samples.py)."""
    sources = (
        birmingham_parking_messages(),
        edinburgh_waste_messages(),
        aberdeen_air_quality_messages(),
        synthetic_traffic_messages(),
    )
    return tuple((t.encode(), p) for source in sources for t, p in islice(source, 40))


@cache
def tts_samples() -> tuple[dict, ...]:
    return tuple(orjson.loads(p.read_bytes()) for p in sorted(LORAWAN_SAMPLES.glob("tts_v3_*.json")))


def chirpstack_event(dev_eui: str, application: str, at: str) -> dict[str, Any]:
    """A ChirpStack v4 up event as docs/mqtt-contract.md shows it (no real sample is shipped)."""
    return {
        "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        "time": at,
        "deviceInfo": {"applicationId": application, "devEui": dev_eui, "deviceName": "am319"},
        "fCnt": 412,
        "fPort": 85,
        "object": {"temperature": 8.4, "humidity": 71.5, "pm2_5": 11, "pm10": 19},
    }


# -- mutators ---------------------------------------------------------------------------------


def nest(value: str, depth: int) -> str:
    return "[" * depth + value + "]" * depth


def mutate_object(rng: random.Random, obj: Any) -> Any:
    """One structural change to a reading object: keys, types, numbers, times, location, msg_id.

    A batch (a list) has one of its objects changed; anything else is returned as it is.
    """
    if isinstance(obj, list) and obj:
        at = rng.randrange(len(obj))
        return [*obj[:at], mutate_object(rng, obj[at]), *obj[at + 1 :]]
    if not isinstance(obj, dict):
        return obj
    obj = dict(obj)
    keys = list(obj) or ["observed_at"]
    key = rng.choice(keys)
    choice = rng.randrange(11)
    if choice == 0:
        obj.pop(key, None)
    elif choice == 1:
        obj[rng.choice(("fuzz", "filling_level", "intensity", "Observed_At", "observed_at ", ""))] = 1
    elif choice == 2:
        obj[key] = rng.choice(WRONG_TYPES)
    elif choice == 3:
        obj[key] = rng.choice(EDGE_NUMBERS)
    elif choice in (4, 5):
        obj["observed_at"] = rng.choice(EDGE_TIMES)
    elif choice == 6:
        obj["observed_at"] = rng.choice(EDGE_EPOCHS)
    elif choice == 7:
        obj["msg_id"] = rng.choice(("m" * 201, "m" * 200, 2**64, -1, True, [1], "é" * 50, ""))
    elif choice == 8:
        obj |= rng.choice(({"lat": 51.5}, {"lat": 91, "lon": 0}, {"lat": 0, "lon": -181}, {"lat": "51"}))
    elif choice == 9:
        obj[key] = rng.choice(("occupied\x00", "ｏｃｃｕｐｉｅｄ", "\ud800", "free ", "OK", "é" * 1000))
    else:
        obj = {k: None for k in obj}
    return obj


def mutate_text(rng: random.Random, payload: bytes) -> bytes:
    """One change to the bytes of a JSON payload: duplicate keys, truncation, garbage, encodings."""
    choice = rng.randrange(12)
    if choice in (0, 1) and payload.startswith(b"{") and len(payload) > 2:
        # the same key twice, first value or last value differing (RFC 8259 leaves it undefined)
        doc = orjson.loads(payload) if _is_json(payload) else {}
        key = rng.choice(list(doc)) if isinstance(doc, dict) and doc else "occupied_spots"
        value = rng.choice(("500", "5", "-1", '"x"', "null"))
        extra = f'"{key}":{value}'.encode()
        if choice == 0:
            return b"{" + extra + b"," + payload[1:]
        return payload[:-1] + b"," + extra + b"}"
    if choice == 2:
        return payload[: rng.randrange(len(payload) + 1)]
    if choice == 3:
        return payload + rng.choice((b" x", b"}", b"\x00", b"\n{}", b",", b"]"))
    if choice == 4:
        return b"\xef\xbb\xbf" + payload
    if choice == 5:
        return b" \n\t\r" * rng.randrange(1, 4) + payload + b" \n"
    if choice == 6:
        at = rng.randrange(len(payload) + 1)
        return payload[:at] + rng.choice(INVALID_UTF8) + payload[at:]
    if choice == 7 and payload:
        at = rng.randrange(len(payload))
        return payload[:at] + bytes([rng.randrange(256)]) + payload[at + 1 :]
    if choice == 8:
        return b"/* gateway */" + payload
    if choice == 9 and payload.endswith(b"}"):
        return payload[:-1] + b",}"
    if choice == 10:
        depth = rng.choice((31, 32, 33, 64, 1025, 5000))
        return b'{"observed_at":"2026-03-01T00:00:00Z","intensity":' + nest("1", depth).encode() + b"}"
    return payload.replace(b'"', b"'", 2)


def _is_json(payload: bytes) -> bool:
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return True


def mutate_topic(rng: random.Random, topic: str) -> bytes:
    """One change to a topic: a strange level, a wrong prefix, a level too many or too few."""
    levels = topic.split("/")
    choice = rng.randrange(7)
    if choice in (0, 1, 2):
        levels[rng.randrange(len(levels))] = rng.choice(STRANGE_LEVELS)
    elif choice == 3:
        levels[0] = rng.choice(WRONG_PREFIXES)
    elif choice == 4:
        levels.insert(rng.randrange(len(levels) + 1), rng.choice(("", "x", "senml", "up")))
    elif choice == 5:
        del levels[rng.randrange(len(levels))]
    else:
        levels = [level.upper() if rng.random() < 0.5 else level for level in levels]
    return "/".join(levels).encode("utf-8", "surrogatepass")


# -- generators -------------------------------------------------------------------------------


def gen_clean(rng: random.Random) -> Message:
    domain = rng.choice(DOMAINS)
    return native_topic(rng, domain).encode(), dumps(clean_reading(rng, domain), rng)


def gen_clean_batch(rng: random.Random) -> Message:
    domain = rng.choice(DOMAINS)
    batch = [clean_reading(rng, domain) for _ in range(rng.randrange(1, 20))]
    if rng.random() < 0.3:
        batch.append(dict(batch[0]))  # the same reading twice in one batch
    return native_topic(rng, domain).encode(), dumps(batch, rng)


def gen_sample(rng: random.Random) -> Message:
    return rng.choice(sample_messages())


def gen_mutated_json(rng: random.Random) -> Message:
    if rng.random() < 0.5:
        topic, payload = rng.choice(sample_messages())
        obj = orjson.loads(payload)
    else:
        domain = rng.choice(DOMAINS)
        topic, obj = native_topic(rng, domain).encode(), clean_reading(rng, domain)
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        obj = mutate_object(rng, obj)
    payload = dumps(obj, rng)
    if rng.random() < 0.5:
        payload = mutate_text(rng, payload)
    return topic, payload


def gen_topic(rng: random.Random) -> Message:
    domain = rng.choice(DOMAINS)
    topic = native_topic(rng, domain)
    if rng.random() < 0.2:
        topic += "/senml"
    return mutate_topic(rng, topic), dumps(clean_reading(rng, domain), rng)


def gen_tts(rng: random.Random) -> Message:
    """A The Things Stack v3 uplink: a real sample, or one moved to the fuzz application, mutated."""
    doc = json.loads(json.dumps(rng.choice(tts_samples())))
    ids = doc["end_device_ids"]
    if rng.random() < 0.6:  # an unknown device of an application whose unknown devices are taken
        ids["application_ids"]["application_id"] = TTS_APP
        device = rng.choice(("eui-24e1", "a..b", "a.b", "Dev.1", "dev_1", "x" * 64, "x" * 65, "-x", "é"))
        ids["device_id"] = device
        if rng.random() < 0.5:
            ids.pop("dev_eui", None)
        doc["uplink_message"]["decoded_payload"] = {"pm2_5": 12, "pm10": 20, "temperature": 9.5}
        up = doc["uplink_message"]
        up["received_at"] = str(observed_at(rng)) if rng.random() < 0.8 else rng.choice(EDGE_TIMES)
    app, device = ids["application_ids"]["application_id"], ids["device_id"]
    topic = f"v3/{app}@{TTS_TENANT}/devices/{device}/up"
    if rng.random() < 0.3:
        fields = doc["uplink_message"].get("decoded_payload") or {}
        doc["uplink_message"]["decoded_payload"] = mutate_object(rng, fields)
    if rng.random() < 0.2:
        doc = mutate_object(rng, doc)
    if rng.random() < 0.1:
        topic = mutate_topic(rng, topic).decode("utf-8", "surrogatepass")
    return topic.encode("utf-8", "surrogatepass"), dumps(doc, rng)


def gen_chirpstack(rng: random.Random) -> Message:
    """A ChirpStack v4 up event of the registered example device or an unknown device, mutated."""
    if rng.random() < 0.3:
        app, dev_eui = "0b1f5c3e-7d2a-4c8e-9f61-3a5d2e8b4c17", "24e1247100000007"
    else:
        app, dev_eui = CHIRP_APP, rng.choice(("24e1247100000100", "24E1247100000101", "0000000000000000"))
    doc = chirpstack_event(dev_eui, app, str(observed_at(rng)))
    if rng.random() < 0.4:
        doc = mutate_object(rng, doc)
    if rng.random() < 0.3:
        doc["object"] = mutate_object(rng, doc["object"]) if isinstance(doc.get("object"), dict) else {}
    topic = f"application/{app}/device/{dev_eui}/event/up"
    if rng.random() < 0.15:
        topic = mutate_topic(rng, topic).decode("utf-8", "surrogatepass")
    return topic.encode("utf-8", "surrogatepass"), dumps(doc, rng)


def gen_senml(rng: random.Random) -> Message:
    """A SenML pack (RFC 8428) like docs/mqtt-contract.md's, with base fields, units and times mutated."""
    at = observed_at(rng)
    bt = at if isinstance(at, int) else int(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp())
    pack: list[Any] = [
        {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": bt, "bu": "ug/m3", "n": "no2", "v": 40},
        {"n": "pm10", "v": 18},
        {"n": "temperature", "u": "Cel", "v": 11.5},
        {"n": "no2", "u": "ppb", "t": 300, "v": 20},
    ]
    for _ in range(rng.choice((0, 1, 2))):
        index = rng.randrange(len(pack))
        record = dict(pack[index])
        label = rng.choice(("bt", "t", "bu", "u", "n", "v", "bver", "vb", "vs", "bn", "x_", "bv"))
        record[label] = rng.choice(
            (0, -1, 2**28 - 1, 2**28, 32503680000, 1e300, "x", None, True, "ppb", "K", "%RH", "furlong")
        )
        pack[index] = record
    if rng.random() < 0.1:
        pack = rng.choice(([], {}, [1], [[]], pack * 20, [{}] * (MAX_BATCH + 1)))
    topic = f"{PREFIX}/{rng.choice(FUZZ_COUNCILS)}/air_quality/{rng.choice(DEVICES)}/senml"
    return topic.encode(), dumps(pack, rng)


def gen_batch(rng: random.Random) -> Message:
    """A batch: mixed good and bad readings, empty, nested, or one reading more than allowed."""
    domain = rng.choice(DOMAINS)
    topic = native_topic(rng, domain).encode()
    choice = rng.randrange(8)
    if choice == 0:
        return topic, b"[]"
    if choice == 1:
        return topic, b"[" + b",".join([b"{}"] * (MAX_BATCH + 1)) + b"]"
    if choice == 2:
        return topic, dumps([[clean_reading(rng, domain)]], rng)
    items: list[Any] = []
    for _ in range(rng.randrange(1, 30)):
        obj = clean_reading(rng, domain)
        items.append(mutate_object(rng, obj) if rng.random() < 0.4 else obj)
    if rng.random() < 0.2:
        items.append(rng.choice((1, "x", None, [], True)))
    return topic, dumps(items, rng)


def gen_bytes(rng: random.Random) -> Message:
    """Arbitrary bytes: as the payload on a valid topic, or as the topic itself."""
    payload = rng.randbytes(rng.choice((0, 1, 2, 8, 64, 512)))
    if rng.random() < 0.3:
        payload = bytes(b & 0x7F for b in payload)
    if rng.random() < 0.7:
        return native_topic(rng).encode(), payload
    topic = rng.choice((b"city/", b"v3/", b"application/", b"")) + rng.randbytes(rng.randrange(1, 40))
    return topic, payload


def gen_invalid_utf8(rng: random.Random) -> Message:
    domain = rng.choice(DOMAINS)
    obj = clean_reading(rng, domain)
    payload = dumps(obj, None)
    at = payload.find(b'"', 1) + 1 or 1
    return native_topic(rng, domain).encode(), payload[:at] + rng.choice(INVALID_UTF8) + payload[at:]


def gen_oversize(rng: random.Random) -> Message:
    """A payload just over, at, or just under the size limit: a reading padded with whitespace."""
    domain = rng.choice(DOMAINS)
    body = dumps(clean_reading(rng, domain))
    size = MAX_PAYLOAD + rng.choice((-1, 0, 1, 4096))
    payload = body[:-1] + b" " * max(0, size - len(body)) + b"}"
    topic = native_topic(rng, domain)
    if rng.random() < 0.2:
        topic = f"v3/{TTS_APP}@{TTS_TENANT}/devices/dev-1/up"
    return topic.encode(), payload


GENERATORS: dict[str, tuple[Generator, float]] = {
    "clean": (gen_clean, 18),
    "clean_batch": (gen_clean_batch, 4),
    "sample": (gen_sample, 8),
    "mutated_json": (gen_mutated_json, 26),
    "topic": (gen_topic, 9),
    "tts": (gen_tts, 7),
    "chirpstack": (gen_chirpstack, 5),
    "senml": (gen_senml, 7),
    "batch": (gen_batch, 6),
    "bytes": (gen_bytes, 5),
    "invalid_utf8": (gen_invalid_utf8, 2),
    "oversize": (gen_oversize, 0.15),
}
RESEND_SHARE = 0.05
"""Share of messages that are an exact re-send of an earlier one (they collapse at staging)."""


def generate(rng: random.Random, count: int) -> Iterator[Message]:
    """`count` messages: the generators by weight, and exact re-sends of recent messages."""
    names = list(GENERATORS)
    weights = [GENERATORS[n][1] for n in names]
    recent: deque[Message] = deque(maxlen=512)
    made = 0
    while made < count:
        if recent and rng.random() < RESEND_SHARE:
            message = rng.choice(recent)
        else:
            message = GENERATORS[rng.choices(names, weights)[0]][0](rng)
            if CONTROL_COUNCIL.encode() in message[0]:
                continue
            recent.append(message)
        made += 1
        yield message


def control_messages(day: date = DAYS[0], devices: int = 4, per_device: int = 36) -> list[Message]:
    """Clean car-park readings of the control council: each one must be published, unchanged."""
    out = []
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    for d in range(devices):
        for i in range(per_device):
            at = (start + timedelta(minutes=5 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            payload = {"observed_at": at, "occupied_spots": (7 * i + d) % 100, "total_spots": 100}
            out.append((f"{PREFIX}/{CONTROL_COUNCIL}/parking/cp{d}".encode(), orjson.dumps(payload)))
    return out


# -- what a broker takes and delivers ---------------------------------------------------------


def publishable(topic: bytes) -> bool:
    """Whether Mosquitto 2 takes a PUBLISH to `topic`; it disconnects a client that sends another.

    MQTT topic names are UTF-8 without wildcards; Mosquitto also refuses control characters
    (U+0000-U+001F, U+007F-U+009F), Unicode non-characters and more than 200 levels. Topics
    starting with `$` are the broker's own, matched by no subscription of the listener.
    """
    if not topic or len(topic) > 65_535 or topic.startswith(b"$") or topic.count(b"/") >= 200:
        return False
    try:
        text = topic.decode("utf-8")
    except UnicodeDecodeError:
        return False
    for ch in text:
        cp = ord(ch)
        if ch in "+#" or cp <= 0x1F or 0x7F <= cp <= 0x9F or 0xD800 <= cp <= 0xDFFF:
            return False
        if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFF) in (0xFFFE, 0xFFFF):
            return False
    return True


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic matching: `+` is one level, a trailing `#` any number (none included)."""
    want, have = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


# -- Hypothesis -------------------------------------------------------------------------------


def _from_generator(name: str, rng: random.Random) -> Message:
    return GENERATORS[name][0](rng)


def messages() -> st.SearchStrategy[Message]:
    """Any message: a generator's (Hypothesis choosing its random draws), or arbitrary bytes."""
    generated = st.builds(
        _from_generator, st.sampled_from(sorted(GENERATORS)), st.randoms(use_true_random=False)
    )
    levels = st.text(max_size=12)
    topics = st.one_of(
        st.binary(max_size=48),
        st.builds("/".join, st.lists(levels, min_size=1, max_size=6)).map(
            lambda t: t.encode("utf-8", "surrogatepass")
        ),
        st.builds(
            lambda c, d, dev: f"{PREFIX}/{c}/{d}/{dev}".encode("utf-8", "surrogatepass"),
            st.one_of(st.sampled_from(FUZZ_COUNCILS), levels),
            st.sampled_from(DOMAINS),
            st.one_of(st.sampled_from(DEVICES), levels),
        ),
    )
    return st.one_of(generated, st.tuples(topics, st.binary(max_size=300)))
