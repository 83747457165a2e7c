"""The DuckDB fast path against the reference decoder: same staged rows, quarantine, partitions.

Every comparison decodes or stages the same raw segment twice, once with the fast path
(`fast=True`) and once with every record through `decode_message` (`fast=False`), and requires
identical results: every staged column (floats compared by their exact representation, so 0.0
and -0.0 differ), every quarantine row (reason, detail, payload), the ledger, the partitions and
the corrections.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from factories import LIMITS, tree_digest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from civicflow.contract import DATASETS, LOCATION_COLUMNS, Domain
from civicflow.ingest.samples import (
    aberdeen_air_quality_messages,
    birmingham_parking_messages,
    edinburgh_waste_messages,
    synthetic_traffic_messages,
)
from civicflow.registry import load_registry
from civicflow.transforms.decode import parse_observed_at
from civicflow.transforms.fast import SegmentDecoder, received_at_us
from civicflow.transforms.fastjson import MAX_ORDERS, fields, learn_orders, rfc3339_us
from civicflow.transforms.invalid import Invalid
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.segment_columns import scan_columns
from civicflow.warehouse.segments import MAGIC, RawRecord, SegmentWriter, _scan, encode_record

NOW = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
RECEIVED_NS = 1_772_800_000_123_456_789
REGISTRY = load_registry()


def segment_bytes(messages: list[tuple[str, bytes]], ns: int = RECEIVED_NS) -> bytes:
    return MAGIC + b"".join(
        encode_record(topic.encode(), payload, ns + 997 * i) for i, (topic, payload) in enumerate(messages)
    )


def decode_both(data: bytes, registry=None, chunk_records: int = 1 << 17):
    """Decode a segment both ways; return (fast result, reference result, rows the fast path took)."""
    cols = scan_columns(data)
    out = []
    for fast in (True, False):
        decoder = SegmentDecoder(LIMITS, registry, fast=fast)
        tables: dict[str, list[pa.Table]] = {}
        quarantine: list[dict] = []
        try:
            for part in decoder.decode(cols, "l1/seg", NOW, chunk_records=chunk_records):
                for domain, ts in part.tables.items():
                    tables.setdefault(domain.value, []).extend(ts)
                quarantine.extend(part.quarantine)
        finally:
            decoder.close()
        rows = {
            domain: sorted(
                (repr(r) for r in pa.concat_tables(ts).to_pylist()),
            )
            for domain, ts in tables.items()
        }
        out.append((rows, [repr(q) for q in quarantine]))
    return out[0], out[1]


def fast_accepted(data: bytes, registry=None) -> int:
    """How many readings the fast path took (the reference decodes the rest)."""
    decoder = SegmentDecoder(LIMITS, registry)
    try:
        for _ in decoder.decode(scan_columns(data), "l1/seg", NOW):
            pass
    finally:
        decoder.close()
    return decoder.fast_readings


# -- messages -----------------------------------------------------------------------------------

DOMAIN_FIELDS = {
    "traffic": ["intensity", "average_vehicle_speed", "occupancy", "interval_s", "lane_id"],
    "parking": ["occupied_spots", "total_spots", "status"],
    "air_quality": ["no2", "pm10", "pm25", "o3", "so2", "co", "temperature", "relative_humidity"],
    "waste": ["filling_level", "temperature", "status"],
}

numbers = st.one_of(
    st.integers(-5, 500).map(str),
    st.integers(-(2**62), 2**62).map(str),
    st.integers(2**63 - 2, 2**64).map(str),  # beyond 64 bits: out_of_range, on either path
    st.sampled_from(
        ["0", "-0", "0.0", "-0.0", "1.0", "2.00", "1", "1e2", "1E2", "1.5e1", "-1", "300", "300.0"]
    ),
    st.sampled_from(["86400", "86401", "400", "400.0000001", "0.5", "1.0000000000000001", "49999.99"]),
    st.sampled_from(["12345678901234567", "1234567890123456789", "1e18", "1e400"]),
    st.floats(-100, 1000, allow_nan=False).map(lambda f: orjson.dumps(f).decode()),
    st.integers(0, 25)
    .flatmap(lambda places: st.decimals(-500, 60000, places=places, allow_nan=False, allow_infinity=False))
    .map(str),
)
strings = st.one_of(
    st.sampled_from(["free", "occupied", "closed", "unknown", "ok", "lidOpen", "burning", "reserved"]),
    st.sampled_from(["3", "1.5", "", "NaN", "Infinity", "null", "true", "mañana", "\\u0066ree", "a\\/b"]),
    st.text(max_size=8),
    st.text(alphabet="abc", min_size=195, max_size=205),
).map(lambda s: '"' + s.replace('"', "") + '"' if "\\" in s else orjson.dumps(s).decode())

OFFSETS = [
    "Z",
    "z",
    "+00:00",
    "-00:00",
    "+01:00",
    "-05:30",
    "+14:00",
    "-14:00",
    "+23:59",
    "+24:00",
    "+01:60",
    "",
]


@st.composite
def timestamps(draw) -> str:
    year = draw(st.sampled_from([1969, 1970, 2016, 2026, 2999, 3000, 1, 9999]))
    month = draw(st.integers(0, 13))
    day = draw(st.integers(0, 32))
    hour, minute = draw(st.integers(0, 24)), draw(st.integers(0, 60))
    second = draw(st.sampled_from([0, 1, 42, 59, 60]))
    sep = draw(st.sampled_from(["T", "t", " ", "_"]))
    frac = draw(
        st.sampled_from(["", ".", ".1", ".12", ".123", ".123456", ".1234564", ".1234567", ".999999999"])
    )
    offset = draw(st.sampled_from(OFFSETS))
    if draw(st.booleans()):
        month, day = draw(st.integers(1, 12)), draw(st.integers(1, 28))
        hour, minute = draw(st.integers(0, 23)), draw(st.integers(0, 59))
    return f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}{frac}{offset}"


observed = st.one_of(
    timestamps().map(lambda s: orjson.dumps(s).decode()),
    st.integers(-10, 32503680001).map(str),
    st.sampled_from(["1475564382", "1475564382.5", "32503679999", "32503680000", "0", "-1", "true", "null"]),
)
values = st.one_of(
    numbers, strings, st.sampled_from(["true", "false", "null", "[]", "{}", '{"a": 1}', "[1]"])
)


@st.composite
def payloads(draw, domain: str) -> bytes:
    fields = draw(st.lists(st.sampled_from(DOMAIN_FIELDS[domain]), max_size=4, unique=True))
    pairs: list[tuple[str, str]] = []
    if draw(st.integers(0, 9)):
        pairs.append(("observed_at", draw(observed)))
    for name in fields:
        if name == "status" or draw(st.integers(0, 3)) == 0:
            pairs.append((name, draw(values)))
        else:
            pairs.append((name, draw(numbers)))
    if draw(st.booleans()):
        pairs.append(("lat", draw(numbers)))
    if draw(st.booleans()):
        pairs.append(("lon", draw(numbers)))
    if draw(st.integers(0, 3)) == 0:
        pairs.append(("msg_id", draw(st.one_of(strings, numbers))))
    if draw(st.integers(0, 9)) == 0:
        pairs.append((draw(st.sampled_from(["extra", "Intensity", "tEmperature", "ñ", ""])), draw(values)))
    if pairs and draw(st.integers(0, 9)) == 0:  # a key twice: orjson keeps the last
        pairs.insert(draw(st.integers(0, len(pairs))), (pairs[0][0], draw(values)))
    pairs = draw(st.permutations(pairs))
    ws = draw(st.sampled_from(["", " ", "\n", "\t", "\r\n  ", "\x0c"]))
    colon = draw(st.sampled_from([":", ":", ": ", " :"]))
    body = ("," + ws).join(f'"{k}"{colon}{v}' for k, v in pairs)
    text = ws + "{" + ws + body + ws + draw(st.sampled_from(["}", "}", "}", ",}", "}}"])) + ws
    if draw(st.integers(0, 19)) == 0:
        text = "[" + text + "]"
    return text.encode()


@st.composite
def messages(draw) -> tuple[str, bytes]:
    domain = draw(st.sampled_from([*DOMAIN_FIELDS, "noise"]))
    council = draw(st.sampled_from(["leeds", "birmingham", "aberdeen", "x" * 65, "Leeds"]))
    device = draw(st.sampled_from(["dev-1", "dev_2", "bhmbccmkt01", "a.b", ""]))
    prefix = draw(st.sampled_from(["city", "city", "city", "town"]))
    suffix = draw(st.sampled_from(["", "", "", "", "/senml", "/x"]))
    payload = draw(payloads(domain if domain in DOMAIN_FIELDS else "traffic"))
    if draw(st.integers(0, 29)) == 0:
        payload = payload.replace(b'"', b"'")
    return f"{prefix}/{council}/{domain}/{device}{suffix}", payload


@pytest.mark.unit
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=1, max_size=30), st.booleans())
def test_fast_path_decodes_like_the_reference(msgs, with_registry):
    fast, reference = decode_both(segment_bytes(msgs), REGISTRY if with_registry else None)
    assert fast == reference


def valid_reading(domain: str, i: int) -> dict:
    base = {"observed_at": f"2026-03-02T{i % 24:02d}:{i % 60:02d}:{i % 59:02d}.{i:06d}Z"}
    return (
        base
        | {
            "traffic": {"intensity": i, "average_vehicle_speed": 40.5, "lane_id": i % 3},
            "parking": {"occupied_spots": i % 100, "total_spots": 100},
            "air_quality": {"no2": 12.5, "pm10": 3, "lat": 57.1, "lon": -2.1, "msg_id": i},
            "waste": {"filling_level": 0.25, "status": "ok", "msg_id": f"m{i}"},
        }[domain]
    )


@pytest.mark.unit
def test_the_fast_path_takes_every_plain_native_reading():
    msgs = [
        (f"city/leeds/{d}/dev-{i}", orjson.dumps(valid_reading(d, i)))
        for d in DOMAIN_FIELDS
        for i in range(50)
    ]
    data = segment_bytes(msgs)
    assert fast_accepted(data) == len(msgs)
    fast, reference = decode_both(data)
    assert fast == reference
    assert sum(len(v) for v in fast[0].values()) == len(msgs) and fast[1] == []


@pytest.mark.unit
@pytest.mark.parametrize(
    "payload",
    [
        b'{"observed_at": "2026-03-02T08:00:00Z", "intensity": 1, "intensity": 2}',
        b'{"observed_at": "2026-03-02T08:00:00Z", "intensity": 1.0}',
        b'{"observed_at": "2026-03-02T08:00:00Z", "intensity": true}',
        b'{"observed_at": "2026-03-02T08:00:00Z", "intensity": "3"}',
        b'{"observed_at": "2026-03-02T23:59:60Z", "intensity": 3}',
        b'{"observed_at": "2026-03-02T08:00:00.1234567+14:00", "intensity": 3}',
        b'{"observed_at": "2026-03-02T08:00:00-14:00", "intensity": 3, "lat": 1}',
        b'{"observed_at": "2026-03-02T08:00:00Z", "intensity": 3, "extra": {"a": 1}}',
        b'{"observed_at": 1772438400, "intensity": 999999999999999999, "lane_id": 1e3}',
        b'{"observed_at": "2026-03-02T08:00:00Z", "occupancy": -0.0, "msg_id": "caf\xc3\xa9"}',
    ],
)
def test_edge_cases_decode_like_the_reference(payload):
    fast, reference = decode_both(segment_bytes([("city/leeds/traffic/d1", payload)]))
    assert fast == reference


# -- the typed grammar's parts, against the reference ---------------------------------------------


@st.composite
def grammar_times(draw) -> str:
    """Texts of the grammar's RFC 3339 form with any digits: calendar, clock and offset out of range too."""
    year = draw(
        st.one_of(st.sampled_from([1969, 1970, 2000, 2024, 2100, 2400, 2999, 3000]), st.integers(0, 9999))
    )
    month, day = draw(st.integers(0, 19)), draw(st.integers(0, 39))
    hour, minute, second = draw(st.integers(0, 29)), draw(st.integers(0, 69)), draw(st.integers(0, 69))
    if draw(st.booleans()):  # mostly valid, so acceptance is exercised as well as refusal
        month, day = draw(st.integers(1, 12)), draw(st.integers(1, 31))
        hour, minute, second = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    sep = draw(st.sampled_from("Tt "))
    fraction = draw(st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=12).map(".".__add__)))
    zone = draw(
        st.one_of(
            st.sampled_from(["Z", "z"]),
            st.tuples(st.sampled_from("+-"), st.integers(0, 29), st.integers(0, 69)).map(
                lambda t: f"{t[0]}{t[1]:02d}:{t[2]:02d}"
            ),
        )
    )
    return f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"


