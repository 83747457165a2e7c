"""The vectorised fast path of staging: native readings decoded by DuckDB and numpy, a chunk at a time.

`transforms/decode.py` stays the reference and the decoder of everything this module does not
take. The fast path only *accepts*: for one chunk of a scanned segment it picks the messages it
can prove the reference would turn into one reading with exactly the values it computes itself,
and hands every other record (in record order) to `decode_message`, so quarantine reasons,
details and payloads are the reference's own.

A record is a fast-path candidate when

- its topic is `<prefix>/<council>/<domain>/<device_id>` (`WireFormat.NATIVE`), valid for
  `parse_topic`, of a domain with a dataset, and its council has **no registry file** (so no
  device allow-list, fill-ins, time zone or lateness horizon applies: those stay in Python);
- its payload is 2 bytes to `max_payload_bytes` and pure ASCII.

Which candidates are accepted, and with what values, is `transforms/fastjson.py`: one typed
grammar (a regular expression over the key orders a sample of the chunk shows) and one
`json_transform` per payload in DuckDB, then the checks of `decode_reading` in numpy.

Anything else — SenML, LoRaWAN, batches, `null` values, escapes, non-ASCII text, exponents,
epoch floats, naive times, registered councils, key orders not in the sample — goes to
`decode_message` unchanged. The differential tests (tests/transforms/test_fast_path.py) stage
the same segments both ways and compare every staged column, the quarantine, partitions and
corrections.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from civicflow.contract import DATASETS, LOCATION_COLUMNS, Dataset, Domain, Reason, Rule
from civicflow.registry import Registry
from civicflow.transforms import fastjson
from civicflow.transforms.decode import Decoded, Limits, Rejection, decode_message, parse_topic
from civicflow.transforms.invalid import Invalid
from civicflow.warehouse.segment_columns import SegmentColumns
from civicflow.warehouse.segments import RawRecord
from civicflow.warehouse.tables import arrow_schema
from civicflow.wire import WireFormat, topic_format

CHUNK_RECORDS = 1 << 17
TOPIC_CACHE = 200_000
"""Topics a decoder remembers the parse of, per generation: when the current one is full it becomes
the previous one (the one before is dropped) and a topic found there moves back, so the topics in
use stay cached however many a deployment has, in at most twice this many entries."""
BATCH_ROWS = 16_384  # rows per Arrow batch handed to DuckDB: its threads split a scan by batch
SLOW_FLUSH_READINGS = 65_536

log = logging.getLogger(__name__)
_DERIVED_BY = {Rule.CAR_PARK_COUNTS: {"occupancy"}}
_warned: set[Domain] = set()


def unsupported(dataset: Dataset) -> str | None:
    """Why the fast path cannot decode a dataset exactly as the reference does, or None.

    Both decoders read the contract's limits and rules (civicflow/contract.py); what the fast path
    cannot express (a rule or a column type it does not implement) sends the whole dataset to
    the reference, which is slower but never wrong.
    """
    rules = set(dataset.rules) - fastjson.RULES
    if rules:
        return f"it does not implement rule(s) {', '.join(sorted(rules))}"
    derived = {c.name for c in dataset.derived} - {n for r in dataset.rules for n in _DERIVED_BY.get(r, ())}
    if derived:
        return f"it does not compute derived column(s) {', '.join(sorted(derived))}"
    odd = [
        c.name
        for c in (*dataset.reading_fields, *LOCATION_COLUMNS)
        if c.type not in ("integer", "number", "string") or (c.type == "string") != (c.enum is not None)
    ]
    if odd:
        return f"it does not decode column(s) {', '.join(odd)}"
    return None


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
        self.fast = fast
        self._topics: dict[bytes, tuple[int, str, str]] = {}
        self._previous_topics: dict[bytes, tuple[int, str, str]] = {}
        self._domains = []
        for d in Domain:
            if d not in DATASETS:
                continue
            why = unsupported(DATASETS[d])
            if why is None:
                self._domains.append(d)
            elif fast and d not in _warned:
                _warned.add(d)
                log.warning(
                    "staging's fast path is off for %s: %s; its readings are decoded by the reference "
                    "decoder, several times slower. Implement it in transforms/fastjson.py",
                    d.value,
                    why,
                )
        self._allowed = {d: set(fastjson.fields(DATASETS[d])) for d in self._domains}
        self._orders: dict[Domain, dict[tuple[str, ...], int]] = {d: {} for d in self._domains}
        self._schemas = {d: arrow_schema(DATASETS[d].staged_columns) for d in DATASETS}
        lineage = {"received_at", "segment_id", "record_offset", "staged_at"}  # added by staging
        self._required = {
            d: [c.name for c in DATASETS[d].staged_columns if c.required and c.name not in lineage]
            for d in DATASETS
        }
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
        info = self._previous_topics.get(topic) or self._parse_topic(topic)
        if len(self._topics) >= TOPIC_CACHE:
            self._previous_topics, self._topics = self._topics, {}
        self._topics[topic] = info
        return info

    def _parse_topic(self, topic: bytes) -> tuple[int, str, str]:
        """What `_topic` caches: the fast path's domain index, council and device, or (-1, "", "")
        for a topic the fast path leaves to the reference decoder."""
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
        return info

    def decode(
        self, cols: SegmentColumns, seg: str, now: datetime, chunk_records: int = CHUNK_RECORDS
    ) -> Iterator[Part]:
        """Decode every record of a scanned segment, in parts of bounded size, in record order
        within each kind (fast readings first, then the reference's readings and rejections)."""
        n = len(cols)
        parts = cols.parts if n else None
        erased = cols.erased
        for a in range(0, n, chunk_records):
            b = min(n, a + chunk_records)
            part = Part()
            accepted = erased[a:b].copy()  # a tombstone of an erased record is neither decoded nor refused
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
        candidate = (dom >= 0) & (lens >= 2) & (lens <= self.limits.max_payload_bytes) & ~accepted
        if not candidate.any():
            return
        payloads = parts.take(pa.array(np.arange(a, b, dtype=np.int64) * 3 + 2)).view(pa.string())
        # pure ASCII, so DuckDB's string functions see valid UTF-8 (a byte check, not a decode)
        candidate &= pc.string_is_ascii(payloads).to_numpy(zero_copy_only=False)
        councils = pa.array([i[1] for i in infos], pa.string())
        devices = pa.array([i[2] for i in infos], pa.string())
        received = received_at_us(cols.received_at_ns[a:b])
        for d_index, domain in enumerate(self._domains):
            sel = np.flatnonzero(candidate & (dom == d_index))
            if not len(sel):
                continue
            texts = payloads.take(pa.array(sel))
            orders = self._orders[domain]
            fastjson.learn_orders(texts, self._allowed[domain], orders)
            if not orders:
                continue
            fin = pa.Table.from_arrays([pa.array(sel, pa.int64()), texts], names=["i", "payload"])
            self.con.register("fin", pa.Table.from_batches(fin.to_batches(max_chunksize=BATCH_ROWS)))
            try:
                res = self.con.sql(fastjson.query(DATASETS[domain], list(orders))).to_arrow_table()
            finally:
                self.con.unregister("fin")
            ok, values = fastjson.check(DATASETS[domain], res, received[res.column("i").to_numpy()])
            if not ok.any():
                continue
            i = res.column("i").to_numpy()[ok]
            accepted[i] = True
            tidx = pa.array(topic_idx[i])
            values["council"] = councils.take(tidx)
            values["device_id"] = devices.take(tidx)
            part.tables.setdefault(domain, []).append(
                self._staged(domain, values, i, a, cols, received, seg, now)
            )
            part.readings += len(i)
            self.fast_readings += len(i)

    def _staged(
        self,
        domain: Domain,
        values: dict[str, pa.Array],
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
            "observed_at": values["observed_us"].cast(_TS),
            "event_date": values["event_day"].cast(pa.int32()).cast(pa.date32()),
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
                col = values[f.name]
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
            decoded = self._decode_guarded(record)
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

    def _decode_guarded(self, record: RawRecord) -> Decoded:
        """`decode_message`, with a fault of the decoder itself kept as one message's quarantine row.

        The decoder never raises and never gives a reading with a required column empty; if a bug
        made it, one message must not stop staging for every council: the message is quarantined
        as `decoder_error` (replay stages it once the decoder is fixed) and the fault is logged.
        """
        try:
            decoded = decode_message(
                record.topic,
                record.payload,
                self.limits,
                received_at=record.received_at,
                registry=self.registry,
            )
            for reading in decoded.readings:
                empty = [name for name in self._required[decoded.domain] if reading.get(name) is None]
                if empty:
                    raise ValueError(f"reading {reading.get('reading_index')} has no {', '.join(empty)}")
            return decoded
        except Exception as exc:  # noqa: BLE001 - a decoder bug, kept with the message that hit it
            log.exception("the decoder failed on a message; it is quarantined as decoder_error")
            detail = f"the decoder failed on this message ({type(exc).__name__}: {str(exc)[:160]}); report it"
            return Decoded(rejections=[Rejection(Reason.DECODER_ERROR, detail, record.payload)])

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
