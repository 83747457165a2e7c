"""Closed raw segments to the object store: the listener's uploader, when `CIVICFLOW_STORAGE__URL` is set.

The listener lands messages in local segments as always (fsync before anything else), but in
object-storage mode it acknowledges a message only once the segment holding it is in the store:
a segment is closed (by size, by age - `S3_SEGMENT_MAX_AGE_S` unless
`CIVICFLOW_LANDING__SEGMENT_MAX_AGE_S` is set - or when `ROLL_AT_UNACKNOWLEDGED` messages wait in
it), handed to this uploader with the acknowledgements it owes, uploaded to
`raw/<listener>/<segment>.seg`, and only then are its messages acknowledged and the local copy
deleted. Uploads run in a thread of their own, so the listener keeps receiving while they run; the
listener asks the broker for an in-flight window of `RECEIVE_MAXIMUM` messages (MQTT 5 Receive
Maximum) so that acknowledgements waiting for an upload do not stop the flow.

An unreachable or failing store never stops the listener: the uploader retries the oldest segment
with back-off (up to `MAX_BACKOFF_S`), the messages stay unacknowledged (the broker keeps them),
and the listener reports itself unhealthy on /health and in its metrics until uploads succeed.
Segments a crash left behind are uploaded at the next start (their messages were never
acknowledged, so the broker redelivers them too: staging de-duplicates).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from civicflow.errors import CivicflowError, TerminalError
from civicflow.warehouse.segments import CLOSED_SUFFIX
from civicflow.warehouse.storage import Store

log = logging.getLogger(__name__)

S3_SEGMENT_MAX_AGE_S = 10.0
"""Segment age at which the listener closes a segment in object-storage mode (local mode: 300 s).
Its messages are acknowledged once it is uploaded, so this bounds how long the broker holds them
unacknowledged; with readings arriving steadily it makes 8,640 objects a day per listener (more only
when segments fill up first)."""
RECEIVE_MAXIMUM = 65535
"""MQTT 5 Receive Maximum the listener asks for in object-storage mode: the most messages the broker
sends it unacknowledged. Mosquitto takes it in place of its max_inflight_messages for this client."""
ROLL_AT_UNACKNOWLEDGED = 32768
"""Close the open segment early once this many of its messages wait for acknowledgement, so that a
burst never fills the broker's in-flight window while the segment is still open."""
MAX_BACKOFF_S = 30.0
SHUTDOWN_WAIT_S = 10.0
"""How long a stopping listener waits for the last uploads before it leaves them for its next start."""

Ack = tuple[int, int, int]
"""(connection generation, packet id, QoS) of a message waiting to be acknowledged."""


@dataclass
class Uploaded:
    """A segment the store holds now: the acknowledgements its messages are owed."""

    name: str
    acks: list[Ack]
    size: int


@dataclass
class _Item:
    path: Path
    acks: list[Ack] = field(default_factory=list)
    left_behind: bool = False
    """Found by `rescan`: a crash may have come after its upload and before its local copy went."""


