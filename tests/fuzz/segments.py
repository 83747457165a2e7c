"""Decoding messages as staging does: one raw segment, through the fast path and the reference."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pyarrow as pa

from civicflow.registry import Registry
from civicflow.transforms.decode import Limits
from civicflow.transforms.fast import SegmentDecoder
from civicflow.warehouse.segment_columns import scan_columns
from civicflow.warehouse.segments import MAGIC, encode_record
from fuzz.corpus import Outcome

NOW = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)


def segment_bytes(messages: Sequence[tuple[bytes, bytes]], received_at: datetime) -> bytes:
    """A closed raw segment holding the messages, received a microsecond apart from `received_at`."""
    ns = int(received_at.timestamp()) * 10**9 + received_at.microsecond * 1000
    return MAGIC + b"".join(encode_record(t, p, ns + 1000 * i) for i, (t, p) in enumerate(messages))


def stage_decode(
    messages: Sequence[tuple[bytes, bytes]], received_at: datetime, registry: Registry | None, *, fast: bool
) -> tuple[dict[str, list[str]], list[str], dict[int, Outcome]]:
    """Decode a segment as staging does: (staged rows by domain, quarantine rows, outcome per record).

    Rows are compared by `repr`, so 0.0 and -0.0, or 1 and 1.0, differ.
    """
    data = segment_bytes(messages, received_at)
    cols = scan_columns(data)
    decoder = SegmentDecoder(Limits(), registry, fast=fast)
    tables: dict[str, list[pa.Table]] = {}
    quarantine: list[dict] = []
    try:
        for part in decoder.decode(cols, "fuzz/seg", NOW):
            for domain, ts in part.tables.items():
                tables.setdefault(domain.value, []).extend(ts)
            quarantine.extend(part.quarantine)
    finally:
        decoder.close()
    rows = {d: [r for t in ts for r in t.to_pylist()] for d, ts in tables.items()}
    offsets = {off: i for i, off in enumerate(cols.offsets.tolist())}
    readings = [0] * len(messages)
    for domain_rows in rows.values():
        for row in domain_rows:
            readings[offsets[row["record_offset"]]] += 1
    reasons: list[list[str]] = [[] for _ in messages]
    for q in quarantine:
        reasons[offsets[q["record_offset"]]].append(q["reason"])
    outcomes = {i: Outcome.of(readings[i], reasons[i]) for i in range(len(messages))}
    return (
        {d: sorted(repr(r) for r in domain_rows) for d, domain_rows in rows.items()},
        sorted(repr(q) for q in quarantine),
        outcomes,
    )
