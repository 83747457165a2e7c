"""Helpers that build real inputs for tests: closed raw segments, warehouses, messages."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path

import orjson

from civicflow.transforms.decode import Limits
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.segments import SegmentWriter

LIMITS = Limits()


def land(
    layout: Layout,
    messages: Iterable[tuple[str, bytes | dict | list]],
    listener: str = "l1",
    received_at_ns: int | None = None,
) -> Path:
    """Write messages into one closed raw segment, as the listener would."""
    writer = SegmentWriter(layout.raw / listener, max_bytes=1 << 30, max_age_s=3600)
    ns = received_at_ns or time.time_ns()
    for i, (topic, payload) in enumerate(messages):
        raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        writer.append(topic.encode(), raw, ns + i)
    path = writer.close()
    assert path is not None
    return path


def car_park(
    device: str, observed_at: str, occupied: int, total: int = 100, council: str = "testtown"
) -> tuple[str, dict]:
    return (
        f"city/{council}/parking/{device}",
        {"observed_at": observed_at, "occupied_spots": occupied, "total_spots": total},
    )


def staged_file_rows(con, layout: Layout, domain: str, council: str, day) -> list[dict]:
    """A staged partition's rows as its current version's Parquet files hold them, in file order."""
    import pyarrow.parquet as pq

    from civicflow.warehouse.partitions import PartitionRef, current, partition_files

    ref = current(con, domain, council, day)
    assert ref is not None, f"{domain}/{council}/{day} is not staged and exported"
    assert isinstance(ref, PartitionRef)
    return [
        row
        for name in partition_files(con, ref)
        for row in pq.read_table(layout.staged_file(domain, council, day, name)).to_pylist()
    ]


def tree_digest(root: Path, pattern: str = "**/*") -> dict[str, str]:
    """sha256 of every file under root matching pattern, keyed by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob(pattern))
        if p.is_file()
    }