class UploadMetrics:
    """The uploader's series, in the listener's registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry or CollectorRegistry()
        self.uploaded = Counter(
            "civicflow_listener_segments_uploaded",
            "Closed raw segments uploaded to the object store.",
            registry=r,
        )
        self.uploaded_bytes = Counter(
            "civicflow_listener_uploaded_bytes",
            "Bytes of raw segments uploaded to the object store.",
            registry=r,
        )
        self.failures = Counter(
            "civicflow_listener_upload_failures", "Failed attempts to upload a raw segment.", registry=r
        )
        self.backlog = Gauge(
            "civicflow_listener_upload_backlog_segments",
            "Closed raw segments waiting for their upload to the object store.",
            registry=r,
        )
        self.waiting = Gauge(
            "civicflow_listener_messages_awaiting_upload",
            "Messages landed locally and not yet acknowledged because their segment is not in the store yet.",
            registry=r,
        )
        self.reachable = Gauge(
            "civicflow_listener_store_ok",
            "1 while the last upload to the object store succeeded.",
            registry=r,
        )
        self.reachable.set(1)


class SegmentUploader:
    """Uploads one listener's closed segments, oldest first, and reports which are in the store."""

    def __init__(
        self,
        store: Store,
        listener: str,
        directory: Path,
        *,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self.store = store
        self.listener = listener
        self.directory = directory
        self.max_backoff_s = max_backoff_s
        self.metrics = UploadMetrics(None)
        self._cond = threading.Condition()
        self._queue: dict[str, _Item] = {}  # by segment name: names sort by time, then sequence
        self._uploaded: deque[Uploaded] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.segments_uploaded = 0
        self.bytes_uploaded = 0
        self.failures = 0
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.last_upload_at: float | None = None

    def key(self, name: str) -> str:
        return f"raw/{self.listener}/{name}"

    # -- the listener's side ----------------------------------------------------------------------

    def bind_metrics(self, registry: CollectorRegistry) -> None:
        """Register the uploader's series in the listener's registry (its /metrics)."""
        self.metrics = UploadMetrics(registry)

    def start(self) -> None:
        self.rescan()
        self._thread = threading.Thread(target=self._run, name="segment-upload", daemon=True)
        self._thread.start()

    def submit(self, path: Path, acks: list[Ack]) -> None:
        """A segment the listener closed, with the acknowledgements its messages are owed."""
        with self._cond:
            item = self._queue.setdefault(path.name, _Item(path))
            item.acks.extend(acks)
            self._cond.notify_all()

    def rescan(self) -> int:
        """Queue closed segments of the directory no one submitted: left by a crash or recovered
        after a failed write. Their messages were never acknowledged. Returns how many."""
        found = 0
        with self._cond:
            for path in sorted(self.directory.glob(f"*{CLOSED_SUFFIX}")):
                if path.name not in self._queue:
                    self._queue[path.name] = _Item(path, left_behind=True)
                    found += 1
            if found:
                self._cond.notify_all()
        if found:
            log.info(
                "%d closed raw segments in %s wait for upload to %s", found, self.directory, self.store.url
            )
        return found

    def take_uploaded(self) -> list[Uploaded]:
        """Segments uploaded since the last call, oldest first: acknowledge their messages now."""
        with self._cond:
            done = list(self._uploaded)
            self._uploaded.clear()
        return done

    @property
    def busy(self) -> bool:
        """Segments still to upload, or uploaded ones whose acknowledgements were not taken."""
        with self._cond:
            return bool(self._queue or self._uploaded)

    def wait(self, timeout_s: float) -> None:
        """Wait until a segment was uploaded (or nothing is left to upload), at most `timeout_s`."""
        with self._cond:
            self._cond.wait_for(lambda: self._uploaded or not self._queue, timeout_s)

    @property
    def healthy(self) -> bool:
        return self.failing_since is None

    def waiting(self) -> tuple[int, int]:
        """(segments, messages) waiting for their upload."""
        with self._cond:
            return len(self._queue), sum(len(i.acks) for i in self._queue.values())

    def publish_metrics(self, open_segment_waiting: int) -> None:
        segments, messages = self.waiting()
        self.metrics.backlog.set(segments)
        self.metrics.waiting.set(messages + open_segment_waiting)
        self.metrics.reachable.set(1 if self.healthy else 0)

    def health(self, open_segment_waiting: int = 0) -> dict:
        segments, messages = self.waiting()
        return {
            "store": self.store.url,
            "ok": self.healthy,
            "segments_uploaded": self.segments_uploaded,
            "bytes_uploaded": self.bytes_uploaded,
            "failures": self.failures,
            "failing_for_s": None
            if self.failing_since is None
            else round(time.monotonic() - self.failing_since, 1),
            "last_error": self.last_error,
            "segments_waiting": segments,
            "messages_awaiting_upload": messages + open_segment_waiting,
        }

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- the upload thread ------------------------------------------------------------------------

    def _next(self) -> _Item | None:
        with self._cond:
            while not self._queue and not self._stop.is_set():
                self._cond.wait()
            if self._stop.is_set():
                return None
            return self._queue[min(self._queue)]

    def _run(self) -> None:
        backoff = 0.5
        while (item := self._next()) is not None:
            try:
                size = item.path.stat().st_size
                if item.left_behind and self.store.exists(self.key(item.path.name)):
                    # Uploaded before a crash: the stored object is the segment (it may since hold
                    # an erasure's tombstones, which the local copy would undo), so it is kept.
                    log.info("%s is in %s already; its local copy goes", item.path.name, self.store.url)
                else:
                    self.store.put_file(self.key(item.path.name), item.path)
            except FileNotFoundError:
                with self._cond:
                    lost = self._queue.pop(item.path.name)
                log.error(
                    "raw segment %s disappeared before its upload to %s; its %d messages were not "
                    "acknowledged and come again from the broker after the listener reconnects. Do not "
                    "remove files from the raw directory of a running listener",
                    item.path,
                    self.store.url,
                    len(lost.acks),
                )
                continue
            except (CivicflowError, OSError) as exc:
                self._failed(item, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            backoff = 0.5
            self._done(item, size)

    def _failed(self, item: _Item, exc: Exception, backoff: float) -> None:
        self.failures += 1
        self.metrics.failures.inc()
        self.metrics.reachable.set(0)
        first = self.failing_since is None
        if first:
            self.failing_since = time.monotonic()
        segments, messages = self.waiting()
        what = "refuses" if isinstance(exc, TerminalError) else "cannot take"
        self.last_error = (
            f"object store {what} raw segment uploads: {exc}. {messages} messages in {segments} "
            "segments stay unacknowledged (the broker keeps them) and local until the upload succeeds"
        )
        (log.error if first else log.warning)("%s; retrying in %.1fs", self.last_error, backoff)

    def _done(self, item: _Item, size: int) -> None:
        # The store holds the segment: only now may its messages be acknowledged and the local copy go.
        try:
            item.path.unlink()
        except OSError as exc:  # uploaded anyway; a restart finds it in the store and deletes it
            log.warning("uploaded %s but could not delete the local copy: %s", item.path, exc)
        with self._cond:
            self._queue.pop(item.path.name, None)
            self._uploaded.append(Uploaded(item.path.name, item.acks, size))
            self._cond.notify_all()
        if self.failing_since is not None:
            log.info(
                "object store %s takes uploads again after %.0fs; acknowledging what waited",
                self.store.url,
                time.monotonic() - self.failing_since,
            )
        self.failing_since = None
        self.last_error = None
        self.segments_uploaded += 1
        self.bytes_uploaded += size
        self.last_upload_at = time.time()
        self.metrics.uploaded.inc()
        self.metrics.uploaded_bytes.inc(size)
        self.metrics.reachable.set(1)
        log.debug("uploaded %s (%d bytes, %d acknowledgements owed)", item.path.name, size, len(item.acks))
