"""Staging on many workers through Iceberg (warehouse/lake.py): exactly once under concurrent
commits, and the same warehouse as staging in one process."""

from __future__ import annotations

import multiprocessing
import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import LIMITS, car_park, land
from fuzz.corpus import load_corpus
from objectstores import aws_credentials, moto_server, s3_storage

from civicflow.ingest.samples import (
    aberdeen_air_quality_messages,
    birmingham_parking_messages,
    edinburgh_waste_messages,
    synthetic_traffic_messages,
)
from civicflow.transforms.stage import decode_shard, merge_increments, shard_of, stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.lake import (
    INCREMENTS,
    TABLE_PROPERTIES,
    LedgerRow,
    arrow_schema,
    increment_columns,
    open_lake,
    remove_orphan_files,
    snapshots_with_ledger,
)
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration
FIXTURES = (aws_credentials, moto_server, s3_storage)  # tests/objectstores.py: the moto server

T0 = 1_700_000_000 * 10**9


def lake_at(root: Path, catalog: str | None = None):
    return open_lake(catalog or f"sqlite:///{root / 'catalog.db'}", (root / "iceberg").as_uri())


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request, tmp_path):
    """The catalogue's database: SQLite (one machine) or a PostgreSQL started for the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    from distributed import missing_binaries, run_postgres

    if missing := [m for m in missing_binaries() if "postgres" in m.lower() or "initdb" in m]:
        pytest.skip(f"cannot start PostgreSQL here: {missing[0]}")
    with run_postgres(tmp_path / "pg") as pg:
        yield pg.url(pg.create_database("catalog"))


def land_everything(layout: Layout) -> None:
    """Real samples of every dataset, hostile messages, redeliveries and corrections, in 8 segments."""
    messages = [
        *islice(birmingham_parking_messages(), 400),
        *islice(edinburgh_waste_messages(), 200),
        *islice(aberdeen_air_quality_messages(), 200),
        *islice(synthetic_traffic_messages(), 300),
    ]
    for case in load_corpus():  # hostile messages whose topics are text
        if (topic := case.topic.decode("utf-8", "replace")).encode() == case.topic:
            messages.append((topic, case.payload))
    for i in range(6):
        chunk = messages[i::6]
        land(layout, chunk, listener=f"l{i % 2 + 1}", received_at_ns=T0 + i * 10**12)
    land(layout, messages[:50], listener="l1", received_at_ns=T0 + 7 * 10**12)  # redelivered
    corrected = [car_park("p1", "2016-10-04T08:00:00Z", n) for n in (10, 11)]
    land(layout, corrected, listener="l2", received_at_ns=T0 + 8 * 10**12)


def warehouse_state(con) -> dict:
    """Everything staging writes, without the times of the run."""
    out = {}
    for domain in ("traffic", "parking", "air_quality", "waste"):
        out[domain] = con.execute(
            f"SELECT * EXCLUDE (staged_at) FROM staged.{domain} ORDER BY ALL"
        ).fetchall()
    out["corrections"] = con.execute(
        "SELECT * EXCLUDE (corrected_at) FROM staged.corrections ORDER BY ALL"
    ).fetchall()
    out["quarantine"] = con.execute(
        "SELECT * EXCLUDE (quarantined_at) FROM quarantine.readings ORDER BY ALL"
    ).fetchall()
    out["ledger"] = con.execute("SELECT * EXCLUDE (staged_at) FROM raw.segments ORDER BY ALL").fetchall()
    out["partitions"] = con.execute(
        "SELECT domain, council, event_date, rows FROM staged.partitions ORDER BY ALL"
    ).fetchall()
    return out


def staged_files(layout: Layout) -> dict[str, pa.Table]:
    """The staged zone's Parquet files, without the time of the run (staged_at)."""
    files = sorted((layout.root / "staged").glob("*/council=*/date=*/*.parquet"))
    assert files
    return {str(f.relative_to(layout.root)): pq.read_table(f).drop_columns(["staged_at"]) for f in files}


