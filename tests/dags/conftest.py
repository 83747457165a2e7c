"""One migrated Airflow metadata database per test session, copied into each test's Airflow home.

Migrating a new SQLite metadata database takes tens of seconds; copying a migrated one takes
milliseconds, and the batch runner's own migration then finds nothing to do.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from app.batch import run_batch
from civicflow.settings import Settings


@pytest.fixture(scope="session")
def migrated_airflow_db(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("airflow-migrated")
    run_batch(Settings(data_root=home / "data"), dag_ids=(), airflow_home=home)
    db = home / "airflow.db"
    assert db.is_file(), f"the batch runner did not migrate a metadata database; see {home / 'logs'}"
    return db


@pytest.fixture
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
