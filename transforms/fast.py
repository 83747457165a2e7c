"""The vectorised fast path of staging: native readings decoded by DuckDB, a chunk at a time.

`transforms/decode.py` stays the reference and the decoder of everything this module does not
take. The fast path only *accepts*: for one chunk of a scanned segment it picks the messages it
can prove the reference would turn into one reading with exactly the values it computes itself,
and hands every other record (in record order) to `decode_message`, so quarantine reasons,
details and payloads are the reference's own.

A record is a fast-path candidate when

- its topic is `<prefix>/<council>/<domain>/<device_id>` (`WireFormat.NATIVE`), valid for
  `parse_topic`, of a domain with a dataset, and its council has **no registry file** (so no
  device allow-list, fill-ins, time zone or lateness horizon applies: those stay in Python);
- its payload is 2 bytes to `max_payload_bytes`, pure ASCII and without a backslash (so no
  escapes: the JSON text of every key and string is the string itself).

DuckDB then accepts a candidate only when all of this holds (`_domain_sql`):

- the whole payload is one flat JSON object whose values are strings or numbers (checked by a
  regular expression of the JSON grammar: no `null`, `true`, `false`, arrays, nested objects,
  trailing commas, `NaN`, control characters), with no key twice and only contract keys;
- `observed_at` is RFC 3339 with `Z` or a `±hh:mm` offset (hours ≤ 23, minutes ≤ 59), a valid
  calendar date from 1970 to 2999, hour ≤ 23, minute ≤ 59, second ≤ 59, fraction truncated to
  microseconds, and not before 1970 in UTC; or integer epoch seconds below 3000-01-01;
- integer columns are JSON integers of at most 15 digits, or such an integer followed by `.0…`
  (which the reference accepts as the integer); number columns are plain decimals (no exponent,
  at most 17 integer digits) — an integer literal is converted as the reference's `float(int)`;
  string columns are JSON strings in their enumeration; every range of `civicflow.contract`;
- `msg_id` is a string of at most 200 characters or an integer of at most 18 digits (not `-0`);
- `lat` and `lon` together or neither; at least one measurement; car parks with both counts and
  `occupied_spots ≤ total_spots` (occupancy is their quotient, as in Python); qualifier defaults
  (traffic `interval_s` 300) when the key is absent.

Anything else — SenML, LoRaWAN, batches, `null` values, escapes, non-ASCII text, exponents,
epoch floats, naive times, registered councils — goes to `decode_message` unchanged. The
differential tests (tests/transforms/test_fast_path.py) stage the same segments both ways and
compare every staged column, the quarantine, partitions and corrections.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa

from civicflow.contract import DATASETS, LOCATION_COLUMNS, Column, Dataset, Domain
from civicflow.registry import Registry
from civicflow.wire import WireFormat, topic_format
from transforms import decode as reference
from transforms.decode import Limits, Rejection, decode_message, parse_topic
from transforms.invalid import Invalid
from warehouse.segments import RawRecord, SegmentColumns
from warehouse.tables import arrow_schema

_WS = r"[ \t\n\r]*"
_STR = r'"[^"\x00-\x1f]*"'
_NUM = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_VAL = rf"(?:{_STR}|{_NUM})"
_PAIR = rf"{_STR}:{_WS}{_VAL}{_WS}"  # no space before the colon: see `pairs`
OBJECT_RE = rf"{_WS}\{{{_WS}(?:{_PAIR}(?:,{_WS}{_PAIR})*)?\}}{_WS}"
"""A flat JSON object of string and number values, without escapes (the payload is ASCII without
backslashes before it gets here)."""
TIME_RE = (
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))$"
)
CHUNK_RECORDS = 1 << 17
SLOW_FLUSH_READINGS = 65_536

# What the SQL implements, checked against the reference at import: a change there that this
# module does not know about turns the fast path off rather than making it disagree.
_KNOWN_DOMAIN_CHECKS = {Domain.PARKING}
_FAST_OK = (
    set(reference.DOMAIN_CHECKS) == _KNOWN_DOMAIN_CHECKS
    and frozenset({"observed_at", "msg_id", "lat", "lon"}) == reference.COMMON_FIELDS
    and reference.MSG_ID_MAX == 200
    and reference.EPOCH_MAX == 32503680000
)


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _supported(dataset: Dataset) -> bool:
    derived = {c.name for c in dataset.derived}
    if derived and not (dataset.domain == Domain.PARKING and derived == {"occupancy"}):
        return False
    return all(
        c.type in ("integer", "number", "string") and (c.type == "string") == (c.enum is not None)
        for c in (*dataset.reading_fields, *LOCATION_COLUMNS)
    )


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


_INT_TYPES = "('UBIGINT', 'BIGINT')"
_NUMBER_TYPES = "('UBIGINT', 'BIGINT', 'DOUBLE')"
_EXACT = 1e15  # below this every integer is exact in a double, and its text at most 16 digits


def _column_sql(col: Column) -> tuple[str, str, str]:
    """(the type to extract it as, condition that accepts it, its value) for one column.

    `t_<name>` is the JSON type DuckDB read (NULL when absent), `x_<name>` the extracted value.
    """
    typ, x = f"t_{col.name}", f"x_{col.name}"
    if col.type == "integer":
        # JSON integers, and floats that are whole numbers (the reference takes 2.0 as 2)
        kind = "DOUBLE"
        ok = f"{typ} IN {_NUMBER_TYPES} AND {x} = trunc({x}) AND abs({x}) < {_EXACT:.0f}"
        value = f"CAST({x} AS BIGINT)"
    elif col.type == "number":
        kind = "DOUBLE"
        ok = f"{typ} IN {_NUMBER_TYPES} AND abs({x}) < {_EXACT:.0f}"
        value = x
    else:
        kind = "VARCHAR"
        enum = ", ".join(_lit(v) for v in col.enum or ())
        ok = f"{typ} = 'VARCHAR' AND {x} IN ({enum})"
        value = x
    if col.minimum is not None:
        ok += f" AND {value} >= {_num(col.minimum)}"
    if col.maximum is not None:
        ok += f" AND {value} <= {_num(col.maximum)}"
    return kind, ok, value


def _domain_sql(dataset: Dataset) -> str:
    """The query that accepts and decodes the candidate readings of one domain in table `fin`."""
    allowed = sorted(reference.COMMON_FIELDS | {c.name for c in dataset.reading_fields})
    kinds = {"observed_at": "VARCHAR", "msg_id": "VARCHAR"}
    checks, values = [], {}
    for col in (*dataset.reading_fields, *LOCATION_COLUMNS):
        kinds[col.name], ok, value = _column_sql(col)
        checks.append(f"(t_{col.name} IS NULL OR ({ok}))")
        if col.default is not None:
            value = f"CASE WHEN t_{col.name} IS NULL THEN {_num(col.default)} ELSE {value} END"
        values[col.name] = value
    checks.append("((t_lat IS NULL) = (t_lon IS NULL))")
    checks.append("(" + " OR ".join(f"t_{c.name} IS NOT NULL" for c in dataset.measurements) + ")")
    if dataset.domain == Domain.PARKING:
        checks.append("((t_occupied_spots IS NULL) = (t_total_spots IS NULL))")
        checks.append(f"(t_occupied_spots IS NULL OR {values['occupied_spots']} <= {values['total_spots']})")
        values["occupancy"] = (
            f"CAST({values['occupied_spots']} AS DOUBLE) / CAST({values['total_spots']} AS DOUBLE)"
        )
    checks.append(
        f"(t_msg_id IS NULL OR (t_msg_id = 'VARCHAR' AND length(x_msg_id) <= {reference.MSG_ID_MAX}) "
        f"OR t_msg_id IN {_INT_TYPES})"
    )
    values["msg_id"] = "x_msg_id"
    out_cols = [
        *(c.name for c in dataset.qualifiers),
        *(c.name for c in dataset.measurements),
        *(c.name for c in dataset.derived),
        "lat",
        "lon",
        "msg_id",
    ]
    structure = "{" + ", ".join(f'"{n}": "{kinds[n]}"' for n in allowed) + "}"
    paths = "[" + ", ".join(_lit(f"$.{n}") for n in allowed) + "]"
    types = ", ".join(f"jt[{k + 1}] AS t_{n}" for k, n in enumerate(allowed))
    extracted = ", ".join(f"j.{n} AS x_{n}" for n in allowed)
    groups = "['y', 'mo', 'd', 'h', 'mi', 's', 'f', 'sign', 'oh', 'om']"
    epoch = "t_observed_at = 'UBIGINT' AND length(x_observed_at) <= 11"
    ts = "ts"
    # Every key is followed by `":` (the grammar allows no space there), and `":` elsewhere can
    # only add to the count; so as many `":` as contract keys present means no other key and no
    # key twice.
    return f"""
