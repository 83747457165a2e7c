"""Run import-linter on Civicflow as it is installed: `python -m tests.import_layout`.

import-linter (grimp) reads each root package from one directory, but in the checkout the stage
packages of the `civicflow` namespace live in top-level folders (`ingest/` is `civicflow.ingest`,
pyproject.toml's `tool.setuptools.package-dir`). This copies the Python files into a temporary tree
laid out as the wheel installs them, plus `dags/`, and runs `lint-imports` there with the
checkout's pyproject.toml; its exit code is lint-imports'.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def installed_layout(dest: Path) -> Path:
    """Copy the packages into `dest` as `civicflow/<stage>/...` and `dags/`; returns `dest`."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {"civicflow": "civicflow", **setuptools["package-dir"], "dags": "dags"}
    for package, folder in mapping.items():
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).glob("*.py"):
            shutil.copy2(source, target / source.name)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).parent / "lint-imports"
    with tempfile.TemporaryDirectory(prefix="civicflow-imports-") as tmp:
        layout = installed_layout(Path(tmp))
        return subprocess.run(
            [str(lint), "--no-cache", *args],
            cwd=layout,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(layout)},
            capture_output=True,
            text=True,
            check=False,
        )


if __name__ == "__main__":
    done = lint_imports(*sys.argv[1:])
    print(done.stdout, end="")
    print(done.stderr, end="", file=sys.stderr)
    sys.exit(done.returncode)
