"""Replay on real DuckDB files: re-staging raw segments gives the same staged and published data.

Staged content is compared as a sha256 over the staged tables in a fixed order. Replay keeps the
`staged_at` of a row it finds unchanged, so a replay of the same raw data on a warehouse staged
from scratch leaves even `staged_at` (and so the staged Parquet files) as it was; a warehouse
staged piece by piece is compared without `staged_at`, the one column that says when, not what.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from factories import LIMITS, car_park, tree_digest

from civicflow.contract import DATASETS
from civicflow.errors import TerminalError
from civicflow.ingest.samples import birmingham_parking_messages
from civicflow.jobs.publication import gate_and_publish
from civicflow.transforms.decode import Limits
from civicflow.transforms.replay import parse_bound, replay_segments, segment_opened_at
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.segments import SegmentWriter

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
LATER = datetime(2026, 3, 11, 12, 0, tzinfo=UTC)


RECEIVED = 1_772_500_000 * 10**9  # 2026-03-03T01:06:40Z: after every reading these tests land


def land_at(layout: Layout, opened: str, messages, received_at_ns: int, listener: str = "l1") -> Path:
    """Land messages in one closed segment whose name says it was opened at `opened` (UTC)."""
    stamp = datetime.fromisoformat(opened).replace(tzinfo=UTC).timestamp()
    writer = SegmentWriter(layout.raw / listener, max_bytes=1 << 30, max_age_s=3600, clock=lambda: stamp)
    for i, (topic, payload) in enumerate(messages):
        raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        writer.append(topic.encode(), raw, received_at_ns + i)
    path = writer.close()
    assert path is not None
    return path


def staged_checksum(con, *, with_staged_at: bool = True) -> str:
    """sha256 over every staged table and the partition versions, in a fixed order."""
    digest = hashlib.sha256()
    for domain, dataset in sorted(DATASETS.items()):
        cols = [c.name for c in dataset.staged_columns if with_staged_at or c.name != "staged_at"]
        for row in con.execute(f"SELECT {', '.join(cols)} FROM staged.{domain} ORDER BY ALL").fetchall():
            digest.update(repr(row).encode())
    for row in con.execute(
        "SELECT domain, council, event_date, rows FROM staged.partitions WHERE rows > 0 ORDER BY ALL"
    ).fetchall():
        digest.update(repr(row).encode())
    return digest.hexdigest()


def versions(con) -> dict:
    rows = con.execute("SELECT domain, council, event_date::VARCHAR, version FROM staged.partitions")
    return {(d, c, day): v for d, c, day, v in rows.fetchall()}


def published_files(layout: Layout) -> dict[str, str]:
    """sha256 of every published file: partitions, aggregates and data packages.

    Read from each dataset's working tree: release directories and their ids record when and how
    often a publish ran, which a replay need not reproduce.
    """
    return {
        f"{d}/{k}": v for d in DATASETS for k, v in tree_digest(layout.published_dataset(d), "**/*.*").items()
    }


def land_abc(layout: Layout, after_each=lambda: None) -> list[Path]:
    """One key received three times: A (v=10), B (a correction to 11), C (10 again)."""
    key = ("p1", "2026-03-01T08:00:00Z")
    landed = []
    for opened, value, ns in [
        ("2026-03-01T09:00:00", 10, RECEIVED + 1_000_000),  # A
        ("2026-03-02T09:00:00", 11, RECEIVED + 2_000_000),  # B
        ("2026-03-03T09:00:00", 10, RECEIVED + 3_000_000),  # C
    ]:
        landed.append(land_at(layout, opened, [car_park(*key, value)], ns))
        after_each()
    return landed


def kept(con) -> list[tuple]:
    return con.execute("SELECT occupied_spots, segment_id FROM staged.parking").fetchall()


def test_replaying_b_alone_keeps_the_value_the_latest_copy_gave(wh):
    layout, con = wh
    a, b, c = land_abc(layout)
    stage_segments(layout, con, LIMITS, now=NOW)
    assert kept(con) == [(10, f"l1/{a.stem}")]  # the latest value (C's), first received copy (A)
    before, files = staged_checksum(con), tree_digest(layout.root / "staged")

    # Only B is opened on 2 March. Merging B alone into the partition would give 11.
    told: list[tuple[str, int, int]] = []
    result = replay_segments(
        layout,
        con,
        LIMITS,
        parse_bound("2026-03-02", upper=False),
        parse_bound("2026-03-02", upper=True),
        progress=lambda *step: told.append(step),
    )
    assert (result.segments, result.readings, result.context_segments) == (1, 1, 2)
    assert told == [("replay", 1, 1), ("context", 1, 2), ("context", 2, 2)]
    assert result.rebuilt_partitions == [("parking", "testtown", "2026-03-01")]
    assert result.changed_partitions == []
    assert kept(con) == [(10, f"l1/{a.stem}")]
    assert staged_checksum(con) == before
    assert tree_digest(layout.root / "staged") == files
    assert versions(con) == {("parking", "testtown", "2026-03-01"): 1}


def test_a_piecewise_staged_abc_is_rebuilt_as_if_staged_at_once(wh, tmp_path):
    layout, con = wh
    # Staged one segment per run: C's copy is kept, not A's, as C arrived after B's 11.
    a, _, c = land_abc(layout, after_each=lambda: stage_segments(layout, con, LIMITS, now=NOW))
    assert kept(con) == [(10, f"l1/{c.stem}")]
    assert versions(con) == {("parking", "testtown", "2026-03-01"): 3}  # A, then B's 11, then C
    gate_and_publish(layout, con, now=NOW)
    published = published_files(layout)

    result = replay_segments(layout, con, LIMITS, *bounds("2026-03-02T00:00:00Z", "2026-03-02T23:59:59Z"))
    assert result.changed_partitions == [("parking", "testtown", "2026-03-01")]
    assert kept(con) == [(10, f"l1/{a.stem}")]
    assert versions(con) == {("parking", "testtown", "2026-03-01"): 4}  # lineage changed
    gate = gate_and_publish(layout, con, now=LATER)
    assert (gate.validated, gate.published) == (1, 1)
    assert published_files(layout) == published  # same values, so the same bytes


def bounds(start: str, end: str) -> tuple[datetime, datetime]:
    return parse_bound(start, upper=False), parse_bound(end, upper=True)


def land_week(layout: Layout, after_each=lambda: None) -> None:
    """Six days of real Birmingham readings, one segment a day, then a redelivery and corrections.

    The 10 October segment redelivers 5 October's messages and corrects one 6 October reading;
    the 11 October segment sends that reading's first value again (the A/B/C pattern).
    """
    sample = [m for m in birmingham_parking_messages() if '"2016-10-0' in m[1].decode()]
    by_day: dict[str, list] = {}
    for topic, payload in sample:
        by_day.setdefault(orjson.loads(payload)["observed_at"][:10], []).append((topic, payload))
    assert sorted(by_day) == [f"2016-10-{d:02d}" for d in range(4, 10)]
    base = 1_476_100_000_000_000_000  # 2016-10-10T11:46:40Z, after the week it lands
    for i, day in enumerate(sorted(by_day)):
        land_at(layout, f"{day}T23:00:00", by_day[day], base + i * 10**12)
        after_each()
    original = by_day["2016-10-06"][100]
    topic, payload = original
    doc = orjson.loads(payload)
    doc["occupied_spots"] += -1 if doc["occupied_spots"] else 1
    corrected = orjson.dumps(doc)
    land_at(layout, "2016-10-10T01:00:00", [*by_day["2016-10-05"], (topic, corrected)], base + 7 * 10**12)
    after_each()
    land_at(layout, "2016-10-11T01:00:00", [original], base + 8 * 10**12)
    after_each()


def snapshot(layout: Layout, con, *, with_staged_at: bool = True) -> dict:
    return {
        "staged": staged_checksum(con, with_staged_at=with_staged_at),
        "published": published_files(layout),
    }


def test_full_and_partial_replays_reproduce_staging_from_scratch(tmp_path):
    ref_layout, ref = Layout(tmp_path / "reference"), None
    land_week(ref_layout)
    ref = connect(ref_layout.warehouse)
    stage_segments(ref_layout, ref, LIMITS, now=NOW)
    gate_and_publish(ref_layout, ref, now=NOW)
    reference = snapshot(ref_layout, ref)
    reference_no_time = snapshot(ref_layout, ref, with_staged_at=False)
    staged_files, ref_versions = tree_digest(ref_layout.root / "staged"), versions(ref)
    partition_files = [p for p in reference["published"] if "/aggregates/" not in p and "/date=" in p]
    assert len(partition_files) == 2 * 6  # Parquet and CSV, 4 to 9 October
    assert any("/aggregates/" in p for p in reference["published"])  # aggregates compared too

    # On a warehouse staged from scratch, any replay changes nothing at all.
    for start, end in [("2016-10-06", "2016-10-10"), ("2016-10-01", "2016-10-31")]:
        result = replay_segments(ref_layout, ref, LIMITS, *bounds(start, end), now=LATER)
        assert result.segments > 0 and result.changed_partitions == []
        assert snapshot(ref_layout, ref) == reference
        assert tree_digest(ref_layout.root / "staged") == staged_files
        assert versions(ref) == ref_versions
        assert gate_and_publish(ref_layout, ref, now=LATER).validated == 0
    ref.close()

    # Staged one segment at a time, 6 October keeps the 11 October copy, not the first one.
    layout = Layout(tmp_path / "piecewise")
    con = connect(layout.warehouse)
    land_week(layout, after_each=lambda: stage_segments(layout, con, LIMITS, now=NOW))
    gate_and_publish(layout, con, now=NOW)
    assert snapshot(layout, con, with_staged_at=False)["staged"] != reference_no_time["staged"]
    assert snapshot(layout, con)["published"] == reference["published"]

    partial = replay_segments(layout, con, LIMITS, *bounds("2016-10-10", "2016-10-10"), now=LATER)
    assert partial.segments == 1
    assert {p[2] for p in partial.rebuilt_partitions} >= {"2016-10-05", "2016-10-06"}
    assert [p[2] for p in partial.changed_partitions] == ["2016-10-06"]
    gate = gate_and_publish(layout, con, now=LATER)
    assert (gate.validated, gate.published) == (1, 1)  # only the partition that changed
    assert snapshot(layout, con, with_staged_at=False) == reference_no_time

    full = replay_segments(layout, con, LIMITS, *bounds("2016-01-01", "2016-12-31"), now=LATER)
    assert full.segments == 8 and full.changed_partitions == []
    assert gate_and_publish(layout, con, now=LATER).validated == 0
    assert snapshot(layout, con, with_staged_at=False) == reference_no_time
    con.close()


def test_replaying_an_empty_range_does_nothing(wh):
    layout, con = wh
    land_abc(layout)
    stage_segments(layout, con, LIMITS, now=NOW)
    gate_and_publish(layout, con, now=NOW)
    before = (staged_checksum(con), tree_digest(layout.root, "[!w]*/**/*"), versions(con))
    ledger = con.execute("SELECT * FROM raw.segments ORDER BY ALL").fetchall()

    result = replay_segments(layout, con, LIMITS, *bounds("2026-03-04", "2026-03-31"))
    assert result.to_dict() == {
        "from": "2026-03-04T00:00:00+00:00",
        "to": "2026-04-01T00:00:00+00:00",
        "segments": 0,
        "readings": 0,
        "context_segments": 0,
        "quarantined": {},
        "rebuilt_partitions": [],
        "changed_partitions": [],
    }
    assert (staged_checksum(con), tree_digest(layout.root, "[!w]*/**/*"), versions(con)) == before
    assert con.execute("SELECT * FROM raw.segments ORDER BY ALL").fetchall() == ledger
    assert not list(layout.root.glob(".replay-*"))
    with pytest.raises(TerminalError, match="empty or reversed"):
        replay_segments(layout, con, LIMITS, *bounds("2026-03-04T10:00:00Z", "2026-03-04T09:00:00Z"))


def test_replay_after_a_limit_change_stages_what_was_quarantined_and_only_that_is_republished(wh):
    layout, con = wh
    small = car_park("p1", "2026-03-01T08:00:00Z", 10)
    large = car_park("p2", "2026-03-02T08:00:00+00:00", 12, total=1000)
    land_at(layout, "2026-03-01T09:00:00", [small], RECEIVED + 1_000_000)
    later = [large, car_park("p1", "2026-03-02T08:00:00Z", 3)]
    big = land_at(layout, "2026-03-02T09:00:00", later, RECEIVED + 2_000_000)
    strict = Limits(max_payload_bytes=len(orjson.dumps(small[1])))
    stage_segments(layout, con, strict, now=NOW)
    assert con.execute("SELECT reason, device_id FROM quarantine.readings").fetchall() == [
        ("payload_too_large", "p2")
    ]
    first = gate_and_publish(layout, con, now=NOW)
    # p2's only reading of 2 March was refused: p2 has nothing staged to hold back, so the day is
    # published with p1's reading (the quarantine share is judged per device).
    assert (first.published, first.held_back, first.devices_held) == (2, [], [])
    assert con.execute(
        "SELECT observed_at::DATE::VARCHAR, device_id FROM published.parking ORDER BY ALL"
    ).fetchall() == [("2026-03-01", "p1"), ("2026-03-02", "p1")]
    first_day = tree_digest(layout.root / "published", "parking/council=testtown/date=2026-03-01/*")
    qfile = layout.quarantine_file(f"l1/{big.stem}")
    assert qfile.exists()

    result = replay_segments(layout, con, LIMITS, *bounds("2026-03-02", "2026-03-02"), now=LATER)
    assert result.changed_partitions == [("parking", "testtown", "2026-03-02")]
    assert result.quarantined == {}
    assert con.execute("SELECT count(*) FROM quarantine.readings").fetchone() == (0,)
    assert not qfile.exists()
    assert con.execute(
        "SELECT segment_id, readings, rejected, staged_at FROM raw.segments WHERE segment_id = ?",
        [f"l1/{big.stem}"],
    ).fetchall() == [(f"l1/{big.stem}", 2, 0, NOW)]
    assert versions(con) == {
        ("parking", "testtown", "2026-03-01"): 1,
        ("parking", "testtown", "2026-03-02"): 2,
    }
    gate = gate_and_publish(layout, con, now=LATER)
    assert (gate.validated, gate.published) == (1, 1)
    assert con.execute(
        "SELECT event_date::VARCHAR, partition_version, rows FROM published.releases ORDER BY 1"
    ).fetchall() == [("2026-03-01", 1, 1), ("2026-03-02", 2, 2)]
    assert con.execute(
        "SELECT observed_at::DATE::VARCHAR, device_id FROM published.parking ORDER BY ALL"
    ).fetchall() == [("2026-03-01", "p1"), ("2026-03-02", "p1"), ("2026-03-02", "p2")]
    assert tree_digest(layout.root / "published", "parking/council=testtown/date=2026-03-01/*") == first_day


@pytest.mark.unit
def test_bounds_and_segment_names():
    assert parse_bound("2026-03-01", upper=False) == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_bound("2026-03-01", upper=True) == datetime(2026, 3, 2, tzinfo=UTC)
    assert parse_bound("2026-03-01T08:30", upper=True) == datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    assert parse_bound("2026-03-01T08:30:00+01:00", upper=False) == datetime(2026, 3, 1, 7, 30, tzinfo=UTC)
    with pytest.raises(TerminalError, match="cannot read replay bound 'yesterday'"):
        parse_bound("yesterday", upper=False)
    assert segment_opened_at(Path("l1/20261123T111036121780Z-00000001.seg")) == datetime(
        2026, 11, 23, 11, 10, 36, 121780, tzinfo=UTC
    )
    assert segment_opened_at(Path("l1/status.json")) is None
