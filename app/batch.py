"""Running Airflow for Civicflow: `civicflow batch`, `replay`, `demo` and `airflow`.

All of them share one Airflow home, `<data_root>/airflow` (config, logs and, by default, the SQLite
metadata database), so the UI of `civicflow airflow` shows the runs the other commands made.

`civicflow batch` (and `replay` and `demo`) run the project's DAGs once, without a scheduler.
Airflow reads its configuration when it is first imported, so the DAG runs happen in a child
process with its own environment: `AIRFLOW_HOME`, the project's `dags/` as the DAGs folder, and no
example DAGs. The child migrates the metadata database, registers the DAGs (`dag.test()` only runs
serialized DAGs) and runs each with `dag.test()`, in order, with its run configuration (the
backfill's `from` and `to`); Airflow's own log goes to a file, not the terminal. Nothing listens on
a port.

`civicflow airflow` runs Airflow's components on the same DAGs until Ctrl-C: API server (UI, REST
API, Task Execution API), scheduler, DAG processor and triggerer, as `airflow standalone` would, but
with the API server on 127.0.0.1 unless told otherwise and without the log servers that the scheduler
and triggerer start by default. Those serve task logs to an API server on another machine and listen
on every interface, with no setting for their address in Airflow 3.3; here the API server reads the
same log files from the shared home (docs/airflow.md).

This module and `dags/` are the only places that import Airflow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from civicflow.resources import resource_dir
from civicflow.settings import Settings

DAGS_DIR = resource_dir("dags")
AIRFLOW_HOME_DIR = "airflow"
"""The Airflow home under the data root, shared by every command that runs Airflow."""
LOCAL_HOST = "127.0.0.1"
BATCH_DAGS = ("civicflow_stage", "civicflow_publish")
REPLAY_DAGS = ("civicflow_backfill", "civicflow_publish")


@dataclass(frozen=True)
class DagRunOutcome:
    dag_id: str
    state: str
    seconds: float
    log_path: str
    error: str | None = None


@dataclass
class BatchOutcome:
    runs: list[DagRunOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.state == "success" for r in self.runs)


def default_airflow_home(settings: Settings) -> Path:
    """`<data_root>/airflow`: the home of `civicflow batch`, `replay`, `demo` and `airflow` alike."""
    return (settings.data_root / AIRFLOW_HOME_DIR).resolve()


def airflow_env(settings: Settings, airflow_home: Path) -> dict[str, str]:
    """The environment a throwaway, scheduler-less Airflow needs to run the project's DAGs."""
    return os.environ | {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "CIVICFLOW_DATA_ROOT": str(settings.data_root.resolve()),
    }


def run_batch(
    settings: Settings,
    *,
    dag_ids: tuple[str, ...] = BATCH_DAGS,
    airflow_home: Path | None = None,
    timeout_s: float = 1800,
    conf: dict[str, dict] | None = None,
    on_progress: Callable[[str, float], None] | None = None,
) -> BatchOutcome:
    """Run `dag_ids` once each, in order, and report each DagRun's final state.

    `conf` maps a DAG id to its run configuration (its params), e.g. the backfill's `from`/`to`.
    `on_progress(dag_id, seconds)` is called about twice a second with the DAG being run and how
    long it has run so far, for a progress display.
    """
    airflow_home = (airflow_home or default_airflow_home(settings)).resolve()
    airflow_home.mkdir(parents=True, exist_ok=True)
    log_path = airflow_home / "logs" / f"batch-{datetime.now(tz=UTC):%Y%m%dT%H%M%SZ}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_path = log_path.with_suffix(".json")
    progress_path = log_path.with_suffix(".progress")
    deadline = time.monotonic() + timeout_s
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "civicflow.app.batch", str(result_path), json.dumps(conf or {}), *dag_ids],
            env=airflow_env(settings, airflow_home),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            while True:
                try:
                    proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        raise
                if on_progress is not None and (current := _current_dag(progress_path)):
                    on_progress(*current)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if not result_path.exists():
        return BatchOutcome(
            [
                DagRunOutcome(
                    dag_ids[0],
                    f"crashed (exit {proc.returncode})",
                    0.0,
                    str(log_path),
                    error=f"the Airflow runner exited {proc.returncode}; see {log_path}",
                )
            ]
        )
    runs = [DagRunOutcome(**r, log_path=str(log_path)) for r in json.loads(result_path.read_text())]
    return BatchOutcome(runs)


