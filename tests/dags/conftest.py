"""Fixtures of the DAG tests.

Each test's Airflow home starts empty: the first `civicflow batch` run in it creates its SQLite
metadata database from Airflow's models and stamps it as migrated. That costs no more than the
check every run makes of a database migrated before (about 4 s of CPU either way, measured on 2
cores), so the tests neither migrate one in advance nor share one.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def airflow_home(tmp_path) -> Path:
    home = tmp_path / "airflow-home"
    home.mkdir()
    return home
