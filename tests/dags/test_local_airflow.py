"""`civicflow batch` and `civicflow airflow` on one machine: one Airflow home, 127.0.0.1 only.

The integration tests share one `civicflow batch` run of `civicflow_stage` (as `civicflow batch`
and `make demo` run it) on a data root whose warehouse file is not a DuckDB database: the batch
fails and says where to look, and `civicflow status` says which task failed. Then `civicflow
airflow` starts on the same data root with its SQLite metadata database, and the test checks that
its API lists that run, that every socket its processes listen on is on 127.0.0.1, and that a
SIGTERM to `civicflow airflow` alone stops every component it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import httpx
import psutil
import pytest
from factories import car_park, land

from civicflow.app.batch import (
    COMPONENTS,
    BatchOutcome,
    client_host,
    default_airflow_home,
    run_batch,
    standalone_env,
)
from civicflow.app.status import airflow_databases, pipeline_status
from civicflow.settings import Settings
from civicflow.warehouse.layout import Layout

DEADLINE_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.unit
def test_batch_airflow_and_status_share_one_home_under_the_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", raising=False)
    settings = Settings(data_root=tmp_path / "data")
    home = default_airflow_home(settings)
    assert home == (tmp_path / "data" / "airflow").resolve()
    assert airflow_databases(settings) == []
    home.mkdir(parents=True)
    (home / "airflow.db").touch()
    assert airflow_databases(settings) == [f"sqlite:///{home / 'airflow.db'}"]


@pytest.mark.unit
def test_airflow_listens_on_loopback_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRFLOW__API__PORT", raising=False)
    settings = Settings(data_root=tmp_path / "data")
    env = standalone_env(settings, tmp_path / "home")
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8080/execution/"
    env = standalone_env(settings, tmp_path / "home", port=8081, host="0.0.0.0")
    assert env["AIRFLOW__API__HOST"] == "0.0.0.0"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8081/execution/"
    assert [client_host(h) for h in ("::", "::1", "10.0.0.5")] == ["[::1]", "[::1]", "10.0.0.5"]
    # The log servers listen on every interface and have no address setting: they are not started.
    assert {c[0]: "--skip-serve-logs" in c for c in COMPONENTS} == {
        "api-server": False,
        "scheduler": True,
        "dag-processor": False,
        "triggerer": True,
    }


def listening(pid: int) -> list[tuple[str, int]]:
    """The addresses the process and its descendants listen on (TCP)."""
    found = []
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess):
            found += [c.laddr for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    return sorted((addr.ip, addr.port) for addr in found)


def in_session(sid: int) -> list[int]:
    """Processes still alive in the session `civicflow airflow` was started in."""
    alive = []
    for proc in psutil.process_iter():
        with suppress(psutil.NoSuchProcess, ProcessLookupError):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
    return alive


@pytest.fixture(scope="module")
def failed_batch(tmp_path_factory) -> tuple[Settings, BatchOutcome]:
    """A `civicflow batch` run of civicflow_stage on a data root whose warehouse file is not a
    DuckDB database, in the default Airflow home under the data root."""
    settings = Settings(data_root=tmp_path_factory.mktemp("failed-batch") / "data")
    layout = Layout(settings.data_root)
    layout.warehouse.parent.mkdir(parents=True)
    layout.warehouse.write_bytes(b"this is not a DuckDB file")
    land(layout, [car_park("p1", "2016-10-04T08:00:00Z", 1)])
    return settings, run_batch(settings, dag_ids=("civicflow_stage",))  # the default home


@pytest.mark.integration
def test_a_failing_task_fails_the_batch_and_says_where_to_look(failed_batch):
    settings, outcome = failed_batch
    assert not outcome.ok
    [run] = outcome.runs
    assert run.state == "failed"
    log = Path(run.log_path).read_text()
    assert "not a valid DuckDB database" in log and "Restore it from a backup" in log
    assert log.count("Task failed with exception") == 1  # terminal: no retry

    # civicflow status reads the run from Airflow's metadata database and says which task failed
    report = pipeline_status(settings, probe=False)
    [seen] = report.airflow
    assert (seen["dag_id"], seen["state"], seen["failed_tasks"], seen["last_success"]) == (
        "civicflow_stage",
        "failed",
        ["merge"],  # the decode task needs no warehouse; the merge opens it
        None,
    )
    assert seen["seconds"] is not None and seen["seconds"] >= 0
    assert [p for p in report.problems if p.startswith("DAG civicflow_stage")] == [
        f"DAG civicflow_stage: last run {seen['run_id']} failed in merge; see its task log "
        f"(airflow tasks states-for-dag-run civicflow_stage {seen['run_id']})"
    ]


@pytest.mark.integration
def test_the_ui_shows_the_batch_runs_and_airflow_listens_on_loopback_only(tmp_path, failed_batch):
    settings, outcome = failed_batch
    data_root = settings.data_root
    assert [r.state for r in outcome.runs] == ["failed"]

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")} | {
        "CIVICFLOW_DATA_ROOT": str(data_root),
        "AIRFLOW__API__WORKERS": "1",
    }
    log_path = tmp_path / "airflow.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "civicflow.app.cli", "airflow", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + DEADLINE_S
        while True:
            with suppress(httpx.HTTPError):
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-6000:]
            assert proc.poll() is None, log_path.read_text(errors="replace")[-6000:]
            time.sleep(1)
        home = data_root / "airflow"
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        token = httpx.post(
            f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=10
        ).json()["access_token"]
        runs = httpx.get(
            f"{base}/api/v2/dags/civicflow_stage/dagRuns",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).json()["dag_runs"]
        assert [r["state"] for r in runs] == ["failed"]  # the batch run above
        time.sleep(5)  # the scheduler and triggerer are up by now: a log server would be listening
        sockets = listening(proc.pid)
        assert ("127.0.0.1", port) in sockets
        assert {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets
    finally:
        proc.send_signal(signal.SIGTERM)  # to `civicflow airflow` alone: it stops its components
        try:
            code = proc.wait(timeout=120)
        finally:
            leftover = in_session(proc.pid)
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == 0, log_path.read_text(errors="replace")[-6000:]
    assert leftover == []
