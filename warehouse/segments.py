"""Raw segment files: the immutable raw zone, one append-only file per listener time slice.

A segment keeps every message exactly as the broker delivered it, so any later stage can be
re-run from raw (a replay). The format is documented in docs/raw-segments.md:

    file   := MAGIC record*
    record := header topic payload
    header := crc32 u32 | topic_len u16 | payload_len u32 | received_at_ns i64 | flags u8  (little endian)

`crc32` covers everything after itself (the rest of the header, topic and payload), so a torn write
at the end of a crashed segment is detected rather than read as data. A segment is written as
`<name>.open`, and renamed to `<name>.seg` once it has been flushed and closed; only `.seg` files
are read downstream.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"CFSEG\x01\r\n"
HEADER = struct.Struct("<IHIqB")
OPEN_SUFFIX = ".open"
CLOSED_SUFFIX = ".seg"
TORN_SUFFIX = ".torn"
FLAG_RETAIN = 0x01
FLAG_DUP = 0x02
QOS_SHIFT = 2
FLAG_ERASED = 0x10
"""An erased record (a tombstone): its topic and payload bytes are zeros, its length is kept."""


class SegmentCorrupt(Exception):
    """A closed segment has bytes that are not a valid record. Quarantine from `offset` on."""

    def __init__(self, path: Path, offset: int, why: str) -> None:
        super().__init__(f"corrupt raw segment {path} at offset {offset}: {why}")
        self.path = path
        self.offset = offset
        self.why = why


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One MQTT message as it arrived: exact topic and payload bytes, receive time, flags."""

    offset: int
    topic: bytes
    payload: bytes
    received_at_ns: int
    qos: int = 1
    retain: bool = False

    @property
    def received_at(self) -> datetime:
        return datetime.fromtimestamp(self.received_at_ns / 1e9, tz=UTC)


def encode_record(
    topic: bytes, payload: bytes, received_at_ns: int, qos: int = 1, retain: bool = False
) -> bytes:
    """Frame one message as a segment record."""
    if len(topic) > 0xFFFF:
        raise ValueError(f"topic of {len(topic)} bytes exceeds the MQTT limit of 65535")
    flags = (FLAG_RETAIN if retain else 0) | (qos << QOS_SHIFT)
    body = HEADER.pack(0, len(topic), len(payload), received_at_ns, flags)[4:] + topic + payload
    return struct.pack("<I", zlib.crc32(body)) + body


def _scan(data: bytes | memoryview, path: Path) -> tuple[list[RawRecord], int, str | None]:
    """Parse records; return them, the end of the valid prefix and why parsing stopped early."""
    if bytes(data[: len(MAGIC)]) != MAGIC:
        return [], 0, "missing segment header"
    records: list[RawRecord] = []
    pos = len(MAGIC)
    size = len(data)
    while pos < size:
        if size - pos < HEADER.size:
            return records, pos, "truncated record header"
        crc, topic_len, payload_len, received_ns, flags = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + topic_len + payload_len
        if end > size:
            return records, pos, "truncated record body"
        if zlib.crc32(data[pos + 4 : end]) != crc:
            return records, pos, "checksum mismatch"
        if flags & FLAG_ERASED:  # a tombstone: a valid record that holds nothing
            pos = end
            continue
        t0 = pos + HEADER.size
        records.append(
            RawRecord(
                offset=pos,
                topic=bytes(data[t0 : t0 + topic_len]),
                payload=bytes(data[t0 + topic_len : end]),
                received_at_ns=received_ns,
                qos=(flags >> QOS_SHIFT) & 0x03,
                retain=bool(flags & FLAG_RETAIN),
            )
        )
        pos = end
    return records, pos, None


def read_segment(path: Path) -> list[RawRecord]:
    """Read every record of a closed segment (tombstones of erased records are skipped).

    Raises:
        SegmentCorrupt: the file holds bytes past the last valid record. The records before
            `offset` are still good: callers keep them and quarantine the rest.
    """
    data = path.read_bytes()
    records, end, why = _scan(data, path)
    if why is not None:
        raise SegmentCorrupt(path, end, why)
    return records