def reference_us(text: str) -> int | None:
    """observed_at as the reference decodes it, in microseconds since the epoch; None if refused."""
    value = int(text) if text.isdigit() else text
    try:
        parsed = parse_observed_at(value)
    except Invalid:
        return None
    return (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.mark.unit
@settings(max_examples=250, deadline=None)
@given(st.lists(st.one_of(grammar_times(), st.integers(0, 99_999_999_999).map(str)), min_size=1, max_size=20))
def test_rfc3339_us_gives_what_the_reference_gives(texts):
    us, ok = rfc3339_us(pa.array(texts))
    for text, value, accepted in zip(texts, us.tolist(), ok.tolist(), strict=True):
        want = reference_us(text)
        if accepted:
            assert value == want, text
        elif want is not None:
            # what the reference takes may be refused only outside 1970..2999, before the epoch
            # in UTC, or with an offset's minutes above 59 (which Python carries into the hours)
            year_ok = text.isdigit() or 1970 <= int(text[:4]) <= 2999
            minutes_ok = text.isdigit() or text[-1] in "Zz" or int(text[-2:]) <= 59
            assert not (year_ok and minutes_ok and want >= 0), text


@pytest.mark.unit
def test_rfc3339_us_cases():
    texts = [
        "2024-02-29T23:59:59.9999999+00:00",  # leap day; the seventh digit is cut, as the reference does
        "2100-02-29T00:00:00Z",  # 2100 is no leap year
        "2400-02-29T00:00:00Z",  # 2400 is
        "1970-01-01T00:30:00+01:00",  # before the epoch in UTC
        "2026-03-02t08:00:00.5-05:30",
        "2026-03-02 08:00:00+23:59",
        "2026-03-02T08:00:00+24:00",
        "2026-03-02T08:00:60Z",
        "32503679999",
        "32503680000",
        "0",
    ]
    us, ok = rfc3339_us(pa.array(texts))
    assert ok.tolist() == [True, False, True, False, True, True, False, False, True, False, True]
    for text, value, accepted in zip(texts, us.tolist(), ok.tolist(), strict=True):
        if accepted:
            assert value == reference_us(text), text


@pytest.mark.unit
def test_learn_orders_keeps_the_most_frequent_orders_of_allowed_keys():
    allowed = set(fields(DATASETS[Domain.TRAFFIC]))
    permuted = [
        orjson.dumps({"observed_at": 1, "lane_id": 1} | dict.fromkeys(keys, 1) | {"intensity": 2}).decode()
        for keys in itertools.permutations(["lat", "lon", "msg_id"])
    ]
    texts = [
        *['{"observed_at": 1, "intensity": 2}'] * 5,
        *['{"intensity": 2, "observed_at": 1}'] * 3,
        '{"intensity": 2}',  # no observed_at: nothing the fast path could take
        '{"observed_at": 1, "extra": 2}',  # a key outside the contract
        '{"observed_at": 1, "intensity": 2',  # not JSON
        "[1]",
        *permuted,  # six orders seen once each
    ]
    known: dict = {}
    learn_orders(pa.array(texts), allowed, known)
    assert len(known) == MAX_ORDERS
    assert list(known)[-2:] == [("intensity", "observed_at"), ("observed_at", "intensity")]
    assert all(order[0] != "intensity" or order == ("intensity", "observed_at") for order in known)
    learn_orders(pa.array(['{"observed_at": 1, "occupancy": 0.5}']), allowed, known)
    assert len(known) == MAX_ORDERS and list(known)[-1] == ("observed_at", "occupancy")


def fast_times(until: date) -> st.SearchStrategy[str]:
    return st.builds(
        lambda day, s, fraction, zone: (
            f"{day.isoformat()}T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}{fraction}{zone}"
        ),
        st.dates(date(1971, 1, 1), until),
        st.integers(0, 86399),
        st.sampled_from(["", ".5", ".123", ".123456", ".1234567"]),
        st.sampled_from(["Z", "z", "+00:00", "-05:30", "+14:00", "+23:59"]),
    )


FAST_TIMES = fast_times(date(2998, 12, 31))  # many from the future: future_timestamp, both ways
PAST_TIMES = fast_times(date(2026, 3, 5))  # before RECEIVED_NS, and its offsets


def fast_number(col) -> st.SearchStrategy[str]:
    """JSON text of a value the reference takes for `col`, in the grammar's form."""
    low = -1e14 if col.minimum is None else col.minimum
    high = 1e14 if col.maximum is None else col.maximum
    if col.type == "string":
        return st.sampled_from(col.enum).map(lambda v: f'"{v}"')
    if col.type == "integer":
        return st.integers(int(low), int(high)).flatmap(lambda v: st.sampled_from([str(v), f"{v}.0"]))
    return st.one_of(
        st.floats(low, high, allow_nan=False)
        .map(lambda f: orjson.dumps(f).decode())
        .filter(lambda t: "e" not in t),
        st.decimals(low, high, places=3, allow_nan=False).map(str).filter(lambda t: "E" not in t),
    )


@st.composite
def fast_readings(draw, domain: str, mutate: bool = False) -> bytes:
    """A reading the reference accepts, written within the grammar, its keys in a random order;
    with `mutate`, then made wrong in up to two ways (MUTATIONS)."""
    dataset = DATASETS[Domain(domain)]
    pairs = {
        "observed_at": draw(
            st.one_of(
                (FAST_TIMES if mutate else PAST_TIMES).map(lambda t: f'"{t}"'),
                st.integers(0, 32503679999 if mutate else RECEIVED_NS // 10**9).map(str),
            )
        )
    }
    names = [c.name for c in dataset.reading_fields]
    for name in draw(st.lists(st.sampled_from(names), min_size=1, unique=True)):
        pairs[name] = draw(fast_number(next(c for c in dataset.reading_fields if c.name == name)))
    if domain == "parking" and ("occupied_spots" in pairs) != ("total_spots" in pairs):
        pairs.pop("occupied_spots", None), pairs.pop("total_spots", None)
        pairs["status"] = '"free"'
    if "occupied_spots" in pairs and float(pairs["occupied_spots"]) > float(pairs["total_spots"]):
        pairs["occupied_spots"], pairs["total_spots"] = pairs["total_spots"], pairs["occupied_spots"]
    if not any(c.name in pairs for c in dataset.measurements):
        pairs[dataset.measurements[0].name] = draw(fast_number(dataset.measurements[0]))
    if draw(st.booleans()):
        pairs["lat"], pairs["lon"] = (
            draw(fast_number(LOCATION_COLUMNS[0])),
            draw(fast_number(LOCATION_COLUMNS[1])),
        )
    if draw(st.booleans()):
        pairs["msg_id"] = draw(
            st.one_of(st.integers(-(10**17), 10**17).map(str), st.just('"m-1"'), st.just('""'))
        )
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2])) if mutate else 0):
        draw(st.sampled_from(MUTATIONS))(draw, dataset, pairs)
    keys = draw(st.permutations(list(pairs)))
    ws = draw(st.sampled_from(["", " ", "\n  "]))
    body = f",{ws}".join(f'"{k}":{ws}{pairs[k]}' for k in keys)
    if mutate and draw(st.integers(0, 9)) == 0:  # a key twice: orjson keeps the last
        body += f',"{keys[0]}":{draw(st.sampled_from(["1", "2.5", chr(34) * 2]))}'
    return ("{" + ws + body + ws + "}").encode()


