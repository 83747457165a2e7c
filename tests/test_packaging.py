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
STAGES = ("app", "expectations", "ingest", "jobs", "portal", "publish", "transforms", "warehouse")


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
    # One name in site-packages: the stage folders are subpackages of civicflow, the DAGs are data.
    assert {n.split("/")[0] for n in names} == {
        "civicflow",
        "civicflow-0.1.0.data",
        "civicflow-0.1.0.dist-info",
    }
    packages = {
        n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py") and n.startswith("civicflow/")
    }
    assert packages == {"civicflow", *(f"civicflow/{s}" for s in STAGES)}
    for stage in STAGES:
        modules = {p.name for p in (ROOT / stage).glob("*.py")}
        assert {n.rsplit("/", 1)[1] for n in names if n.startswith(f"civicflow/{stage}/")} >= modules, stage
    templates = {p.name for p in (ROOT / "portal" / "templates").glob("*.html")}
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith("civicflow/portal/templates/")} == templates
    entry_points = zipfile.ZipFile(wheel).read("civicflow-0.1.0.dist-info/entry_points.txt").decode()
    assert "civicflow = civicflow.app.cli:main" in entry_points


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
    there, every installed DAG parsed by Airflow without an import error, nothing but `civicflow`
    added to site-packages, and `civicflow demo` publishing what its summary says (as `make
    wheel-demo` does)."""
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

    [site_packages] = venv.glob("lib/python3*/site-packages")
    assert not {s for s in STAGES if (site_packages / s).exists()}, (
        "a stage landed at the top of site-packages"
    )

    demo = run(str(venv / "bin" / "civicflow"), "demo", "--data-root", "demo-data")
    summary = demo_summary(demo)
    latest = elsewhere / "demo-data" / "published" / "latest"
    for dag in ("civicflow_stage", "civicflow_publish"):
        assert f"Airflow DAG {dag}: success" in demo, demo
    assert "CIVICFLOW_DATA_ROOT=demo-data civicflow serve" in demo  # the installed command, by name
    published = {domain: published_rows(latest / domain) for domain in summary["rows published"]}
    assert published == summary["rows published"] and all(published.values()), demo
    assert sum(published.values()) == summary["rows published total"]


def demo_summary(output: str) -> dict[str, dict[str, int] | int]:
    """The demo summary's table: row label -> {dataset: count} (and "<label> total")."""
    lines = output.splitlines()
    header = next(line.split() for line in lines if line.split()[:1] == ["step"])
    datasets = header[1:-1]  # step, the datasets..., total
    table: dict[str, dict[str, int] | int] = {}
    for line in lines:
        cells = line.split()
        if len(cells) < len(header) or not all(
            c.replace(",", "").isdigit() for c in cells[-len(header) + 1 :]
        ):
            continue
        label = " ".join(cells[: len(cells) - len(header) + 1])
        values = [int(c.replace(",", "")) for c in cells[-len(header) + 1 :]]
        table[label] = dict(zip(datasets, values[:-1], strict=True))
        table[f"{label} total"] = values[-1]
    return table


def published_rows(dataset_dir: Path) -> int:
    """Rows in a released dataset's day files, each checked against its data package's sha256."""
    import hashlib

    import pyarrow.parquet as pq

    package = json.loads((dataset_dir / "datapackage.json").read_text())
    rows = 0
    for resource in package["resources"]:
        if resource["format"] != "parquet" or not resource["path"].startswith("council="):
            continue
        path = dataset_dir / resource["path"]
        assert resource["hash"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(), path
        rows += pq.ParquetFile(path).metadata.num_rows
    return rows
