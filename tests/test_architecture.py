"""The package layers and the frameworks' homes hold: the import contracts in pyproject.toml.

`lint-imports` (import-linter) checks them: app -> dags -> jobs -> portal -> ingest | transforms |
expectations -> warehouse -> civicflow, app never importing dags, and each framework imported only
by its adapter. A broken contract is fixed in the code, never with an exemption.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
NOT_CHECKED = {"bench"}  # benchmarks drive every stage, like tests
HOMES = {
    "airflow": {"dags", "app.batch"},
    "paho": {"ingest"},
    "amqtt": {"ingest"},
    "great_expectations": {"expectations"},
    "fastapi": {"portal"},
    "starlette": {"portal"},
    "jinja2": {"portal"},
    "uvicorn": {"app.serve_cli"},
}


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_package_is_in_the_contracts():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - NOT_CHECKED
    assert sorted(CONFIG["root_packages"]) == sorted(packages)


def test_each_framework_contract_names_every_module_but_the_frameworks_home():
    """A forbidden contract lists its sources, so a new app module must be added to it: this says so."""
    app_modules = {f"app.{p.stem}" for p in (ROOT / "app").glob("*.py") if p.stem != "__init__"}
    contracts = {
        lib: c for c in CONFIG["contracts"] if c["type"] == "forbidden" for lib in c["forbidden_modules"]
    }
    assert set(HOMES) <= set(contracts)
    for lib, homes in HOMES.items():
        expected = set(CONFIG["root_packages"]) - homes
        if any(home.startswith("app.") for home in homes):
            expected = (expected - {"app"}) | (app_modules - homes)
        assert sorted(contracts[lib]["source_modules"]) == sorted(expected), contracts[lib]["name"]
