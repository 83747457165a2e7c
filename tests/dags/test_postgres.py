"""The DAGs under a real scheduler: PostgreSQL metadata database, LocalExecutor, Asset trigger.

Needs a PostgreSQL that accepts connections on 127.0.0.1:5432 as user `postgres` without a password
(trust authentication); skipped, with the reason, where there is none. The test creates a throwaway
database, starts `civicflow airflow` (`airflow standalone`: scheduler, DAG processor, triggerer
and API server) on a free port against it, unpauses the DAGs through the REST API, and waits for
the scheduler to run `civicflow_stage` and, on its `staged.*` Asset events, `civicflow_publish`.
Every process it started is stopped and the database dropped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import closing, suppress

import httpx
import pytest
from factories import car_park, land

from civicflow.app.batch import DAGS_DIR
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
DEADLINE_S = 300  # about 2 minutes on an idle machine; four Airflow processes start at once


def admin_connection():
    import psycopg2

    try:
        con = psycopg2.connect(dbname="postgres", connect_timeout=3, **PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL accepting trust connections for postgres@127.0.0.1:5432: {exc}".strip())
    con.autocommit = True
    return con


@pytest.fixture
def database():
    name = f"civicflow_test_{uuid.uuid4().hex[:12]}"
    with closing(admin_connection()) as con, con.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with closing(admin_connection()) as con, con.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Stop `civicflow airflow` and everything it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # components that outlived standalone
    proc.wait(timeout=10)


def wait_for(what: str, check, log_path, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        time.sleep(1)
    tail = log_path.read_text(errors="replace")[-6000:]
    raise AssertionError(f"timed out waiting for {what}; end of the Airflow log:\n{tail}")


def test_scheduler_runs_stage_then_publish_on_the_asset_with_localexecutor(tmp_path, database):
    import psycopg2

    data_root, home, port = tmp_path / "data", tmp_path / "airflow-home", free_port()
    layout = Layout(data_root)
    land(layout, [car_park("p1", "2016-10-04T08:00:00Z", 10), car_park("p2", "2016-10-04T08:05:00Z", 20)])
    land(layout, [car_park("p1", "2016-10-05T08:00:00Z", 11), car_park("p1", "2016-10-04T08:00:00Z", 10)])
    conn = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"
    env = os.environ | {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__WORKERS": "1",
        # The DAG processor parses the DAG files when it starts; parsing them again every 30 s
        # (the default) while the runs happen would only compete with them for the CPU.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
        "CIVICFLOW_DATA_ROOT": str(data_root),
    }
    log_path = tmp_path / "airflow.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "civicflow.app.cli",
                "airflow",
                "--port",
                str(port),
                "--airflow-home",
                str(home),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy():
            try:
                response = httpx.get(f"{base}/api/v2/monitor/health", timeout=2)
            except httpx.HTTPError:
                return None
            return True if response.status_code == 200 else None

        wait_for("the API server", healthy, log_path, DEADLINE_S / 2)
        # The admin password is where docs/airflow.md says: a file in the Airflow home.
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        token = httpx.post(
            f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=10
        ).json()["access_token"]
        api = httpx.Client(
            base_url=f"{base}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

        def dags_parsed():
            found = {d["dag_id"] for d in api.get("/dags", params={"tags": "civicflow"}).json()["dags"]}
            return found if {"civicflow_stage", "civicflow_publish", "civicflow_backfill"} <= found else None

        wait_for("the DAG processor to register the DAGs", dags_parsed, log_path, 60)
        assert api.get("/dags/civicflow_stage/details").json()["fileloc"].startswith(str(DAGS_DIR))
        # Unpausing an hourly DAG with catchup=False makes the scheduler run its last hour now.
        for dag_id in ("civicflow_publish", "civicflow_stage"):
            assert api.patch(f"/dags/{dag_id}", json={"is_paused": False}).status_code == 200

        def runs():
            with closing(psycopg2.connect(dbname=database, **PG)) as con, con.cursor() as cur:
                cur.execute("SELECT dag_id, run_type, state FROM dag_run ORDER BY id")
                rows = cur.fetchall()
            if any(state == "failed" for _, _, state in rows):
                raise AssertionError(f"a DAG run failed: {rows}\n{log_path.read_text()[-6000:]}")
            done = {(dag_id, run_type) for dag_id, run_type, state in rows if state == "success"}
            wanted = {("civicflow_stage", "scheduled"), ("civicflow_publish", "asset_triggered")}
            return rows if wanted <= done else None

        remaining = DEADLINE_S - (time.monotonic() - started)
        rows = wait_for("stage, then publish on its Asset event", runs, log_path, remaining)
        assert [r[:2] for r in rows] == [
            ("civicflow_stage", "scheduled"),
            ("civicflow_publish", "asset_triggered"),
        ]
        api.close()
    finally:
        stop(proc)

    con = connect(layout.warehouse, read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM raw.segments").fetchone() == (2,)
        staged = con.execute("SELECT device_id, observed_at::VARCHAR FROM staged.parking ORDER BY ALL")
        assert staged.fetchall() == [
            ("p1", "2016-10-04 08:00:00+00"),
            ("p1", "2016-10-05 08:00:00+00"),
            ("p2", "2016-10-04 08:05:00+00"),
        ]
        releases = con.execute("SELECT event_date::VARCHAR, rows FROM published.releases ORDER BY ALL")
        assert releases.fetchall() == [("2016-10-04", 2), ("2016-10-05", 1)]
    finally:
        con.close()