def _out_of_range(draw, dataset, pairs):
    cols = [c for c in (*dataset.reading_fields, *LOCATION_COLUMNS) if c.type != "string"]
    col = draw(st.sampled_from(cols))
    edges = ["1000000000000000", "-1", "-0.5", "123456789012345678"]
    edges += [str(col.minimum - 1)] if col.minimum is not None else []
    edges += [str(col.maximum + 0.001), str(int(col.maximum) + 1)] if col.maximum is not None else []
    pairs[col.name] = draw(st.sampled_from(edges))


def _fraction_in_integer(draw, dataset, pairs):
    cols = [c for c in dataset.reading_fields if c.type == "integer"]
    if cols:
        pairs[draw(st.sampled_from(cols)).name] = draw(st.sampled_from(["1.5", "2.50", "1e2", "3.0000001"]))


def _no_measurement(draw, dataset, pairs):
    for c in dataset.measurements:
        pairs.pop(c.name, None)


def _more_occupied_than_total(draw, dataset, pairs):
    if dataset.domain == Domain.PARKING:
        pairs["total_spots"], pairs["occupied_spots"] = "10", draw(st.sampled_from(["11", "10", "10.0"]))


def _half_a_position(draw, dataset, pairs):
    pairs.pop(draw(st.sampled_from(["lat", "lon"])), None)
    pairs.setdefault("lat", "1.5")


