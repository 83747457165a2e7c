"""`civicflow status`: listeners, the gate's state per dataset and council, and what to do next."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from factories import LIMITS, car_park, land

from civicflow.app.status import pipeline_status
from civicflow.jobs.publication import gate_and_publish
from civicflow.settings import Settings
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def gated(tmp_path) -> Settings:
    """testtown: 2016-10-04 published; 2026-11-23 published but p1's readings (one from the future).
    york: 2016-10-01 to 03 published, 2016-10-04 held back whole (a collapse in volume). leeds: passed."""
    layout = Layout(tmp_path / "data")
    con = connect(layout.warehouse)
    york = [
        car_park("y1", f"2016-10-0{day}T{hour:02d}:00:00Z", hour, council="york")
        for day in (1, 2, 3)
        for hour in range(8, 16)
    ]
    land(
        layout,
        [
            car_park("p1", "2016-10-04T08:00:00Z", 10),
            car_park("p1", "2016-10-04T08:30:00Z", 12),
            car_park("p1", "2026-11-23T11:00:00Z", 9),
            car_park("p1", "2026-11-23T13:00:00Z", 10),
            car_park("p2", "2026-11-23T11:00:00Z", 30),
            car_park("l1", "2016-10-04T08:00:00Z", 3, council="leeds"),
            *york,
            car_park("y1", "2016-10-04T08:00:00Z", 8, council="york"),
        ],
    )
    stage_segments(layout, con, LIMITS)
    result = gate_and_publish(layout, con, now=NOW)
    assert [(h["council"], h["date"], h["failed"]) for h in result.held_back] == [
        ("york", "2016-10-04", ["volume"])
    ]
    assert [(h["council"], h["date"], h["device_id"]) for h in result.devices_held] == [
        ("testtown", "2026-11-23", "p1")
    ]
    # p1's day is held back, p2's reading that day is published.
    assert con.execute(
        "SELECT device_id, observed_at::DATE::VARCHAR FROM published.parking "
        "WHERE council = 'testtown' ORDER BY ALL"
    ).fetchall() == [("p1", "2016-10-04"), ("p1", "2016-10-04"), ("p2", "2026-11-23")]
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
    assert sorted(states) == [("parking", "leeds"), ("parking", "testtown"), ("parking", "york")]
    town = states[("parking", "testtown")]
    assert (town["gate"], town["partitions_published"], town["rows_published"]) == ("devices held", 2, 3)
    assert town["held_back"] == ["2026-11-23 p1 (no_future)"]
    york = states[("parking", "york")]
    assert (york["gate"], york["partitions_published"], york["rows_published"]) == ("held back", 3, 24)
    assert york["held_back"] == ["2016-10-04 (volume)"]
    assert states[("parking", "leeds")]["gate"] in ("passed", "warnings")
    assert states[("parking", "leeds")]["held_back"] == []
    assert report.release["release"].startswith("000001-")
    # held back is for review, not a fault; a listener that is not running is
    assert report.review == [
        "parking testtown: held back 2026-11-23 p1 (no_future): civicflow release list shows "
        "why, civicflow release approve [--device ID] publishes it anyway",
        "parking york: held back 2016-10-04 (volume): civicflow release list shows "
        "why, civicflow release approve [--device ID] publishes it anyway",
    ]
    [problem] = report.problems
    assert problem.startswith("listener gone-listener: not running (last state 'subscribed'")


def test_status_screen_and_json_exit_1_on_a_problem(gated):
    env = os.environ | {"CIVICFLOW_DATA_ROOT": str(gated.data_root)}
    env.pop("CIVICFLOW_MQTT__HOST", None)
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    screen = subprocess.run(
        [sys.executable, "-m", "civicflow.app.cli", "status"],
        env={k: v for k, v in env.items() if k != "COLUMNS"},  # a pipe: full width, not 80 columns
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
        "devices held",
        "2026-11-23 p1 (no_future)",
        "held back",
        "2016-10-04 (volume)",
        "review: parking testtown",
        "review: parking york",
    ):
        assert expected in out, (expected, out)
    as_json = subprocess.run(
        [sys.executable, "-m", "civicflow.app.cli", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    assert (doc["healthy"], len(doc["problems"]), len(doc["datasets"])) == (False, 1, 3)
    assert [r["client_id"] for r in doc["listeners"]] == ["gone-listener"]


def test_an_empty_data_root_says_no_listener_has_run_and_how_to_start_one(tmp_path):
    report = pipeline_status(Settings(data_root=tmp_path / "nothing"), probe=False)
    assert (report.listeners, report.airflow, report.datasets, report.release) == ([], [], [], None)
    assert report.problems == [
        f"no listener has run under {(tmp_path / 'nothing' / 'raw').resolve()}: start one with civicflow "
        "listen (or set CIVICFLOW_DATA_ROOT to where it lands)"
    ]
    assert not report.healthy


def test_batch_summary_counts_and_lists_held_back_days_and_devices_days(gated):
    from rich.console import Console

    from civicflow.app.summary import DOMAINS, print_summary, summary_document, warehouse_summary

    s = warehouse_summary(gated)
    parking = s.domains["parking"]
    assert (parking.days_held, parking.device_days_held) == (1, 1)
    assert [(h.council, h.event_date.isoformat(), h.device_id, h.rules) for h in s.held_back] == [
        ("testtown", "2026-11-23", "p1", ["no_future"]),
        ("york", "2016-10-04", None, ["volume"]),
    ]
    # testtown 2016-10-04 and 2026-11-23 (p2 only), leeds 2016-10-04, york 2016-10-01 to 03.
    assert (s.published_partitions, s.published_rows) == (6, 28)
    console = Console(record=True, width=200)
    print_summary(console, s, sources={"traffic": ("synthetic", "counters [a-z]+ from a [bold]generator")})
    out = console.export_text()
    assert "traffic data (synthetic): counters [a-z]+ from a [bold]generator" in out
    assert "held back parking testtown 2026-11-23 v1: devices p1 (no_future, 2 rows)" in out
    assert "held back parking york 2016-10-04 v1: whole day (volume, 1 row)" in out
    # The first held day's Data Docs page, and how many more `civicflow release list` names.
    assert out.count("Data Docs: ") == 1 and "(and 1 more: civicflow release list)" in out
    assert "[--device ID]" in out

    def cells(label: str) -> dict[str, str]:
        [line] = [line for line in out.splitlines() if line.strip().startswith(label)]
        return dict(zip([*DOMAINS, "total"], line.split()[-len(DOMAINS) - 1 :], strict=True))

    assert cells("days held back") == dict.fromkeys(DOMAINS, "0") | {"parking": "1", "total": "1"}
    assert cells("devices' days held back") == dict.fromkeys(DOMAINS, "0") | {"parking": "1", "total": "1"}

    doc = json.loads(json.dumps(summary_document(s)))  # what civicflow batch --json prints
    assert (doc["published_partitions"], doc["published_rows"]) == (6, 28)
    assert (doc["domains"]["parking"]["days_held"], doc["domains"]["parking"]["device_days_held"]) == (1, 1)
    assert [(h["council"], h["event_date"], h["device_id"], h["rules"]) for h in doc["held_back"]] == [
        ("testtown", "2026-11-23", "p1", ["no_future"]),
        ("york", "2016-10-04", None, ["volume"]),
    ]
    assert all(h["data_docs"].startswith(str(gated.data_root)) for h in doc["held_back"])
