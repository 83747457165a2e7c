"""Running Airflow for Civicflow: `civicflow batch`, `civicflow replay` and `civicflow airflow`.

`civicflow batch` (and `replay`) run the project's DAGs once, without a scheduler. Airflow reads its
configuration when it is first imported, so the DAG runs happen in a child process with its own
environment: `AIRFLOW_HOME` (default `<data_root>/airflow`, with a SQLite metadata database), the
project's `dags/` as the DAGs folder, and no example DAGs. The child migrates the metadata
database, registers the DAGs (`dag.test()` only runs serialized DAGs) and runs each with
`dag.test()`, in order, with its run configuration (the backfill's `from` and `to`); Airflow's own
log goes to a file, not the terminal.

`civicflow airflow` runs `airflow standalone` (scheduler, DAG processor, triggerer and API server)
on the same DAGs, with its own home under the data root (docs/airflow.md).

This module and `dags/` are the only places that import Airflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from civicflow.settings import Settings

DAGS_DIR = Path(__file__).resolve().parent.parent / "dags"
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
    airflow_home = (airflow_home or settings.data_root / "airflow").resolve()
    airflow_home.mkdir(parents=True, exist_ok=True)
    log_path = airflow_home / "logs" / f"batch-{datetime.now(tz=UTC):%Y%m%dT%H%M%SZ}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_path = log_path.with_suffix(".json")
    progress_path = log_path.with_suffix(".progress")
    deadline = time.monotonic() + timeout_s
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.batch", str(result_path), json.dumps(conf or {}), *dag_ids],
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


def standalone_env(settings: Settings, airflow_home: Path, port: int | None = None) -> dict[str, str]:
    """The environment `airflow standalone` needs to schedule the project's DAGs.

    The metadata database is whatever `AIRFLOW__DATABASE__SQL_ALCHEMY_CONN` says, by default SQLite
    in `airflow_home`; standalone starts its components as `airflow ...`, so the virtualenv's
    `bin/` goes first on PATH.
    """
    env = os.environ | {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "CIVICFLOW_DATA_ROOT": str(settings.data_root.resolve()),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    if port is not None:
        env["AIRFLOW__API__PORT"] = str(port)
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://localhost:{port}/execution/"
    return env


def run_standalone(settings: Settings, *, airflow_home: Path | None = None, port: int | None = None) -> int:
    """Run `airflow standalone` in the foreground until it is interrupted; return its exit code."""
    airflow_home = (airflow_home or settings.data_root / "airflow-standalone").resolve()
    airflow_home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "airflow"), "standalone"],
        env=standalone_env(settings, airflow_home, port),
    )
    try:
        return proc.wait()
    except KeyboardInterrupt:  # standalone got the same SIGINT and shuts its components down
        return proc.wait()


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