def _long_msg_id(draw, dataset, pairs):
    pairs["msg_id"] = '"' + "m" * draw(st.sampled_from([199, 200, 201])) + '"'


def _bad_time(draw, dataset, pairs):
    pairs["observed_at"] = draw(
        st.sampled_from(
            [
                '"2026-13-01T00:00:00Z"',
                '"2026-03-02T24:00:00Z"',
                '"2026-03-02T08:00:00+24:00"',
                '"2100-02-29T00:00:00Z"',
                '"2026-03-02T23:59:60Z"',
                '"1969-12-31T23:59:59Z"',
                '"3000-01-01T00:00:00Z"',
                '"2026-03-02T08:00:00"',
                "32503680000",
                "1475564382.5",
            ]
        )
    )


def _bad_number(draw, dataset, pairs):
    """Numbers that are not JSON, or not in the grammar: none of them may pass as a number."""
    cols = [c for c in (*dataset.reading_fields, *LOCATION_COLUMNS) if c.type != "string"]
    texts = ["2.", ".5", "01", "+1", "- 1", "1.5.1", "0x10", "1e5", "NaN", "-Infinity", "true", "null", '"3"']
    pairs[draw(st.sampled_from(cols)).name] = draw(st.sampled_from(texts))


def _bad_string(draw, dataset, pairs):
    cols = [c for c in dataset.reading_fields if c.type == "string"]
    if cols:
        pairs[draw(st.sampled_from(cols)).name] = draw(st.sampled_from(['"Free"', '"ok "', "1", '""']))


