"""An installed Civicflow finds its DAGs, registry files and samples: the wheel carries them as data
under share/civicflow/, and civicflow.resources looks there when there is no checkout."""

from __future__ import annotations

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


def test_the_wheel_carries_dags_registry_and_samples(tmp_path):
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (make install puts it in .venv/bin)")
    subprocess.run([uv, "build", "--wheel", "--quiet", "-o", str(tmp_path), str(ROOT)], check=True)
    [wheel] = tmp_path.glob("civicflow-*.whl")
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch directory
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
