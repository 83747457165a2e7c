"""Dependencies point one way: dags -> ingest | transforms | expectations | portal -> warehouse -> core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
STAGES = {"ingest", "transforms", "expectations", "portal", "warehouse", "civicflow"}
ALLOWED = {
    "warehouse": {"civicflow"},
    "ingest": {"civicflow", "warehouse"},
    "transforms": {"civicflow", "warehouse"},
    "expectations": {"civicflow", "warehouse"},
    "portal": {"civicflow", "warehouse"},
    "civicflow": set(),
}
# Entry points: they read settings and wire stages together, importing them inside functions.
ENTRY_POINTS = {
    "civicflow/cli.py",
    "civicflow/jobs.py",
    "civicflow/batch.py",
    "civicflow/demo.py",
    "civicflow/summary.py",
    "civicflow/release_cli.py",
    "civicflow/serve_cli.py",
    "civicflow/status.py",
}
THIRD_PARTY_HOMES = {
    "airflow": {"dags", "civicflow/batch.py"},
    "paho": {"ingest"},
    "amqtt": {"ingest"},
    "great_expectations": {"expectations"},
    "fastapi": {"portal"},
    "starlette": {"portal"},
    "jinja2": {"portal"},
    "uvicorn": {"civicflow/serve_cli.py"},
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def sources() -> list[Path]:
    return [p for d in [*STAGES, "dags"] for p in sorted((ROOT / d).rglob("*.py"))]


def test_stage_packages_depend_one_way():
    wrong = []
    for path in sources():
        rel = path.relative_to(ROOT).as_posix()
        package = rel.split("/")[0]
        if package == "dags" or rel in ENTRY_POINTS:
            continue
        for name in imports(path) & STAGES - {package} - ALLOWED[package]:
            wrong.append(f"{rel} imports {name}")
    assert wrong == []


def test_frameworks_stay_in_their_adapters():
    wrong = []
    for path in sources():
        rel = path.relative_to(ROOT).as_posix()
        for lib, homes in THIRD_PARTY_HOMES.items():
            if lib in imports(path) and not any(rel == h or rel.startswith(h + "/") for h in homes):
                wrong.append(f"{rel} imports {lib}")
    assert wrong == []


def test_the_checker_sees_imports():
    assert {"civicflow", "warehouse", "orjson"} <= imports(ROOT / "transforms" / "decode.py") | imports(
        ROOT / "transforms" / "stage.py"
    )