MUTATIONS = [
    _out_of_range,
    _fraction_in_integer,
    _no_measurement,
    _more_occupied_than_total,
    _half_a_position,
    _long_msg_id,
    _bad_time,
    _bad_number,
    _bad_string,
]


NOT_NUMBERS = ["2.", ".5", "01", "-01", "+1", "- 1", "1.5.1", "0x10", "1e5", "NaN", "-Infinity", "1,", "[1]"]
NOT_NUMBERS += ["true", "null", '"3"', "1.5", "2.50", "-0.5", "1234567890123456", "0.0000001e1"]


@pytest.mark.unit
@pytest.mark.parametrize("domain", list(DOMAIN_FIELDS))
def test_what_is_not_a_number_of_the_column_goes_to_the_reference(domain):
    """Every numeric column, in a key order the fast path takes, with texts it must not read as
    that column's number: not JSON (DuckDB would stop the run), or a fraction for an integer."""
    dataset = DATASETS[Domain(domain)]
    for col in (*dataset.reading_fields, *LOCATION_COLUMNS):
        if col.type == "string":
            continue
        base = valid_reading(domain, 0) | {"lat": 1.5, "lon": 2.5}
        good = orjson.dumps(base | {col.name: 1}).decode()
        payloads = [good.replace(f'"{col.name}":1', f'"{col.name}":{t}') for t in NOT_NUMBERS]
        data = segment_bytes(
            [(f"city/leeds/{domain}/d{i}", p.encode()) for i, p in enumerate([good, *payloads])]
        )
        fast, reference = decode_both(data)
        assert fast == reference, col.name
        assert fast_accepted(data) >= 1, col.name  # the good one: this key order is taken