def _current_dag(progress_path: Path) -> tuple[str, float] | None:
    """The DAG the child runs now and for how long: the last `<dag_id> <start time>` line it wrote."""
    try:
        lines = progress_path.read_text().split()
    except OSError:
        return None
    if len(lines) < 2:
        return None
    return lines[-2], time.time() - float(lines[-1])


COMPONENTS = (
    ("api-server",),
    ("scheduler", "--skip-serve-logs"),
    ("dag-processor",),
    ("triggerer", "--skip-serve-logs"),
)
"""What `civicflow airflow` runs: `airflow standalone`'s components, without the log servers."""


def client_host(host: str) -> str:
    """How a client on this machine reaches a server listening on `host`."""
    if host in ("", "0.0.0.0"):
        return LOCAL_HOST
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def standalone_env(
    settings: Settings, airflow_home: Path, port: int | None = None, host: str = LOCAL_HOST
) -> dict[str, str]:
    """The environment Airflow's components need to schedule the project's DAGs on one machine.

    The API server listens on `host` (`AIRFLOW__API__HOST`), and so would the scheduler's health
    check if it were turned on; task processes reach the API server at that address. The metadata
    database is whatever `AIRFLOW__DATABASE__SQL_ALCHEMY_CONN` says, by default SQLite in
    `airflow_home`; the components run as `airflow ...`, so the virtualenv's `bin/` goes first on
    PATH.
    """
    port = port or int(os.environ.get("AIRFLOW__API__PORT", "8080"))
    return os.environ | {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{client_host(host)}:{port}/execution/",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": host,
        "CIVICFLOW_DATA_ROOT": str(settings.data_root.resolve()),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def run_standalone(
    settings: Settings,
    *,
    airflow_home: Path | None = None,
    port: int | None = None,
    host: str = LOCAL_HOST,
) -> int:
    """Run Airflow's components in the foreground until Ctrl-C or SIGTERM (exit code 0) or until one
    of them exits (its exit code, and the others are stopped).

    The metadata database is migrated first (`airflow db migrate`). The API server generates the
    admin password on its first start, into `<airflow_home>/simple_auth_manager_passwords.json.generated`.
    """
    airflow_home = (airflow_home or default_airflow_home(settings)).resolve()
    airflow_home.mkdir(parents=True, exist_ok=True)
    env = standalone_env(settings, airflow_home, port, host)
    airflow = str(Path(sys.executable).parent / "airflow")
    try:
        migrated = subprocess.run([airflow, "db", "migrate"], env=env, check=False)
    except KeyboardInterrupt:
        return 130
    if migrated.returncode != 0:
        return migrated.returncode
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    procs = {command[0]: subprocess.Popen([airflow, *command], env=env) for command in COMPONENTS}
    exited: tuple[str, int] | None = None
    try:
        while not stop.wait(0.5):
            exited = next(((n, p.returncode) for n, p in procs.items() if p.poll() is not None), None)
            if exited:
                print(
                    f"airflow {exited[0]} exited with code {exited[1]}; stopping the others", file=sys.stderr
                )
                break
    except KeyboardInterrupt:  # Ctrl-C: the components got the same SIGINT and are shutting down
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return (exited[1] or 1) if exited else 0


def _run_in_airflow(result_path: Path, dag_ids: list[str], conf: dict[str, dict] | None = None) -> int:
    """Child-process side: migrate, register the DAGs, `dag.test()` each; write the outcome."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import upgradedb

    upgradedb()
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    results = []
    progress_path = result_path.with_suffix(".progress")
    for dag_id in dag_ids:
        with progress_path.open("a") as progress:
            progress.write(f"{dag_id} {time.time()}\n")
        started = time.monotonic()
        error = None
        try:
            run = bag.dags[dag_id].test(run_conf=(conf or {}).get(dag_id))
            state = str(run.state) if run is not None else "unknown"
        except Exception as exc:  # noqa: BLE001 - reported to the caller with the log path
            state, error = "failed", f"{type(exc).__name__}: {exc}"
        results.append(
            {
                "dag_id": dag_id,
                "state": state,
                "error": error,
                "seconds": round(time.monotonic() - started, 2),
            }
        )
        if state != "success":
            break
    result_path.write_text(json.dumps(results))
    return 0 if all(r["state"] == "success" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(_run_in_airflow(Path(sys.argv[1]), sys.argv[3:], json.loads(sys.argv[2])))
