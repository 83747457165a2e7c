"""One migrated Airflow metadata database per test session, copied into each test's Airflow home.

Migrating a new SQLite metadata database takes tens of seconds; copying a migrated one takes
milliseconds, and the batch runner's own migration then finds nothing to do. Under `make test`
(pytest-xdist) the workers share one: the first to need it migrates it under the session's
temporary root while holding a lock, the others wait for it and copy it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from app.batch import run_batch
from civicflow.settings import Settings


def _migrate(home: Path) -> Path:
    run_batch(Settings(data_root=home / "data"), dag_ids=(), airflow_home=home)
    db = home / "airflow.db"
    assert db.is_file(), f"the batch runner did not migrate a metadata database; see {home / 'logs'}"
    return db


@pytest.fixture(scope="session")
def migrated_airflow_db(tmp_path_factory) -> Path:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _migrate(tmp_path_factory.mktemp("airflow-migrated"))
    # pytest-N/ holds every worker's temporary directory of this session, and only this session's.
    shared = tmp_path_factory.getbasetemp().parent / "airflow-migrated"
    shared.mkdir(exist_ok=True)
    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or if the worker dies
        if not (shared / "done").is_file():
            _migrate(shared)
            (shared / "done").touch()
    return shared / "airflow.db"


@pytest.fixture(scope="session")
def airflow_home_for(migrated_airflow_db) -> Callable[[Path], Path]:
    """Give an Airflow home (created if needed) a copy of the migrated metadata database."""

    def prepare(home: Path) -> Path:
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_airflow_db, home / "airflow.db")
        return home

    return prepare


@pytest.fixture
def airflow_home(tmp_path, airflow_home_for) -> Path:
    return airflow_home_for(tmp_path / "airflow-home")