@pytest.mark.unit
@pytest.mark.parametrize("domain", list(DOMAIN_FIELDS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_nearly_valid_readings_decode_like_the_reference(domain, data):
    """One or two things wrong with an otherwise valid reading, in a key order the sample shows."""
    payloads = data.draw(st.lists(fast_readings(domain, mutate=True), min_size=1, max_size=MAX_ORDERS))
    msgs = [(domain, p) for p in payloads]
    fast, reference = decode_both(
        segment_bytes([(f"city/leeds/{d}/dev-{i}", p) for i, (d, p) in enumerate(msgs)])
    )
    assert fast == reference


@pytest.mark.unit
@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(list(DOMAIN_FIELDS)).flatmap(
        lambda d: st.lists(fast_readings(d).map(lambda p: (d, p)), min_size=1, max_size=MAX_ORDERS)
    )
)
def test_valid_readings_in_any_key_order_take_the_fast_path(msgs):
    data = segment_bytes([(f"city/leeds/{d}/dev-{i}", p) for i, (d, p) in enumerate(msgs)])
    fast, reference = decode_both(data)
    assert fast == reference
    assert fast[1] == [] and fast_accepted(data) == len(msgs)


@pytest.mark.unit
@given(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=50))
def test_received_at_matches_raw_record(ns):
    expected = [RawRecord(0, b"", b"", n).received_at for n in ns]
    got = pa.array(received_at_us(np.array(ns, dtype=np.int64))).cast(pa.timestamp("us", tz="UTC"))
    assert got.to_pylist() == expected