def _decode_worker(root: str, shard: int, shards: int) -> dict:
    layout = Layout(Path(root) / "data")
    return decode_shard(layout, lake_at(Path(root)), LIMITS, shard=shard, shards=shards).to_dict()


def test_two_staging_workers_build_the_warehouse_one_process_builds(tmp_path):
    """Two shards decoding in parallel processes, then the merge, equal stage_segments exactly."""
    direct = Layout(tmp_path / "direct" / "data")
    land_everything(direct)
    sharded = Layout(tmp_path / "sharded" / "data")
    shutil.copytree(direct.raw, sharded.raw)

    con = connect(direct.warehouse)
    expected = stage_segments(direct, con, LIMITS)
    expected_state = warehouse_state(con)
    con.close()

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        shards = pool.starmap(_decode_worker, [(str(tmp_path / "sharded"), s, 2) for s in range(2)])
    assert sum(s["segments"] for s in shards) == expected.segments == 8
    assert [s["segments"] for s in shards] == [4, 4]  # each listener's 4 segments split 2/2

    lake = lake_at(tmp_path / "sharded")
    con = connect(sharded.warehouse)
    merged, consumed = merge_increments(sharded, con, lake)
    assert len(consumed) == 2
    assert (merged.readings, merged.duplicates, merged.corrections) == (
        expected.readings,
        expected.duplicates,
        expected.corrections,
    )
    assert merged.quarantined == expected.quarantined and sum(merged.quarantined.values()) > 40
    assert merged.changed_partitions == expected.changed_partitions
    assert warehouse_state(con) == expected_state
    assert staged_files(sharded) == staged_files(direct)

    # Merging again takes nothing; folding moves the ledger to raw.segments and empties increments.
    again, _ = merge_increments(sharded, con, lake)
    assert (again.segments, again.readings, again.changed_partitions) == (0, 0, [])
    assert lake.fold(consumed)["snapshots_expired"] == 2
    assert snapshots_with_ledger(lake.increments()) == []
    assert len(lake.staged_segments()) == 8
    assert lake.increments().scan().to_arrow().num_rows == 0
    assert remove_orphan_files(lake, older_than=timedelta(0)) >= 2  # the two increments' data files
    assert decode_shard(sharded, lake, LIMITS).segments == 0  # nothing is pending after the fold
    con.close()


def test_increments_of_an_earlier_partitioning_are_conformed_and_merged(tmp_path):
    """A table created partitioned by domain, council and date (zstd) takes today's partitioning
    and codec on first use; files written before and after merge into the same warehouse."""
    direct = Layout(tmp_path / "direct" / "data")
    land_everything(direct)
    sharded = Layout(tmp_path / "sharded" / "data")
    shutil.copytree(direct.raw, sharded.raw)
    con = connect(direct.warehouse)
    stage_segments(direct, con, LIMITS)
    expected_state = warehouse_state(con)
    con.close()

    old = lake_at(tmp_path / "sharded")
    old._create(INCREMENTS, increment_columns(), ("domain", "council", "event_date"), TABLE_PROPERTIES)
    old._conformed.add(INCREMENTS)  # an earlier Civicflow, which knew no conforming
    first = decode_shard(sharded, old, LIMITS, shard=0, shards=2)
    before = old.increments()
    assert [f.name for f in before.spec().fields] == ["domain", "council", "event_date"]
    assert before.properties["write.parquet.compression-codec"] == "zstd"

    lake = lake_at(tmp_path / "sharded")
    table = lake.increments()
    assert [f.name for f in table.spec().fields] == ["domain"]
    assert table.properties["write.parquet.compression-codec"] == "snappy"
    second = decode_shard(sharded, lake, LIMITS, shard=1, shards=2)
    assert first.segments > 0 and second.segments > 0 and first.segments + second.segments == 8
    widths = sorted({len(task.file.partition) for task in lake.increments().scan().plan_files()})
    assert widths == [1, 3]  # each file keeps the partitioning it was written with

    con = connect(sharded.warehouse)
    merged, consumed = merge_increments(sharded, con, lake)
    assert len(consumed) == 2 and merged.segments == 8
    assert warehouse_state(con) == expected_state
    assert staged_files(sharded) == staged_files(direct)
    lake.fold(consumed)
    assert lake.increments().scan().to_arrow().num_rows == 0
    con.close()