WITH q AS MATERIALIZED (
    SELECT i, council, device_id, json_type(payload, {paths}) AS jt,
           json_transform(payload, {_lit(structure)}) AS j,
           (length(payload) - length(replace(payload, '":', ''))) // 2 AS pairs
    FROM fin WHERE regexp_full_match(payload, {_lit(OBJECT_RE)})
), t AS MATERIALIZED (
    SELECT i, council, device_id, {types}, {extracted},
           regexp_extract(j.observed_at, {_lit(TIME_RE)}, {groups}) AS ts
    FROM q
    WHERE pairs = list_count(jt)
), u AS (
    SELECT *,
           CASE WHEN t_observed_at = 'VARCHAR' THEN
               (date_diff('day', DATE '1970-01-01', TRY_CAST(substr(x_observed_at, 1, 10) AS DATE))
                * 86400
                + TRY_CAST({ts}.h AS BIGINT) * 3600 + TRY_CAST({ts}.mi AS BIGINT) * 60
                + TRY_CAST({ts}.s AS BIGINT)
                - CASE {ts}.sign WHEN '' THEN 0 ELSE
                      CASE {ts}.sign WHEN '-' THEN -1 ELSE 1 END
                      * (TRY_CAST({ts}.oh AS BIGINT) * 3600 + TRY_CAST({ts}.om AS BIGINT) * 60) END)
                * 1000000
               + CASE WHEN {ts}.f = '' THEN 0 ELSE TRY_CAST(rpad(substr({ts}.f, 2, 6), 6, '0') AS BIGINT) END
           WHEN {epoch} THEN TRY_CAST(x_observed_at AS BIGINT) * 1000000 END AS observed_us,
           CASE WHEN t_observed_at = 'VARCHAR' THEN
               TRY_CAST(substr(x_observed_at, 1, 10) AS DATE) IS NOT NULL
               AND TRY_CAST({ts}.y AS INTEGER) BETWEEN 1970 AND 2999
               AND TRY_CAST({ts}.h AS INTEGER) <= 23 AND TRY_CAST({ts}.mi AS INTEGER) <= 59
               AND TRY_CAST({ts}.s AS INTEGER) <= 59
               AND ({ts}.sign = ''
                    OR (TRY_CAST({ts}.oh AS INTEGER) <= 23 AND TRY_CAST({ts}.om AS INTEGER) <= 59))
           WHEN {epoch} THEN TRY_CAST(x_observed_at AS BIGINT) < {reference.EPOCH_MAX}
           ELSE false END AS time_ok
    FROM t
)
SELECT i, council, device_id, observed_us, observed_us // 86400000000 AS event_day,
       {", ".join(f"{values[name]} AS {name}" for name in out_cols)}