@pytest.mark.unit
@given(
    st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200), st.integers(0, 2**62)), max_size=8),
    st.integers(0, 2000),
    st.one_of(st.none(), st.integers(0, 2000)),
)
def test_scan_columns_matches_scan(records, cut, flip):
    data = bytearray(MAGIC + b"".join(encode_record(t, p, n) for t, p, n in records))
    if flip is not None and flip < len(data):
        data[flip] ^= 0x40
    data = bytes(data[: max(cut, len(data) - cut)])
    want, end, why = _scan(data, Path("x"))
    cols = scan_columns(data)
    assert (cols.records(), cols.end, cols.why) == (want, end, why)


def test_scan_columns_reads_a_header_with_every_field():
    body = struct.pack("<HIqB", 3, 2, -5, 0x05) + b"a/bxy"
    data = MAGIC + struct.pack("<I", zlib.crc32(body)) + body
    cols = scan_columns(data)
    assert cols.records() == [RawRecord(8, b"a/b", b"xy", -5, qos=1, retain=True)]


# -- whole staging runs -------------------------------------------------------------------------


def land(layout: Layout, msgs: list[tuple[str, bytes]], ns: int) -> None:
    """One closed segment named after `ns`, so both warehouses get the same segment ids."""
    writer = SegmentWriter(layout.raw / "l1", max_bytes=1 << 30, max_age_s=1e9, clock=lambda: ns / 1e9)
    for i, (topic, payload) in enumerate(msgs):
        writer.append(topic.encode(), payload, ns + i)
    writer.close()


def stage_twice(tmp_path: Path, segments: list[list[tuple[str, bytes]]], registry, **kwargs):
    """Stage the same segments into two warehouses, fast and reference; return both snapshots."""
    snapshots = []
    for fast in (True, False):
        layout = Layout(tmp_path / ("fast" if fast else "reference") / "data")
        con = connect(layout.warehouse)
        try:
            results = []
            for i, msgs in enumerate(segments):
                land(layout, msgs, RECEIVED_NS + i * 10**12)
                results.append(
                    stage_segments(layout, con, LIMITS, registry=registry, now=NOW, fast=fast, **kwargs)
                )
            snap = {"results": [r.to_dict() for r in results]}
            for table in (
                "staged.traffic",
                "staged.parking",
                "staged.air_quality",
                "staged.waste",
                "staged.partitions",
                "staged.corrections",
                "quarantine.readings",
                "raw.segments",
            ):
                rows = con.execute(f"SELECT * FROM {table}").fetchall()
                snap[table] = sorted(repr(r) for r in rows)
            snap["files"] = tree_digest(layout.root, "staged/**/*") | tree_digest(
                layout.root, "quarantine/**/*"
            )
            snapshots.append(snap)
        finally:
            con.close()
    return snapshots


