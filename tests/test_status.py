"""`civicflow status`: listeners, the gate's state per dataset and council, and what to do next."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from factories import LIMITS, car_park, land

from app.status import pipeline_status
from civicflow.settings import Settings
from expectations.release import gate_and_publish
from transforms.stage import stage_segments
from warehouse.db import connect
from warehouse.layout import Layout

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def gated(tmp_path) -> Settings:
    """testtown: 2016-10-04 published; 2026-11-23 held back (a reading from the future). leeds: passed."""
    layout = Layout(tmp_path / "data")
    con = connect(layout.warehouse)
    land(
        layout,
        [
            car_park("p1", "2016-10-04T08:00:00Z", 10),
            car_park("p1", "2016-10-04T08:30:00Z", 12),
            car_park("p1", "2026-11-23T13:00:00Z", 10),
            car_park("l1", "2016-10-04T08:00:00Z", 3, council="leeds"),
        ],
    )
    stage_segments(layout, con, LIMITS)
    gate_and_publish(layout, con, now=NOW)
    con.close()
    status = layout.raw / "gone-listener" / "status.json"
    status.parent.mkdir(parents=True)
    status.write_text(
        json.dumps(
            {
                "client_id": "gone-listener",
                "pid": 2**22 + 7,
                "state": "subscribed",
                "healthy": True,
                "updated_at": 0,
                "received": 4,
                "acked": 4,
            }
        )
    )
    return Settings(data_root=layout.root)


def test_gate_state_per_dataset_and_council(gated):
    report = pipeline_status(gated, probe=False)
    states = {(d["dataset"], d["council"]): d for d in report.datasets}
    assert sorted(states) == [("parking", "leeds"), ("parking", "testtown")]
    town = states[("parking", "testtown")]
    assert (town["gate"], town["partitions_published"], town["rows_published"]) == ("held back", 1, 2)
    assert town["held_back"] == ["2026-11-23 (no_future)"]
    assert states[("parking", "leeds")]["gate"] in ("passed", "warnings")
    assert states[("parking", "leeds")]["held_back"] == []
    assert report.release["release"].startswith("000001-")
    # held back is for review, not a fault; a listener that is not running is
    assert report.review == [
        "parking testtown: held back 2026-11-23 (no_future): civicflow release list shows "
        "why, civicflow release approve publishes it anyway"
    ]
    [problem] = report.problems
    assert problem.startswith("listener gone-listener: not running (last state 'subscribed'")


def test_status_screen_and_json_exit_1_on_a_problem(gated):
    env = os.environ | {"CIVICFLOW_DATA_ROOT": str(gated.data_root)}
    env.pop("CIVICFLOW_MQTT__HOST", None)
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    screen = subprocess.run(
        [sys.executable, "-m", "app.cli", "status"],
        env=env | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert screen.returncode == 1, screen.stderr
    out = screen.stdout
    for expected in (
        "1 problem(s)",
        "broker: not checked",
        "gone-listener",
        "Airflow: no Civicflow DAG run found",
        "Datasets (quality gate)",
        "held back",
        "2026-11-23 (no_future)",
        "review: parking testtown",
    ):
        assert expected in out, (expected, out)
    as_json = subprocess.run(
        [sys.executable, "-m", "app.cli", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    assert (doc["healthy"], len(doc["problems"]), len(doc["datasets"])) == (False, 1, 2)
    assert [r["client_id"] for r in doc["listeners"]] == ["gone-listener"]


def test_an_empty_data_root_says_no_listener_has_run_and_how_to_start_one(tmp_path):
    report = pipeline_status(Settings(data_root=tmp_path / "nothing"), probe=False)
    assert (report.listeners, report.airflow, report.datasets, report.release) == ([], [], [], None)
    assert report.problems == [
        f"no listener has run under {(tmp_path / 'nothing' / 'raw').resolve()}: start one with civicflow "
        "listen (or set CIVICFLOW_DATA_ROOT to where it lands)"
    ]
    assert not report.healthy