def read_segment_lenient(path: Path) -> tuple[list[RawRecord], bytes, str | None]:
    """Read the valid records of a segment and return the bytes that follow them, if any."""
    data = path.read_bytes()
    records, end, why = _scan(data, path)
    return records, data[end:], why


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tombstone_bytes(data: bytes, offsets: set[int] | frozenset[int], where: Path) -> tuple[bytes, int]:
    """`erase_records` on a segment's bytes in memory: the new bytes and how many records became
    tombstones (a record that is one already is left as it is). `where` names the segment in errors.

    Raises:
        SegmentCorrupt: an offset is not the start of a valid record of the segment.
    """
    out = bytearray(data)
    erased = 0
    for offset in sorted(offsets):
        if offset < len(MAGIC) or offset + HEADER.size > len(out):
            raise SegmentCorrupt(where, offset, "no record starts there")
        crc, topic_len, payload_len, received_ns, flags = HEADER.unpack_from(out, offset)
        end = offset + HEADER.size + topic_len + payload_len
        if end > len(out) or zlib.crc32(out[offset + 4 : end]) != crc:
            raise SegmentCorrupt(where, offset, "no valid record starts there")
        if flags & FLAG_ERASED:
            continue
        body = HEADER.pack(0, topic_len, payload_len, received_ns, flags | FLAG_ERASED)[4:]
        body += bytes(topic_len + payload_len)
        out[offset:end] = struct.pack("<I", zlib.crc32(body)) + body
        erased += 1
    return bytes(out), erased


def erase_records(path: Path, offsets: set[int] | frozenset[int]) -> tuple[str, int]:
    """Turn the records at `offsets` of a closed segment into tombstones; return (sha256, how many).

    A tombstone keeps its record's length, receive time and QoS, so every other record keeps its
    offset (its lineage identity) and the segment its size; its topic and payload bytes become
    zeros, its flags gain `FLAG_ERASED` and its CRC is computed again. The new segment is written
    beside the old one, fsynced and renamed over it, so a crash leaves one or the other whole.

    Raises:
        SegmentCorrupt: an offset is not the start of a valid record of the segment.
    """
    data, erased = tombstone_bytes(path.read_bytes(), offsets, path)
    if erased:
        tmp = path.with_name(f".{path.name}.erasing")
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    return hashlib.sha256(data).hexdigest(), erased


def list_closed_segments(raw_root: Path) -> list[Path]:
    """Closed segments under the raw zone, in name order (listener, then time)."""
    if not raw_root.exists():
        return []
    return sorted(raw_root.glob(f"*/*{CLOSED_SUFFIX}"))


def recover_open_segments(directory: Path) -> list[Path]:
    """Close segments a crashed listener left open.

    Everything before the first invalid record was written by the listener and may have been
    acknowledged, so it is kept and the segment is closed. A torn tail (a message whose write was
    cut off) was never acknowledged - the broker redelivers it - but its bytes are still kept
    beside the segment as `<name>.torn` for inspection.
    """
    recovered: list[Path] = []
    for open_path in sorted(directory.glob(f"*{OPEN_SUFFIX}")):
        records, tail, why = read_segment_lenient(open_path)
        if why is not None and tail:
            torn = open_path.with_suffix(TORN_SUFFIX)
            torn.write_bytes(tail)
            log.warning(
                "recovered %s: kept %d records, %d torn bytes moved to %s (%s)",
                open_path.name,
                len(records),
                len(tail),
                torn.name,
                why,
            )
            with open_path.open("r+b") as fh:
                fh.truncate(open_path.stat().st_size - len(tail))
                fh.flush()
                os.fsync(fh.fileno())
        if not records:
            open_path.unlink()
            continue
        closed = open_path.with_suffix(CLOSED_SUFFIX)
        os.replace(open_path, closed)
        recovered.append(closed)
        log.warning("recovered open segment %s with %d records", closed.name, len(records))
    if recovered:
        fsync_dir(directory)
    return recovered


