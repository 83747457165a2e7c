"""An installed Civicflow finds its DAGs, registry files and samples: the wheel carries them as data
under share/civicflow/, and civicflow.resources looks there when there is no checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import civicflow.resources as resources

ROOT = Path(__file__).resolve().parent.parent


def test_the_checkout_comes_first_then_the_installed_copy(tmp_path, monkeypatch):
    assert resources.resource_dir("registry") == ROOT / "registry"

    monkeypatch.setattr(resources, "CHECKOUT", tmp_path / "site-packages")  # no pyproject.toml there
    (tmp_path / "site-packages" / "registry").mkdir(parents=True)  # someone else's top-level "registry"
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    installed = tmp_path / "venv" / "share" / "civicflow" / "registry"
    installed.mkdir(parents=True)
    assert resources.resource_dir("registry") == installed
    assert resources.resource_dir("samples") == tmp_path / "site-packages" / "samples"  # nowhere: named


def find_uv() -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (make install puts it in .venv/bin)")
    return uv


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Civicflow's wheel, built once from the checkout for this module's tests."""
    uv, out = find_uv(), tmp_path_factory.mktemp("wheel")
    subprocess.run([uv, "build", "--wheel", "--quiet", "-o", str(out), str(ROOT)], check=True)
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch directory
    [built] = out.glob("civicflow-*.whl")
    return built


def test_the_wheel_carries_dags_registry_and_samples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "civicflow-0.1.0.data/data/share/civicflow/"
    expected = {
        *(f"dags/{p.name}" for p in (ROOT / "dags").glob("*.py")),
        *(f"registry/{p.name}" for p in (ROOT / "registry").glob("*.toml")),
        *(p.relative_to(ROOT).as_posix() for p in (ROOT / "samples").rglob("*") if p.is_file()),
    }
    assert {n.removeprefix(data) for n in names if n.startswith(data)} == expected
    assert {n.split("/")[0] for n in names} >= {"civicflow", "app", "jobs", "portal"}
    assert "dags/__init__.py" not in names  # the DAGs are data, not a top-level package


INSTALLED_CHECK = """
import json, sys
from pathlib import Path
import civicflow.resources as resources
from civicflow.registry import load_registry
from airflow.dag_processing.dagbag import DagBag

dirs = {n: resources.resource_dir(n) for n in ("dags", "registry", "samples")}
bag = DagBag(str(dirs["dags"]))
print(json.dumps({
    "dirs": {n: str(d) for n, d in dirs.items()},
    "share": str(Path(sys.prefix) / "share" / "civicflow"),
    "councils": sorted(load_registry().councils),
    "dags": sorted(bag.dag_ids),
    "dag_files": sorted(p.name for p in dirs["dags"].glob("*.py")),
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
}))
"""


@pytest.mark.integration
def test_the_installed_wheel_runs_outside_the_checkout_with_its_dags_and_registry(wheel, tmp_path):
    """The wheel and requirements.lock (hashed) in a fresh venv, run from a directory that is not
    the checkout: its version, its data under the venv's share/civicflow, the registry loaded from
    there and every installed DAG parsed by Airflow without an import error (`make wheel-demo`
    goes on to run the demo)."""
    uv, venv = find_uv(), tmp_path / "venv"
    install = [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python")]
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([*install, "--require-hashes", "-r", str(ROOT / "requirements.lock")], check=True)
    subprocess.run([*install, "--no-deps", str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CIVICFLOW_DATA_ROOT": str(tmp_path / "data"),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
    }

    def run(*args: str) -> str:
        done = subprocess.run(
            args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900
        )  # a hang guard, not a bound
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert run(str(venv / "bin" / "civicflow"), "--version").strip() == "civicflow 0.1.0"
    found = json.loads(run(str(venv / "bin" / "python"), "-c", INSTALLED_CHECK).splitlines()[-1])
    share = Path(found["share"])
    assert share == venv / "share" / "civicflow"
    assert found["dirs"] == {n: str(share / n) for n in ("dags", "registry", "samples")}
    assert found["councils"] == sorted(p.stem for p in (ROOT / "registry").glob("*.toml"))
    assert found["errors"] == {}
    assert found["dag_files"] == sorted(p.name for p in (ROOT / "dags").glob("*.py"))
    assert found["dags"] == sorted(f"civicflow_{n}" for n in ("backfill", "maintenance", "publish", "stage"))