def _readings(segments: list[str]) -> tuple[pa.Table, list[LedgerRow]]:
    now = datetime(2026, 3, 6, tzinfo=UTC)
    rows = [
        {
            "domain": "parking",
            "council": "testtown",
            "device_id": f"p{i}",
            "observed_at": now + timedelta(minutes=i),
            "event_date": now.date(),
            "received_at": now,
            "segment_id": seg,
            "record_offset": i,
            "reading_index": 0,
            "staged_at": now,
            "occupied_spots": i,
        }
        for seg in segments
        for i in range(5)
    ]
    ledger = [LedgerRow(seg, 100, "00", 5, 5, 0, now) for seg in segments]
    return pa.Table.from_pylist(rows, schema=arrow_schema(increment_columns())), ledger


def _append_worker(root: str, catalog: str, name: str, rounds: list[list[str]], barrier, results) -> None:
    """Append one batch per round, committing only once the other worker is ready to commit too:
    both commits are based on the same metadata, so one of them must lose and retry."""
    try:
        lake = lake_at(Path(root), catalog)
        lake.commit_retries = 3
        lake.before_commit = lambda attempt: barrier.wait(timeout=300) if attempt == 0 else None
        for segments in rounds:
            outcome = lake.append(*_readings(segments), shard=name)
            results.put((name, outcome.segments, outcome.already_staged, outcome.attempts))
            barrier.wait(timeout=300)  # the round is over for both before the next begins
    except BaseException as exc:  # the test reports it, and the other worker stops waiting
        barrier.abort()
        results.put((name, "error", repr(exc), 0))
        raise


def test_concurrent_commits_with_forced_conflicts_lose_nothing_and_duplicate_nothing(tmp_path, catalog):
    lake = lake_at(tmp_path, catalog)
    lake.increments()  # created once, as the first staging run does
    rounds = {
        "A": [["a1", "a2", "a3", "a4"], ["b1", "b2"], ["b1", "c1"]],
        "B": [["a3", "a4", "a5", "a6"], ["b3", "b4"], ["c1", "c2"]],
    }  # overlapping (a retried task and its zombie), disjoint (two shards), partly staged already
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_append_worker, args=(str(tmp_path), catalog, name, segs, barrier, results))
        for name, segs in rounds.items()
    ]
    for p in procs:
        p.start()
    got: list[tuple] = []
    while len(got) < 6 and not any(g[1] == "error" for g in got):
        got.append(results.get(timeout=600))
    assert [g for g in got if g[1] == "error"] == [], got
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    per_worker: dict[str, list[tuple]] = {"A": [], "B": []}
    for name, *outcome in got:  # each worker reports its rounds in order
        per_worker[name].append(tuple(outcome))
    by_round = [{name: per_worker[name][i] for name in rounds} for i in range(3)]
    for outcome in by_round:  # exactly one commit of each round lost the race and was retried
        assert sorted(a for _, _, a in outcome.values()) == [1, 2], outcome
    first, second, third = by_round
    winner = "A" if first["A"][2] == 1 else "B"
    loser = "B" if winner == "A" else "A"
    assert first[winner][:2] == (tuple(rounds[winner][0]), ())
    assert first[loser][:2] == (tuple(s for s in rounds[loser][0] if s not in ("a3", "a4")), ("a3", "a4"))
    assert {second["A"][0], second["B"][0]} == {("b1", "b2"), ("b3", "b4")}
    if third["A"][2] == 1:  # A staged c1 (b1 was staged in round 2); B then left c1 out
        assert third["A"][:2] == (("c1",), ("b1",)) and third["B"][:2] == (("c2",), ("c1",))
    else:
        assert third["B"][:2] == (("c1", "c2"), ()) and third["A"][:2] == ((), ("b1", "c1"))

    rows = lake.increments().scan().to_arrow()
    per_segment = rows.group_by("segment_id").aggregate([("record_offset", "count")]).to_pylist()
    expected = sorted({s for segs in rounds.values() for r in segs for s in r})
    assert sorted(r["segment_id"] for r in per_segment) == expected
    assert {r["record_offset_count"] for r in per_segment} == {5}, "every segment's readings exactly once"
    ledger = [row.segment_id for inc in snapshots_with_ledger(lake.increments()) for row in inc.ledger]
    assert sorted(ledger) == expected, "every segment in the ledger exactly once"