FROM u
WHERE time_ok AND observed_us >= 0 AND {" AND ".join(checks)}
"""


@dataclass
class Part:
    """Staged readings (Arrow, per domain) and quarantine rows decoded from part of a segment."""

    tables: dict[Domain, list[pa.Table]] = field(default_factory=dict)
    quarantine: list[dict] = field(default_factory=list)
    readings: int = 0
    rejected: int = 0


def received_at_us(ns: np.ndarray) -> np.ndarray:
    """`RawRecord.received_at` as microseconds, vectorised: the same float seconds and rounding.

    `datetime.fromtimestamp(ns / 1e9)` splits the float with `modf` and rounds the fraction's
    microseconds half to even (CPython `_PyTime_DoubleToDenominator`); so does this.
    """
    seconds = ns.astype(np.float64) / 1e9
    frac, whole = np.modf(seconds)
    us = np.rint(frac * 1e6)
    up = us >= 1e6
    whole[up] += 1.0
    us[up] -= 1e6
    down = us < 0
    whole[down] -= 1.0
    us[down] += 1e6
    return whole.astype(np.int64) * 1_000_000 + us.astype(np.int64)


_TS = pa.timestamp("us", tz="UTC")


class SegmentDecoder:
    """Decodes scanned segments: the DuckDB fast path where it applies, `decode_message` elsewhere.

    `fast=False` sends every record to `decode_message` (the reference path), through the same
    plumbing, which is what the differential tests compare against.
    """

    def __init__(self, limits: Limits, registry: Registry | None, *, fast: bool = True) -> None:
        self.limits = limits
        self.registry = registry
        self.fast = fast and _FAST_OK
        self._topics: dict[bytes, tuple[int, str, str]] = {}
        self._domains = [d for d in Domain if d in DATASETS and _supported(DATASETS[d])]
        self._sql = {d: _domain_sql(DATASETS[d]) for d in self._domains}
        self._schemas = {d: arrow_schema(DATASETS[d].staged_columns) for d in DATASETS}
        self._con: duckdb.DuckDBPyConnection | None = None
        self.fast_readings = 0  # readings the fast path took, for logs and tests

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = duckdb.connect(":memory:")
            self._con.execute("SET TimeZone = 'UTC'")
        return self._con

    def _topic(self, topic: bytes) -> tuple[int, str, str]:
        """(index of its domain in self._domains or -1, council, device_id), cached per topic."""
        hit = self._topics.get(topic)
        if hit is not None:
            return hit
        info = (-1, "", "")
        try:
            text = topic.decode("ascii")
            if topic_format(text, self.limits.topic_prefix) == WireFormat.NATIVE:
                parsed = parse_topic(topic, self.limits.topic_prefix)
                registered = self.registry is not None and (
                    parsed.council in self.registry.councils
                    or self.registry.device(parsed.council, parsed.device_id) is not None
                )
                if parsed.domain in self._domains and not registered:
                    info = (self._domains.index(parsed.domain), parsed.council, parsed.device_id)
        except (UnicodeDecodeError, Invalid):
            pass
        if len(self._topics) > 200_000:
            self._topics.clear()
        self._topics[topic] = info
        return info

    def decode(
        self, cols: SegmentColumns, seg: str, now: datetime, chunk_records: int = CHUNK_RECORDS
    ) -> Iterator[Part]:
        """Decode every record of a scanned segment, in parts of bounded size, in record order
        within each kind (fast readings first, then the reference's readings and rejections)."""
        n = len(cols)
        parts = cols.parts if n else None
        for a in range(0, n, chunk_records):
            b = min(n, a + chunk_records)
            part = Part()
            accepted = np.zeros(b - a, dtype=bool)
            if self.fast and parts is not None:
                self._fast_chunk(cols, parts, a, b, seg, now, part, accepted)
            yield from self._slow_chunk(cols, np.flatnonzero(~accepted) + a, seg, now, part)

    def _fast_chunk(
        self,
        cols: SegmentColumns,
        parts: pa.BinaryArray,
        a: int,
        b: int,
        seg: str,
        now: datetime,
        part: Part,
        accepted: np.ndarray,
    ) -> None:
        topics = parts.take(pa.array(np.arange(a, b, dtype=np.int64) * 3 + 1)).dictionary_encode()
        infos = [self._topic(t) for t in topics.dictionary.to_pylist()]
        topic_idx = topics.indices.to_numpy(zero_copy_only=False)
        dom_of_topic = np.array([i[0] for i in infos], dtype=np.int64)
        dom = dom_of_topic[topic_idx]
        lens = cols.payload_lens[a:b]
        candidate = (dom >= 0) & (lens >= 2) & (lens <= self.limits.max_payload_bytes)
        if not candidate.any():
            return
        # ASCII without backslashes: one pass over the chunk's bytes
        starts = cols.payload_starts[a:b]
        lo, hi = int(cols.offsets[a]), int(starts[-1] + lens[-1])
        raw = np.frombuffer(cols.data, dtype=np.uint8, count=hi - lo, offset=lo)
        bad = np.empty(hi - lo + 1, dtype=bool)
        np.greater_equal(raw, 0x80, out=bad[:-1])
        bad[:-1] |= raw == 0x5C
        bad[-1] = False
        bounds = np.empty(2 * (b - a), dtype=np.int64)
        bounds[0::2] = starts - lo
        bounds[1::2] = starts + lens - lo
        candidate &= ~np.logical_or.reduceat(bad, bounds)[0::2]
        councils = pa.array([i[1] for i in infos], pa.string())
        devices = pa.array([i[2] for i in infos], pa.string())
        received = received_at_us(cols.received_at_ns[a:b])
        for d_index, domain in enumerate(self._domains):
            sel = np.flatnonzero(candidate & (dom == d_index))
            if not len(sel):
                continue
            tidx = pa.array(topic_idx[sel])
            fin = pa.table(
                {
                    "i": pa.array(sel, pa.int64()),
                    "council": councils.take(tidx),
                    "device_id": devices.take(tidx),
                    "payload": parts.take(pa.array((sel + a) * 3 + 2)).view(pa.string()),
                }
            )
            self.con.register("fin", fin)
            try:
                res = self.con.sql(self._sql[domain]).to_arrow_table()
            finally:
                self.con.unregister("fin")
            if not res.num_rows:
                continue
            i = res.column("i").to_numpy()
            accepted[i] = True
            part.tables.setdefault(domain, []).append(
                self._staged(domain, res, i, a, cols, received, seg, now)
            )
            part.readings += res.num_rows
            self.fast_readings += res.num_rows

    def _staged(
        self,
        domain: Domain,
        res: pa.Table,
        i: np.ndarray,
        a: int,
        cols: SegmentColumns,
        received: np.ndarray,
        seg: str,
        now: datetime,
    ) -> pa.Table:
        schema = self._schemas[domain]
        n = len(i)
        fixed = {
            "observed_at": res.column("observed_us").cast(pa.int64()).cast(_TS),
            "event_date": res.column("event_day").cast(pa.int32()).cast(pa.date32()),
            "received_at": pa.array(received[i]).cast(_TS),
            "segment_id": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, dtype=np.int32)), pa.array([seg])
            ).cast(pa.string()),
            "record_offset": pa.array(cols.offsets[a + i]),
            "reading_index": pa.array(np.zeros(n, dtype=np.int64)),
            "staged_at": pa.array(np.full(n, pa.scalar(now, _TS).value, dtype=np.int64)).cast(_TS),
        }
        arrays = []
        for f in schema:
            col = fixed.get(f.name)
            if col is None:
                col = res.column(f.name)
            arrays.append(col.cast(f.type) if col.type != f.type else col)
        return pa.Table.from_arrays(arrays, schema=schema)

    def _slow_chunk(
        self, cols: SegmentColumns, indices: np.ndarray, seg: str, now: datetime, part: Part
    ) -> Iterator[Part]:
        """The reference decoder for the records the fast path did not accept, in record order."""
        rows: dict[Domain, list[dict]] = {}
        pending = 0
        for index in indices.tolist():
            record = cols.record(index)
            received_at = record.received_at
            decoded = decode_message(
                record.topic, record.payload, self.limits, received_at=received_at, registry=self.registry
            )
            for rej in decoded.rejections:
                part.quarantine.append(quarantine_row(seg, record, rej, now))
            for reading in decoded.readings:
                reading.update(
                    received_at=received_at, segment_id=seg, record_offset=record.offset, staged_at=now
                )
                rows.setdefault(decoded.domain, []).append(reading)
            part.readings += len(decoded.readings)
            part.rejected += len(decoded.rejections)
            pending += len(decoded.readings)
            if pending >= SLOW_FLUSH_READINGS:
                self._add_rows(part, rows)
                yield part
                part, rows, pending = Part(), {}, 0
        self._add_rows(part, rows)
        yield part

    def _add_rows(self, part: Part, rows: dict[Domain, list[dict]]) -> None:
        for domain, readings in rows.items():
            part.tables.setdefault(domain, []).append(
                pa.Table.from_pylist(readings, schema=self._schemas[domain])
            )


def quarantine_row(seg: str, record: RawRecord, rej: Rejection, now: datetime) -> dict:
    return {
        "segment_id": seg,
        "record_offset": record.offset,
        "reading_index": rej.reading_index,
        "received_at": record.received_at,
        "topic": record.topic.decode("utf-8", errors="backslashreplace"),
        "council": rej.council,
        "domain": rej.domain,
        "device_id": rej.device_id,
        "reason": rej.reason.value,
        "detail": rej.detail,
        "payload": rej.payload,
        "quarantined_at": now,
    }


__all__ = ["SegmentDecoder", "Part", "quarantine_row", "received_at_us"]
