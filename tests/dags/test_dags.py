"""DAGs in three layers: clean parse with no database or network, policy, and a real run."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from itertools import groupby
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pyarrow.parquet as pq
import pytest
from factories import car_park, land

from civicflow.app.batch import BATCH_DAGS, DAGS_DIR, REPLAY_DAGS, run_batch
from civicflow.app.status import dag_runs
from civicflow.contract import DATASETS, Zone
from civicflow.ingest.samples import birmingham_parking_messages
from civicflow.jobs import publish_job, stage_job
from civicflow.publish.release import latest_release, read_manifest
from civicflow.settings import Settings
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import held_back, pending

DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))
EXPECTED = {"civicflow_stage", "civicflow_publish", "civicflow_backfill", "civicflow_maintenance"}

PARSE_PROBE = textwrap.dedent("""
    import importlib.util, json, socket, sys
    import duckdb

    def refuse(*args, **kwargs):
        raise AssertionError("DAG file touched the network or a database at parse time")

    socket.socket.connect = refuse
    socket.create_connection = refuse
    duckdb.connect = refuse
    from airflow.sdk.definitions.dag import DAG

    found = {}
    for path in sys.argv[1:]:
        spec = importlib.util.spec_from_file_location(path.rsplit("/", 1)[-1][:-3], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for dag in (v for v in vars(module).values() if isinstance(v, DAG)):
            found[dag.dag_id] = {
                "tags": sorted(dag.tags), "doc_md": bool(dag.doc_md), "catchup": dag.catchup,
                "schedule": str(dag.schedule),
                "retries": [t.retries for t in dag.tasks],
                "outlets": sorted(o.uri for t in dag.tasks for o in t.outlets),
                "tasks": sorted(t.task_id for t in dag.tasks),
                "params": sorted(dag.params),
            }
    print(json.dumps(found))
""")


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow-home-empty")
    env = os.environ | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
    }
    out = subprocess.run(
        [sys.executable, "-c", PARSE_PROBE, *map(str, DAG_FILES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert not list(home.glob("*.db")), "parsing DAG files created a metadata database"
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_every_dag_file_imports_without_database_or_network(parsed):
    assert set(parsed) == EXPECTED


@pytest.mark.integration
def test_dag_policy(parsed):
    for dag_id, dag in parsed.items():
        assert "civicflow" in dag["tags"], dag_id
        assert dag["doc_md"], dag_id
        assert dag["catchup"] is False, dag_id
        assert all(r >= 1 for r in dag["retries"]), dag_id
    domains = sorted(d.value for d in DATASETS)
    assert parsed["civicflow_stage"]["outlets"] == [f"civicflow://staged/{d}" for d in domains]
    assert parsed["civicflow_publish"]["outlets"] == [f"civicflow://published/{d}" for d in domains]
    assert parsed["civicflow_stage"]["schedule"] == "@hourly"
    for domain in domains:  # publication runs when any staged dataset changes
        assert f"staged.{domain}" in parsed["civicflow_publish"]["schedule"]
    backfill = parsed["civicflow_backfill"]  # manual, and it feeds publication like staging does
    assert (backfill["schedule"], backfill["params"]) == ("None", ["from", "to"])
    assert backfill["outlets"] == parsed["civicflow_stage"]["outlets"]
    maintenance = parsed["civicflow_maintenance"]  # daily, and it announces nothing
    assert (maintenance["schedule"], maintenance["outlets"]) == ("@daily", [])


@pytest.mark.integration
def test_each_dag_runs_through_dag_test_on_real_data(tmp_path, airflow_home, monkeypatch):
    settings = Settings(data_root=tmp_path / "data")
    layout = Layout(settings.data_root)
    sample = [m for m in birmingham_parking_messages() if '"2016-10-0' in m[1].decode()]
    poisoned = car_park("p8", "0001-01-01T00:00:00Z", 5, council="southtown")  # Go's zero time: refused
    counts = [  # a traffic counter whose gateway sends 2^63-1 vehicles twice, and a sound one
        (
            f"city/northtown/traffic/{device}",
            {"observed_at": f"2016-10-04T{h:02d}:{m:02d}:00Z", "intensity": n},
        )
        for device, h, m, n in [
            ("a64", 8, 0, 2**63 - 1),
            ("a64", 8, 5, 2**63 - 1),
            *(("a64", 9, m, 20) for m in range(0, 60, 5)),
            *(("a65", 9, m, 30) for m in range(0, 60, 5)),
        ]
    ]
    land(layout, [*sample, car_park("p9", "2016-10-05T08:00:00Z", 101), poisoned, *counts])
    home = airflow_home

    # Staging, publication, then an hourly staging run with nothing new: one `civicflow batch`
    # process runs the three DAG runs in turn, as the scheduler would.
    told: list[tuple[str, float]] = []
    outcome = run_batch(
        settings,
        dag_ids=(*BATCH_DAGS, "civicflow_stage"),  # what `civicflow batch` runs, then an idle hour
        airflow_home=home,
        on_progress=lambda *p: told.append(p),
    )
    assert [(r.dag_id, r.state) for r in outcome.runs] == [
        ("civicflow_stage", "success"),
        ("civicflow_publish", "success"),
        ("civicflow_stage", "success"),
    ]
    # the progress display was told which DAG ran, for a time that only grows while that DAG runs
    # (no bound on it: a loaded machine may take any time to run or to end the child process)
    shown = [(dag, [s for _, s in run]) for dag, run in groupby(told, key=lambda p: p[0])]
    assert [dag for dag, _ in shown][:2] == ["civicflow_stage", "civicflow_publish"]
    assert [dag for dag, _ in shown] in (
        ["civicflow_stage", "civicflow_publish"],  # the idle run may end between two looks
        ["civicflow_stage", "civicflow_publish", "civicflow_stage"],
    )
    assert all(times == sorted(times) and times[0] >= 0 for _, times in shown)
    stage, publish, idle = runs = dag_run_table(home)
    assert [(r.dag_id, r.state) for r in runs] == [
        ("civicflow_stage", "success"),
        ("civicflow_publish", "success"),
        ("civicflow_stage", "success"),
    ]
    assert stage.ended <= publish.started and publish.ended <= idle.started  # one after the other
    con = connect(layout.warehouse, read_only=True)
    (staged_rows,) = con.execute(
        "SELECT (SELECT count(*) FROM staged.parking) + (SELECT count(*) FROM staged.traffic)"
    ).fetchone()
    (quarantined,) = con.execute("SELECT count(*) FROM quarantine.readings").fetchone()
    (first_published,) = con.execute("SELECT min(published_at) FROM published.releases").fetchone()
    (zero_time,) = con.execute(
        "SELECT reason FROM quarantine.readings WHERE council = 'southtown'"
    ).fetchone()
    con.close()
    assert staged_rows > 2000 and quarantined >= 3
    # staging published nothing: the first reading was published once the publish run had started
    assert first_published >= publish.started
    assert zero_time == "timestamp_out_of_range"  # staging keeps it from the gate

    # civicflow status reads the last run of each DAG from the metadata database
    last = {r["dag_id"]: r for r in dag_runs(f"sqlite:///{home / 'airflow.db'}")}
    assert {d: (r["state"], r["failed_tasks"]) for d, r in last.items()} == {
        "civicflow_stage": ("success", []),
        "civicflow_publish": ("success", []),
    }
    assert (last["civicflow_stage"]["run_id"], last["civicflow_publish"]["run_id"]) == (
        idle.run_id,
        publish.run_id,
    )
    assert last["civicflow_publish"]["last_success"] >= last["civicflow_publish"]["started"]
    # One judging task per partition, named after it.
    judged = [t for t in task_states(home, "civicflow_publish", "judge") if t[0] >= 0]
    days = [f"parking birmingham 2016-10-{d:02d} v1" for d in range(4, 10)]
    names = [*days, "traffic northtown 2016-10-04 v1"]
    assert judged == [(i, name, "success") for i, name in enumerate(names)]
    assert [state for *_, state in task_states(home, "civicflow_publish", "release")] == ["success"]
    con = connect(layout.warehouse, read_only=True)
    (rows,) = con.execute("SELECT coalesce(sum(rows), 0) FROM published.releases").fetchone()
    held = held_back(con)
    assert pending(con) == []
    con.close()
    # Real car parks whose counters over-read are held back device by device; no whole day is
    # held; everything else is published.
    assert [h for h in held if h.device_id is None] == []
    devices = [h for h in held if h.device_id is not None]
    assert {(h.council, tuple(h.rules)) for h in devices} <= {
        ("birmingham", ("quarantine_share",)),
        ("northtown", ("quarantine_share",)),
    }
    assert ("northtown", "a64") in {(h.council, h.device_id) for h in devices}  # 2 of its 14 refused
    assert rows == staged_rows - sum(h.rows for h in devices)
    manifest = read_manifest(latest_release(layout))
    assert sorted((p["domain"], p["event_date"]) for p in manifest["partitions"]) == [
        *(("parking", f"2016-10-{d:02d}") for d in range(4, 10)),
        ("traffic", "2016-10-04"),  # a65's readings: a64's day is held back
    ]
    con = connect(layout.warehouse, read_only=True)
    vehicles = con.execute("SELECT device_id, sum(intensity_sum) FROM published.traffic_daily GROUP BY 1")
    assert vehicles.fetchall() == [("a65", 360)]
    con.close()
    package = json.loads((layout.published_dataset("parking") / "datapackage.json").read_text())
    readings = [r for r in package["resources"] if r["path"].startswith("council=")]
    assert len(readings) == 2 * 6  # Parquet and CSV for 2016-10-04..09
    # and the hourly, daily and council aggregates, and the month's and the year's archives
    assert len(package["resources"]) == 4 * 2 * 6 + 2 * 2 + 1  # and devices.geojson

    # The hourly staging run with nothing new skipped: no Asset event, so no publish run follows.
    assert [state for *_, state in task_states(home, "civicflow_stage", "merge")] == ["skipped", "success"]
    events = asset_events_by_run(home)
    assert events[stage.run_id] > 0 and events[publish.run_id] > 0  # they announced their datasets
    assert events.get(idle.run_id, 0) == 0

    # A data engineer approves one held device's day: it is in `latest` when the command returns.
    from typer.testing import CliRunner

    from civicflow.app.release_cli import release_app

    assert devices, "the real sample has car parks whose counters over-read"
    target = devices[0]
    monkeypatch.setenv("CIVICFLOW_DATA_ROOT", str(settings.data_root))
    args = ["approve", "parking", "birmingham", target.event_date.isoformat(), "--device", target.device_id]
    done = CliRunner().invoke(release_app, [*args, "--reason", "counter recalibrated"])
    assert done.exit_code == 0, done.output
    assert "in release" in done.output
    con = connect(layout.warehouse, read_only=True)
    (after,) = con.execute("SELECT coalesce(sum(rows), 0) FROM published.releases").fetchone()
    still_held = held_back(con)
    assert pending(con) == []
    con.close()
    assert after == rows + target.rows
    assert target not in still_held and len(still_held) == len(held) - 1
    released = read_manifest(latest_release(layout))["partitions"]
    [day] = [
        p
        for p in released
        if p["council"] == "birmingham" and p["event_date"] == target.event_date.isoformat()
    ]
    assert (
        day["rows"]
        == next(p for p in manifest["partitions"] if p["event_date"] == target.event_date.isoformat())["rows"]
        + target.rows
    )


def task_states(home: Path, dag_id: str, task_id: str) -> list[tuple]:
    """(map index, its name, state) of a task's instances, newest run first."""
    db = sqlite3.connect(home / "airflow.db")
    try:
        return db.execute(
            """SELECT ti.map_index, ti.rendered_map_index, ti.state FROM task_instance ti
               JOIN dag_run r ON r.run_id = ti.run_id AND r.dag_id = ti.dag_id
               WHERE ti.dag_id = ? AND ti.task_id = ? ORDER BY r.id DESC, ti.map_index""",
            [dag_id, task_id],
        ).fetchall()
    finally:
        db.close()


class DagRun(NamedTuple):
    dag_id: str
    state: str
    run_id: str
    started: datetime
    ended: datetime


def dag_run_table(home: Path) -> list[DagRun]:
    """Every DAG run in the metadata database, oldest first, with its times in UTC."""
    db = sqlite3.connect(home / "airflow.db")
    try:
        rows = db.execute(
            "SELECT dag_id, state, run_id, start_date, end_date FROM dag_run ORDER BY id"
        ).fetchall()
    finally:
        db.close()
    return [
        DagRun(dag_id, state, run_id, *(datetime.fromisoformat(t).replace(tzinfo=UTC) for t in (start, end)))
        for dag_id, state, run_id, start, end in rows
    ]


def asset_events_by_run(home: Path) -> dict[str, int]:
    """How many Asset events each DAG run emitted, by run id."""
    db = sqlite3.connect(home / "airflow.db")
    try:
        return dict(db.execute("SELECT source_run_id, count(*) FROM asset_event GROUP BY 1").fetchall())
    finally:
        db.close()


PLATE = {"observed_at": "2016-10-04T08:05:00Z", "occupied_spots": 1, "total_spots": 9, "plate": "AB12 CDE"}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> SimpleNamespace:
    """One data root through the DAG runs the backfill, retention and replay-bound tests read.

    Staged and published by the jobs the DAGs call (test_each_dag_runs_through_dag_test_on_real_data
    runs them through Airflow); a row lost from the warehouse and a published file damaged; a
    replay whose publish run cannot release; the file repaired; then one batch of the publish run
    that releases what was pending, the retention run (every staged segment past its period, a
    segment landed since not yet staged) and a backfill with a bound that is not a date, which
    fails and so comes last. What a test reads of a state that a later run changes is kept here
    as it was.
    """
    root = tmp_path_factory.mktemp("replayed")
    settings = Settings(data_root=root / "data")
    layout = Layout(settings.data_root)
    home = root / "airflow-home"
    run = SimpleNamespace(settings=settings, layout=layout, home=home)
    run.segments = [
        land(layout, [car_park("p1", "2016-10-04T08:00:00Z", 10)], received_at_ns=1_475_600_000 * 10**9),
        land(layout, [car_park("p1", "2016-10-04T08:00:00Z", 12), car_park("p2", "2016-10-05T08:00:00Z", 3)]),
        # a council with nothing else: its one reading, which carries a number plate, is quarantined
        land(layout, [("city/easttown/parking/e1", PLATE)]),
    ]
    stage_job(settings)
    assert publish_job(settings)["published"] == 2  # testtown 2016-10-04 and 2016-10-05
    con = connect(layout.warehouse)  # a row goes missing from the warehouse; raw still has it
    con.execute("DELETE FROM staged.parking WHERE device_id = 'p2'")
    run.releases_before = con.execute("SELECT * FROM published.releases ORDER BY ALL").fetchall()
    con.close()

    # A fault between the ledger and the release: a published file of another day no longer
    # matches what the ledger recorded of it, so the release cannot be cut (and must not be).
    [csv] = layout.published_dataset("parking").glob("council=testtown/date=2016-10-04/*.csv")
    original = csv.read_bytes()
    run.latest_before = latest_release(layout)
    (csv.parent / "damaged.tmp").write_bytes(original[:-10])
    os.replace(csv.parent / "damaged.tmp", csv)  # a new file: the released copy stays intact

    today = datetime.now(tz=UTC).date()
    conf = {"civicflow_backfill": {"from": str(today - timedelta(days=1)), "to": str(today)}}
    run.replay = run_batch(settings, dag_ids=REPLAY_DAGS, airflow_home=home, conf=conf)
    con = connect(layout.warehouse, read_only=True)
    run.pending_after_replay = pending(con)
    con.close()
    run.latest_after_replay = latest_release(layout)

    (csv.parent / "repaired.tmp").write_bytes(original)
    os.replace(csv.parent / "repaired.tmp", csv)
    run.unstaged = land(layout, [car_park("p3", "2016-10-04T08:00:00Z", 3)], listener="l2")
    with pytest.MonkeyPatch.context() as env:
        for name in ("RAW_SEGMENT_DAYS", "QUARANTINE_PAYLOAD_DAYS"):
            env.setenv(f"CIVICFLOW_RETENTION__{name}", "0")
        run.last = run_batch(
            settings,
            dag_ids=("civicflow_publish", "civicflow_maintenance", "civicflow_backfill"),
            airflow_home=home,
            conf={"civicflow_backfill": {"from": "yesterday!", "to": str(today)}},
        )
    return run


@pytest.mark.integration
def test_backfill_dag_replays_a_range_and_publish_follows(replayed):
    layout = replayed.layout
    assert [(r.dag_id, r.state) for r in replayed.replay.runs] == [
        ("civicflow_backfill", "success"),
        ("civicflow_publish", "failed"),
    ]
    assert "cannot release" in Path(replayed.replay.runs[1].log_path).read_text()
    [waiting] = replayed.pending_after_replay  # recorded, but claimed by no release
    assert (waiting.event_date.isoformat(), waiting.version) == ("2016-10-05", 2)
    assert replayed.latest_after_replay == replayed.latest_before

    # Repaired, the next publish run judges nothing again and releases what was pending.
    assert replayed.last.runs[0].dag_id == "civicflow_publish"
    assert replayed.last.runs[0].state == "success"
    manifest = read_manifest(latest_release(layout))
    assert sorted((p["event_date"], p["version"]) for p in manifest["partitions"]) == [
        ("2016-10-04", 1),
        ("2016-10-05", 2),
    ]
    con = connect(layout.warehouse, read_only=True)
    assert pending(con) == []
    staged = con.execute("SELECT device_id, occupied_spots FROM staged.parking ORDER BY ALL").fetchall()
    assert staged == [("p1", 12), ("p2", 3)]
    releases = "SELECT event_date::VARCHAR, partition_version FROM published.releases ORDER BY ALL"
    assert con.execute(releases).fetchall() == [("2016-10-04", 1), ("2016-10-05", 2)]
    assert [(r[2].isoformat(), r[3]) for r in replayed.releases_before] == [
        ("2016-10-04", 1),
        ("2016-10-05", 1),
    ]
    con.close()


@pytest.mark.integration
def test_a_replay_bound_that_is_not_a_date_fails_the_backfill_without_a_retry(replayed):
    assert [(r.dag_id, r.state) for r in replayed.last.runs][-1] == ("civicflow_backfill", "failed")
    log = Path(replayed.last.runs[-1].log_path).read_text()
    assert "cannot read replay bound 'yesterday!'" in log
    assert log.count("Task failed with exception") == 1  # terminal: no retry


@pytest.mark.integration
def test_maintenance_dag_enforces_retention(replayed):
    layout, home = replayed.layout, replayed.home
    assert [(r.dag_id, r.state) for r in replayed.last.runs][:2] == [
        ("civicflow_publish", "success"),
        ("civicflow_maintenance", "success"),
    ]
    assert task_states(home, "civicflow_maintenance", "enforce_retention") == [(-1, None, "success")]
    assert [p.exists() for p in replayed.segments] == [False, False, False]  # staged, past 0 days
    assert replayed.unstaged.exists()  # a segment not yet staged is never deleted
    con = connect(layout.warehouse, read_only=True)
    rows = con.execute("SELECT reason, detail, payload FROM quarantine.readings").fetchall()
    con.close()
    assert rows == [("unknown_field", "fields not in the parking contract: plate", b"")]
    [quarantined] = layout.zone(Zone.QUARANTINE).rglob("*.parquet")
    assert b"AB12 CDE" not in quarantined.read_bytes()
    assert [r["payload"] for r in pq.read_table(quarantined).to_pylist()] == [b""]