class SegmentWriter:
    """Appends records to the current open segment of one listener; rolls by size and age.

    Not thread-safe: the listener calls it from its single network loop. `flush()` returns only once
    the bytes are on disk (fsync), which is when the listener may acknowledge the messages.
    """

    def __init__(
        self, directory: Path, *, max_bytes: int, max_age_s: float, fsync: bool = True, clock=time.time
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.fsync = fsync
        self._clock = clock
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fh = (directory / ".lock").open("a")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock_fh.close()
            raise RuntimeError(
                f"another listener is writing {directory}; give each listener its own "
                "CIVICFLOW_MQTT__CLIENT_ID"
            ) from exc
        recover_open_segments(directory)
        self._seq = self._last_sequence() + 1
        self._fh = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._buffer: list[bytes] = []
        self.records_in_segment = 0
        self.closed_segments: list[Path] = []

    def _last_sequence(self) -> int:
        seqs = [int(p.stem.rsplit("-", 1)[-1]) for p in self.directory.glob(f"*{CLOSED_SUFFIX}")]
        return max(seqs, default=0)

    def _open(self) -> None:
        now = self._clock()
        stamp = datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self._path = self.directory / f"{stamp}-{self._seq:08d}{OPEN_SUFFIX}"
        self._seq += 1
        self._fh = self._path.open("xb")
        self._fh.write(MAGIC)
        self._size = len(MAGIC)
        self._opened_at = now
        self.records_in_segment = 0

    def append(
        self, topic: bytes, payload: bytes, received_at_ns: int, qos: int = 1, retain: bool = False
    ) -> None:
        if self._fh is None:
            self._open()
        record = encode_record(topic, payload, received_at_ns, qos, retain)
        self._buffer.append(record)
        self._size += len(record)
        self.records_in_segment += 1

    def flush(self) -> None:
        """Write buffered records and fsync. Raises OSError if the disk refuses them."""
        if self._fh is None:
            return
        if self._buffer:
            self._fh.write(b"".join(self._buffer))
            self._buffer.clear()
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    @property
    def open_age_s(self) -> float:
        """Seconds since the open segment was opened; 0 when none is open."""
        return 0.0 if self._fh is None else max(0.0, self._clock() - self._opened_at)

    def abandon(self) -> None:
        """Drop what is buffered and let go of the open segment after a write failed.

        Nothing dropped here was acknowledged, so the broker still holds it. The segment file
        stays as `.open`; `recover()` closes it (keeping every whole record) once the disk
        works again.
        """
        self._buffer.clear()
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:
                log.warning("closing %s after a failed write: %s", self._path, exc)
        self._fh = None
        self._path = None

    def probe(self, size: int = 64 * 1024) -> None:
        """Raise OSError unless the segment directory takes a file of `size` bytes, fsynced."""
        path = self.directory / ".probe"
        try:
            with path.open("wb") as fh:
                fh.write(b"\0" * size)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            path.unlink(missing_ok=True)

    def recover(self) -> list[Path]:
        """Close segments left open by a crash or a failed write; new appends open a new one."""
        recovered = recover_open_segments(self.directory)
        self.closed_segments.extend(recovered)
        self._seq = max(self._seq, self._last_sequence() + 1)
        return recovered

    def due_to_roll(self) -> bool:
        if self._fh is None:
            return False
        return self._size >= self.max_bytes or self._clock() - self._opened_at >= self.max_age_s

    def roll(self) -> Path | None:
        """Flush and close the open segment; it becomes visible downstream as `.seg`."""
        if self._fh is None or self._path is None:
            return None
        self.flush()
        self._fh.close()
        self._fh = None
        if self.records_in_segment == 0:
            self._path.unlink()
            return None
        closed = self._path.with_suffix(CLOSED_SUFFIX)
        os.replace(self._path, closed)
        fsync_dir(self.directory)
        self.closed_segments.append(closed)
        log.info(
            "closed raw segment %s (%d records, %d bytes)", closed.name, self.records_in_segment, self._size
        )
        return closed

    def close(self) -> Path | None:
        closed = self.roll()
        fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
        self._lock_fh.close()
        return closed
