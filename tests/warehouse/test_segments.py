"""Raw segment format: exact bytes back, torn tails detected, crashed segments recovered."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from civicflow.warehouse.segments import (
    MAGIC,
    SegmentCorrupt,
    SegmentWriter,
    encode_record,
    list_closed_segments,
    read_segment,
    read_segment_lenient,
)

pytestmark = pytest.mark.unit


def test_records_round_trip_exact_bytes(tmp_path):
    w = SegmentWriter(tmp_path / "l1", max_bytes=1 << 20, max_age_s=60)
    msgs = [(b"city/a/parking/p1", b'{"x":1}', 1), (b"city/a/parking/p2", b"\x00\xff binary", 2)]
    for topic, payload, ns in msgs:
        w.append(topic, payload, ns, qos=1)
    closed = w.close()
    assert closed.suffix == ".seg" and not list((tmp_path / "l1").glob("*.open"))
    records = read_segment(closed)
    assert [(r.topic, r.payload, r.received_at_ns, r.qos) for r in records] == [
        (t, p, ns, 1) for t, p, ns in msgs
    ]
    assert records[0].offset == len(MAGIC)


def test_segments_roll_by_size_and_only_closed_ones_are_listed(tmp_path):
    w = SegmentWriter(tmp_path / "l1", max_bytes=200, max_age_s=3600)
    rolled = 0
    for i in range(20):
        w.append(b"city/a/parking/p1", b"x" * 50, i)
        if w.due_to_roll():
            w.roll()
            rolled += 1
    w.append(b"city/a/parking/p1", b"tail", 99)
    w.flush()
    assert len(list_closed_segments(tmp_path)) == rolled >= 5
    assert len(list((tmp_path / "l1").glob("*.open"))) == 1
    w.close()
    total = sum(len(read_segment(p)) for p in list_closed_segments(tmp_path))
    assert total == 21


def test_roll_by_age(tmp_path):
    now = [1000.0]
    w = SegmentWriter(tmp_path / "l1", max_bytes=1 << 20, max_age_s=5, clock=lambda: now[0])
    w.append(b"t/a/parking/p", b"1", 1)
    assert not w.due_to_roll()
    now[0] += 5
    assert w.due_to_roll()
    w.close()


def test_crashed_open_segment_is_recovered_and_torn_tail_kept(tmp_path):
    d = tmp_path / "l1"
    d.mkdir()
    good = [encode_record(b"city/a/parking/p", f"m{i}".encode(), i) for i in range(3)]
    torn = encode_record(b"city/a/parking/p", b"cut off", 9)[:-3]
    (d / "20260101T000000000000Z-00000007.open").write_bytes(MAGIC + b"".join(good) + torn)
    w = SegmentWriter(d, max_bytes=1 << 20, max_age_s=60)
    [closed] = list_closed_segments(tmp_path)
    assert [r.payload for r in read_segment(closed)] == [b"m0", b"m1", b"m2"]
    assert (d / "20260101T000000000000Z-00000007.torn").read_bytes() == torn
    w.append(b"city/a/parking/p", b"next", 10)
    nxt = w.close()
    assert nxt.name.endswith("-00000008.seg")


def test_corrupt_closed_segment_raises_with_offset_and_keeps_good_prefix(tmp_path):
    path = tmp_path / "x.seg"
    rec = encode_record(b"city/a/parking/p", b"payload", 5)
    bad = bytearray(rec)
    bad[-1] ^= 0xFF
    path.write_bytes(MAGIC + rec + bytes(bad))
    with pytest.raises(SegmentCorrupt) as err:
        read_segment(path)
    assert err.value.offset == len(MAGIC) + len(rec)
    assert err.value.why == "checksum mismatch"
    records, tail, why = read_segment_lenient(path)
    assert [r.payload for r in records] == [b"payload"] and tail == bytes(bad)


def test_two_writers_cannot_share_a_directory(tmp_path):
    w = SegmentWriter(tmp_path / "l1", max_bytes=1 << 20, max_age_s=60)
    with pytest.raises(RuntimeError, match="another listener is writing"):
        SegmentWriter(tmp_path / "l1", max_bytes=1 << 20, max_age_s=60)
    w.close()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=100), st.binary(max_size=300)), max_size=20),
    st.integers(min_value=0, max_value=400),
)
def test_any_truncation_keeps_a_valid_prefix(tmp_path_factory, msgs, cut):
    path = tmp_path_factory.mktemp("seg") / "s.seg"
    data = MAGIC + b"".join(encode_record(t, p, i) for i, (t, p) in enumerate(msgs))
    path.write_bytes(data[: max(len(MAGIC), len(data) - cut)])
    records, tail, why = read_segment_lenient(path)
    assert [(r.topic, r.payload) for r in records] == msgs[: len(records)]
    assert (why is None) == (tail == b"")
