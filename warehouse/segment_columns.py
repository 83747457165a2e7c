"""Raw segments as columns, for staging: one scan of a segment's bytes, no object per record.

Kept apart from `civicflow.warehouse.segments` so that the listener, which only writes segments, never
imports numpy or pyarrow: their import is most of a listener's start-up, and a listener that
restarts after a crash drains its backlog later by that much.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from civicflow.warehouse.segments import FLAG_ERASED, FLAG_RETAIN, HEADER, MAGIC, QOS_SHIFT, RawRecord

_LENGTHS = struct.Struct("<IHI")  # crc32, topic_len, payload_len: what the scan loop needs
assert HEADER.size == 19  # crc 0, topic_len 4, payload_len 6, received_at_ns 10, flags 18


@dataclass(frozen=True, eq=False)
class SegmentColumns:
    """A scanned segment as columns: the file's bytes and, per valid record, where its parts are.

    Nothing is copied per record: `parts` is one Arrow binary array over `data` whose elements
    are, for record i, its header (3i), topic (3i + 1) and payload (3i + 2). `end` is the end of
    the valid prefix and `why` says why scanning stopped early (None: the whole file is valid),
    exactly as `_scan` reports them.
    """

    data: bytes
    offsets: np.ndarray  # int64, byte offset of each record (its lineage identity)
    topic_lens: np.ndarray  # int64
    payload_lens: np.ndarray  # int64
    received_at_ns: np.ndarray  # int64
    flags: np.ndarray  # uint8
    end: int
    why: str | None

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def erased(self) -> np.ndarray:
        """Which records are tombstones of erased messages (`FLAG_ERASED`): decoders skip them.

        They stay in the columns, so that every record's parts keep their bounds.
        """
        return (self.flags & FLAG_ERASED) != 0

    @property
    def live(self) -> int:
        """Records that are messages, tombstones not counted."""
        return int(len(self.offsets) - np.count_nonzero(self.erased))

    @property
    def topic_starts(self) -> np.ndarray:
        return self.offsets + HEADER.size

    @property
    def payload_starts(self) -> np.ndarray:
        return self.offsets + HEADER.size + self.topic_lens

    @property
    def parts(self) -> pa.BinaryArray:
        n = len(self.offsets)
        bounds = np.empty(3 * n + 1, dtype=np.int32)
        bounds[0 : 3 * n : 3] = self.offsets
        bounds[1::3] = self.topic_starts
        bounds[2::3] = self.payload_starts
        bounds[3 * n] = self.end if n else len(MAGIC)
        return pa.Array.from_buffers(
            pa.binary(), 3 * n, [None, pa.py_buffer(bounds), pa.py_buffer(self.data)]
        )

    def record(self, i: int) -> RawRecord:
        t0 = int(self.offsets[i]) + HEADER.size
        p0 = t0 + int(self.topic_lens[i])
        flags = int(self.flags[i])
        return RawRecord(
            offset=int(self.offsets[i]),
            topic=self.data[t0:p0],
            payload=self.data[p0 : p0 + int(self.payload_lens[i])],
            received_at_ns=int(self.received_at_ns[i]),
            qos=(flags >> QOS_SHIFT) & 0x03,
            retain=bool(flags & FLAG_RETAIN),
        )

    def records(self) -> list[RawRecord]:
        """The messages, tombstones of erased records left out."""
        erased = self.erased
        return [self.record(i) for i in range(len(self.offsets)) if not erased[i]]


def scan_columns(data: bytes) -> SegmentColumns:
    """Scan a segment's bytes once into columns; the same records, end and reason as `_scan`.

    The records form a chain (each header gives the next record's position), so the walk is a
    loop, kept to one unpack and one CRC per record; every other header field is read
    afterwards with numpy from the offsets the walk found.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    offsets: list[int] = []
    why: str | None = None
    pos = len(MAGIC)
    if data[: len(MAGIC)] != MAGIC:
        why, pos = "missing segment header", 0
    else:
        view = memoryview(data)
        unpack, crc32, append = _LENGTHS.unpack_from, zlib.crc32, offsets.append
        header, size = HEADER.size, len(data)
        while pos < size:
            if size - pos < header:
                why = "truncated record header"
                break
            crc, topic_len, payload_len = unpack(data, pos)
            end = pos + header + topic_len + payload_len
            if end > size:
                why = "truncated record body"
                break
            if crc32(view[pos + 4 : end]) != crc:
                why = "checksum mismatch"
                break
            append(pos)
            pos = end
    offs = np.array(offsets, dtype=np.int64)
    flags = _read_at(data, offs + 18, np.dtype("u1"))
    return SegmentColumns(
        data=data,
        offsets=offs,
        topic_lens=_read_at(data, offs + 4, np.dtype("<u2")).astype(np.int64),
        payload_lens=_read_at(data, offs + 6, np.dtype("<u4")).astype(np.int64),
        received_at_ns=_read_at(data, offs + 10, np.dtype("<i8")),
        flags=flags,
        end=pos,
        why=why,
    )


def _read_at(data: bytes, positions: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The value of `dtype` stored at each byte position (any alignment), without copying `data`."""
    out = np.empty(len(positions), dtype=dtype)
    size = dtype.itemsize
    if size == 1:
        out[:] = np.frombuffer(data, dtype=dtype)[positions]
        return out
    rem = positions % size
    for shift in range(size):
        sel = rem == shift
        if sel.any():
            words = np.frombuffer(data, dtype=dtype, offset=shift, count=(len(data) - shift) // size)
            out[sel] = words[(positions[sel] - shift) // size]
    return out
