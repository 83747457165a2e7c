"""The listener with an object store: segments uploaded to S3 (a moto server), a message acknowledged
only once the segment holding it is in the store, and a store outage survived without loss."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from brokers import run_mosquitto
from factories import land
from listeners import ListenerProcess
from objectstores import MotoServer, aws_credentials

from civicflow.errors import CivicflowError
from civicflow.ingest.gateway import publish_messages
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.segments import read_segment
from civicflow.warehouse.storage import Store, open_store

pytestmark = pytest.mark.integration
FIXTURES = (aws_credentials,)  # tests/objectstores.py: test credentials in the environment
CLIENT_ID = "test-listener"


def readings(ids: range):
    for i in ids:
        yield f"city/testtown/parking/p{i % 7}", b'{"seq":%d}' % i


class StoreReader:
    """The records of the listener's segments in the store, each object read once (keys are
    never rewritten with other bytes)."""

    def __init__(self, store: Store, tmp_path) -> None:
        self.store = store
        self.tmp = tmp_path / "downloaded.seg"
        self.records: dict[str, list[bytes]] = {}

    def refresh(self) -> list[bytes]:
        for key in self.store.list(f"raw/{CLIENT_ID}/"):
            if key not in self.records:
                self.tmp.write_bytes(self.store.get_bytes(key))
                self.records[key] = [r.payload for r in read_segment(self.tmp)]
        return [p for payloads in self.records.values() for p in payloads]


class AckWatcher(threading.Thread):
    """Checks, as often as it can, that the listener never acknowledged more messages than the
    store holds: it reads `acked` first, then counts the records in the store."""

    def __init__(self, listener: ListenerProcess, reader: StoreReader) -> None:
        super().__init__(daemon=True)
        self.listener, self.reader = listener, reader
        self.stop = threading.Event()
        self.checks = 0
        self.violations: list[tuple[int, int]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            acked = self.listener.health()[1].get("acked")
            try:
                stored = len(self.reader.refresh())
            except CivicflowError:
                continue  # the store is cut: nothing to count; the test checks `acked` then
            if acked is not None:
                self.checks += 1
                if acked > stored:
                    self.violations.append((acked, stored))
            self.stop.wait(0.02)  # a sample every few tens of milliseconds is plenty


def test_every_reading_lands_once_in_the_store_and_is_acknowledged_only_after_its_upload(
    tmp_path, aws_credentials
):
    s3 = MotoServer().start()  # the test's own server: stopped and started again to cut the store
    try:
        storage = s3.storage(s3.create_bucket())
        data_root = tmp_path / "data"
        # A segment a crashed listener left behind: uploaded at the next start, then deleted.
        left = land(Layout(data_root), [("city/testtown/parking/p0", b'{"left":1}')], listener=CLIENT_ID)
        reader = StoreReader(open_store(storage, tmp_path), tmp_path)
        with run_mosquitto(tmp_path, persistence=False) as broker:
            listener = ListenerProcess(
                data_root,
                broker.port,
                tmp_path / "listener.log",
                client_id=CLIENT_ID,
                CIVICFLOW_STORAGE__URL=storage.url,
                CIVICFLOW_STORAGE__ENDPOINT_URL=storage.endpoint_url,
                CIVICFLOW_LANDING__SEGMENT_MAX_AGE_S="0.5",
            ).start()
            watcher = AckWatcher(listener, reader)
            try:
                listener.wait_subscribed()
                watcher.start()
                publish_messages("127.0.0.1", broker.port, readings(range(1000)), client_id="test-gateway")
                listener.wait_for(lambda: listener.health()[1].get("acked") == 1000, 60, "acking 1,000")
                assert not left.exists()

                s3.stop()  # the store is unreachable: connections refused
                # More than the test broker's max_inflight_messages (1000): the listener's Receive
                # Maximum lets the broker send them although none can be acknowledged yet.
                publish_messages(
                    "127.0.0.1", broker.port, readings(range(1000, 4000)), client_id="test-gateway"
                )
                code, cut = listener.wait_for(
                    lambda: (
                        (h := listener.health())[1].get("received") == 4000
                        and h[1]["upload"]["messages_awaiting_upload"] == 3000
                        and h[1]["upload"]["failures"] > 0
                        and h
                    ),
                    60,
                    "receiving 3,000 readings while the store is away",
                )
                metrics = listener.wait_for(
                    lambda: (
                        "civicflow_listener_messages_awaiting_upload 3000.0" in (m := listener.metrics())
                        and m
                    ),
                    30,
                    "the metrics to show the messages awaiting upload",
                )
                kept = sorted(p.name for p in listener.directory.glob("*.seg"))

                s3.start()  # the same port, the same objects: the store is back
                listener.wait_for(
                    lambda: (h := listener.health()[1]).get("acked") == 4000 and h.get("healthy"),
                    60,
                    "acknowledging everything once the store is back",
                )
                watcher.stop.set()
                watcher.join()
                assert listener.terminate() == 0
            finally:
                watcher.stop.set()
                listener.ensure_stopped()
        payloads = reader.refresh()
    finally:
        s3.stop()

    # While the store was away: received, landed locally, nothing more acknowledged, unhealthy.
    assert code == 503 and cut["healthy"] is False and cut["acked"] == 1000
    assert cut["upload"]["ok"] is False and "unreachable" in cut["upload"]["last_error"]
    assert "stay unacknowledged (the broker keeps them)" in cut["last_error"]
    assert kept, "the segments waiting for the store are kept locally"
    assert "civicflow_listener_store_ok 0.0" in metrics
    assert "civicflow_listener_upload_failures_total 0.0" not in metrics
    # Nothing was acknowledged before the store held it.
    assert watcher.checks > 0 and watcher.violations == []
    # Every reading is in the store exactly once, and nothing is left locally.
    seqs = Counter(json.loads(p)["seq"] for p in payloads if b"seq" in p)
    assert set(seqs) == set(range(4000)) and set(seqs.values()) == {1}
    assert payloads.count(b'{"left":1}') == 1
    assert not list(listener.directory.glob("*.seg")) and not list(listener.directory.glob("*.open"))


def test_a_segment_left_behind_after_its_upload_is_not_uploaded_again_over_the_stored_one(tmp_path):
    """A listener that crashed after putting a segment and before deleting its local copy finds it
    at its next start: the store holds it already, perhaps with an erasure's tombstones since, so
    the local copy is deleted, not put over it. A left-behind segment the store lacks is put."""
    from civicflow.ingest.upload import SegmentUploader
    from civicflow.warehouse.segments import erase_records
    from civicflow.warehouse.storage import LocalStore

    landing = Layout(tmp_path / "listener")
    uploaded = land(landing, [("city/testtown/parking/p0", b'{"plate":"AB12 CDE"}')], listener=CLIENT_ID)
    never = land(landing, [("city/testtown/parking/p1", b'{"seq":1}')], listener=CLIENT_ID)
    original = {p.name: p.read_bytes() for p in (uploaded, never)}
    store = LocalStore(tmp_path / "store")
    erased = tmp_path / "erased.seg"
    erased.write_bytes(original[uploaded.name])
    erase_records(erased, {read_segment(erased)[0].offset})  # what an erasure left in the store
    store.put_bytes(f"raw/{CLIENT_ID}/{uploaded.name}", erased.read_bytes())

    uploader = SegmentUploader(store, CLIENT_ID, uploaded.parent)
    uploader.start()
    done: list[str] = []
    try:
        for _ in range(10):  # a hang guard: each round waits for the event, not for a time
            if len(done) == 2:
                break
            uploader.wait(60)  # until one is uploaded or none is left
            taken = [u.name for u in uploader.take_uploaded()]
            assert taken or uploader.busy(), uploader.last_error
            done += taken
    finally:
        uploader.stop()
    assert sorted(done) == sorted(original)
    assert not uploaded.exists() and not never.exists()
    assert (
        store.get_bytes(f"raw/{CLIENT_ID}/{uploaded.name}") == erased.read_bytes() != original[uploaded.name]
    )
    assert store.get_bytes(f"raw/{CLIENT_ID}/{never.name}") == original[never.name]
