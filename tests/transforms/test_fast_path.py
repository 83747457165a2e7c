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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from factories import LIMITS, tree_digest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from civicflow.registry import load_registry
from ingest.samples import (
    aberdeen_air_quality_messages,
    birmingham_parking_messages,
    edinburgh_waste_messages,
    synthetic_traffic_messages,
)
from transforms.fast import SegmentDecoder, received_at_us
from transforms.stage import stage_segments
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.segments import MAGIC, RawRecord, SegmentWriter, _scan, encode_record, scan_columns

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
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