def test_staging_from_an_object_store_builds_the_same_warehouse(tmp_path, s3_storage):
    """Segments the listeners uploaded to an S3-compatible store, increments in Iceberg tables on
    it, quarantine files in it: the same warehouse as staging from the local raw zone."""
    from civicflow.warehouse.storage import open_store

    local = Layout(tmp_path / "local" / "data")
    land_everything(local)
    con = connect(local.warehouse)
    expected = stage_segments(local, con, LIMITS)
    expected_state = warehouse_state(con)
    con.close()

    remote = Layout(tmp_path / "remote" / "data")  # the merging worker's own disk: no raw zone
    store = open_store(s3_storage, remote.root)
    for path in sorted(local.raw.rglob("*.seg")):
        store.put_file(f"raw/{path.relative_to(local.raw).as_posix()}", path)
    lake = open_lake(
        f"sqlite:///{tmp_path / 'catalog.db'}",
        store.location("warehouse/iceberg"),
        properties=store.iceberg_properties(),
    )
    for shard in range(2):
        decode_shard(remote, lake, LIMITS, shard=shard, shards=2, store=store)
    assert not remote.raw.exists() and not (remote.root / "quarantine").exists()
    assert store.list("quarantine/segments/") and store.list("warehouse/iceberg/staged/increments/data/")
    con = connect(remote.warehouse)
    merged, consumed = merge_increments(remote, con, lake, store=store)
    assert (merged.segments, merged.readings, merged.quarantined) == (
        expected.segments,
        expected.readings,
        expected.quarantined,
    )
    assert warehouse_state(con) == expected_state
    assert staged_files(remote) == staged_files(local)
    lake.fold(consumed)
    files = [k for k in store.list("warehouse/iceberg/") if not k.endswith("/")]  # not pyarrow's folders
    assert [k for k in files if "/staged/increments/data/" in k] == []  # merged copies are gone
    assert len([k for k in files if "/raw/segments/data/" in k]) == 1
    con.close()


def test_shards_partition_the_segments():
    segments = [f"civicflow-listener-{i % 3}/{i:020d}" for i in range(600)]
    for shards in (1, 2, 7):
        owners = [shard_of(s, shards) for s in segments]
        assert set(owners) == set(range(shards))
        assert owners == [shard_of(s, shards) for s in segments]  # stable
    assert [shard_of(s, 2) for s in segments[:8]] == [shard_of(s, 2) for s in list(segments[:8])]


def test_shards_split_each_listeners_segments_evenly():
    # Segment ids are <listener>/<stamp>-<sequence>: 41 of one listener split 21/20, and 3
    # listeners' 10 each split 10/10/10 over 3 shards, wherever each listener's round starts.
    one = [f"civicflow-listener/20260302T{i:06d}000000Z-{i:08d}" for i in range(1, 42)]
    assert sorted(Counter(shard_of(s, 2) for s in one).values()) == [20, 21]
    several = [
        f"civicflow-listener-{k}/20260302T000000{i:06d}Z-{i:08d}" for k in range(3) for i in range(1, 11)
    ]
    for k in range(3):
        mine = [shard_of(s, 3) for s in several if s.startswith(f"civicflow-listener-{k}/")]
        assert sorted(Counter(mine).values()) == [3, 3, 4]
        assert all((b - a) % 3 == 1 for a, b in zip(mine, mine[1:], strict=False))  # round-robin