def take(messages, n: int) -> list[tuple[str, bytes]]:
    return list(itertools.islice(messages, n))


@pytest.mark.integration
@pytest.mark.parametrize("registry", [None, REGISTRY], ids=["no-registry", "registry"])
def test_samples_stage_identically(tmp_path, registry):
    msgs = (
        take(birmingham_parking_messages(), 1500)
        + take(edinburgh_waste_messages(), 800)
        + take(aberdeen_air_quality_messages(), 800)
        + take(synthetic_traffic_messages(), 800)
    )
    fast, reference = stage_twice(tmp_path, [msgs], registry, max_readings_per_txn=700)
    assert fast == reference
    assert fast["results"][0]["readings"] > 3000


@pytest.mark.integration
def test_the_birmingham_mess_goes_through_the_reference_with_its_registry():
    data = segment_bytes(take(birmingham_parking_messages(), 500))
    assert fast_accepted(data, REGISTRY) == 0  # a council with a registry file: Python decides
    assert fast_accepted(data, None) > 400


@pytest.mark.integration
def test_redeliveries_and_corrections_stage_identically(tmp_path):
    first = [
        (f"city/leeds/{d}/dev-{i}", orjson.dumps(valid_reading(d, i)))
        for d in DOMAIN_FIELDS
        for i in range(30)
    ]
    changed = [
        (t, orjson.dumps(orjson.loads(p) | {"msg_id": "again"})) if i % 3 == 0 else (t, p)
        for i, (t, p) in enumerate(first)
    ]
    mixed = first[:40] + changed[20:70] + [("city/leeds/traffic/dev-1", b"not json")]
    fast, reference = stage_twice(tmp_path, [first, changed, mixed, first], None, max_readings_per_txn=25)
    assert fast == reference
    assert fast["results"][1]["duplicates"] > 0 and fast["results"][2]["corrections"] >= 0


@pytest.mark.integration
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(messages(), min_size=1, max_size=15), min_size=1, max_size=3))
def test_random_segments_stage_identically(tmp_path_factory, segments):
    assume(any(segments))
    tmp = tmp_path_factory.mktemp("stage")
    fast, reference = stage_twice(tmp, segments, None)
    assert fast == reference


@pytest.mark.unit
def test_a_topic_in_use_stays_cached_however_many_topics_pass(monkeypatch):
    """With room for 4 topics per generation, a car park reporting between 40 others is parsed
    once: a full generation becomes the previous one and a topic found there moves back, where
    clearing everything would parse it again after every fourth newcomer. Answers are unchanged."""
    import civicflow.transforms.fast as fast

    monkeypatch.setattr(fast, "TOPIC_CACHE", 4)
    parsed: list[bytes] = []
    parse = fast.SegmentDecoder._parse_topic
    monkeypatch.setattr(
        fast.SegmentDecoder, "_parse_topic", lambda self, t: parsed.append(t) or parse(self, t)
    )
    decoder = SegmentDecoder(LIMITS, None)
    hot = b"city/leeds/parking/hot"
    answers = []
    for i in range(40):
        answers.append(decoder._topic(hot))
        answers.append(decoder._topic(f"city/leeds/parking/p{i}".encode()))
    assert parsed.count(hot) == 1 and len(parsed) == 41
    assert answers[0] == answers[-2] == (answers[0][0], "leeds", "hot") and answers[-1][1:] == (
        "leeds",
        "p39",
    )
    assert len(decoder._topics) <= 4 and len(decoder._previous_topics) <= 4
    assert decoder._topic(b"no/such topic") == (-1, "", "")
