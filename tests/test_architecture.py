"""The package layers and the frameworks' homes hold: the import contracts in pyproject.toml.

`lint-imports` (import-linter) checks them on the checkout laid out as installed
(tests/import_layout.py): app -> dags -> jobs -> portal -> ingest | transforms | expectations |
publish -> warehouse -> the core modules of civicflow, app never importing dags, and each framework
imported only by its adapter. A broken contract is fixed in the code, never with an exemption.
"""

from __future__ import annotations

import ast
import subprocess
import tomllib
from pathlib import Path

import pytest
from import_layout import installed_layout, lint_imports

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONFIG = PYPROJECT["tool"]["importlinter"]
STAGES = PYPROJECT["tool"]["setuptools"]["package-dir"]  # civicflow.<stage> -> its top-level folder
NOT_PACKAGES = {"bench", "tests"}  # benchmarks and tests drive every stage
HOMES = {
    "airflow": {"dags", "civicflow.app.batch"},
    "paho": {"civicflow.ingest"},
    "amqtt": {"civicflow.ingest"},
    "great_expectations": {"civicflow.expectations"},
    "fastapi": {"civicflow.portal"},
    "starlette": {"civicflow.portal"},
    "jinja2": {"civicflow.portal"},
    "uvicorn": {"civicflow.app.serve_cli"},
}


def modules(folder: str, package: str) -> set[str]:
    return {f"{package}.{p.stem}" for p in (ROOT / folder).glob("*.py") if p.stem != "__init__"}


def test_import_contracts_are_kept():
    out = lint_imports()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and "Contracts: 7 kept" in out.stdout, out.stdout


def test_every_folder_with_python_is_a_mapped_stage_or_the_core_or_dags():
    """A new top-level package would install as a generic top-level name: it must be a stage of the
    civicflow namespace (pyproject.toml's package-dir and packages) and appear in the contracts."""
    folders = {p.parent.name for p in ROOT.glob("*/__init__.py")} - NOT_PACKAGES
    assert folders == {"civicflow", "dags", *STAGES.values()}
    assert all(package == f"civicflow.{folder}" for package, folder in STAGES.items())
    assert sorted(PYPROJECT["tool"]["setuptools"]["packages"]) == sorted(["civicflow", *STAGES])
    assert sorted(CONFIG["root_packages"]) == ["civicflow", "dags"]
    # pyproject.toml lists the packages and import_layout.py copies one level: a subpackage of a
    # stage would be left out of the wheel and the import checks until both learn of it.
    nested = sorted(
        str(p.relative_to(ROOT))
        for f in ("civicflow", *STAGES.values())
        for p in (ROOT / f).glob("*/**/*.py")
    )
    assert nested == [], (
        f"a stage has a subpackage: add it to pyproject.toml and tests/import_layout.py ({nested})"
    )
    layered = {
        m.strip() for layer in CONFIG["contracts"][0]["layers"] for m in layer.replace(":", "|").split("|")
    }
    assert layered == {*STAGES, "dags"} | modules("civicflow", "civicflow")


def test_the_installed_layout_holds_every_module_once(tmp_path):
    layout = installed_layout(tmp_path)
    copied = {
        p.relative_to(tmp_path).with_suffix("").as_posix().replace("/", ".") for p in tmp_path.rglob("*.py")
    }
    expected = {"civicflow", "dags"} | {f"{p}.__init__" for p in ("civicflow", "dags", *STAGES)}
    expected |= modules("civicflow", "civicflow") | modules("dags", "dags")
    for package, folder in STAGES.items():
        expected |= modules(folder, package)
    assert copied == expected - {"civicflow", "dags"}
    assert (layout / "pyproject.toml").read_bytes() == (ROOT / "pyproject.toml").read_bytes()


def test_each_framework_contract_names_every_module_but_the_frameworks_home():
    """A forbidden contract lists its sources, so a new module must be added to it: this says so."""
    units = modules("civicflow", "civicflow") | set(STAGES) | {"dags"}
    app_modules = modules("app", "civicflow.app")
    contracts = {
        lib: c for c in CONFIG["contracts"] if c["type"] == "forbidden" for lib in c["forbidden_modules"]
    }
    assert set(HOMES) <= set(contracts)
    for lib, homes in HOMES.items():
        expected = units - homes
        if any(home.startswith("civicflow.app.") for home in homes):
            expected = (expected - {"civicflow.app"}) | (app_modules - homes)
        assert sorted(contracts[lib]["source_modules"]) == sorted(expected), contracts[lib]["name"]


def test_no_module_imports_a_stage_by_its_folder_name():
    """In a checkout `import warehouse` still works (the folder is on sys.path) and loads a second
    copy of civicflow.warehouse, whose state the real one never sees; only the wheel would notice."""
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    folders = set(STAGES.values())
    offenders = []
    for name in tracked.stdout.split():
        tree = ast.parse((ROOT / name).read_text(), filename=name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            offenders += [f"{name}:{node.lineno} imports {root}" for root in roots if root in folders]
    assert len(tracked.stdout.split()) > 100
    assert offenders == [], "import civicflow.<stage> instead: " + "; ".join(offenders)
