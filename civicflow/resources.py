"""Where Civicflow's own files are: its DAGs, the councils' registry files and the demo's samples.

In a checkout they are the top-level `dags/`, `registry/` and `samples/` beside the packages. An
installed wheel carries them as data under `<prefix>/share/civicflow/` (pyproject.toml's
`tool.setuptools.data-files`), where `<prefix>` is the environment Civicflow is installed in.
"""

from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
SHARE = Path("share") / "civicflow"


def resource_dir(name: str) -> Path:
    """`dags`, `registry` or `samples`: the checkout's, else the installed copy.

    Never raises: where neither exists, the checkout's path is returned, so that whoever reads
    it says which file is missing.
    """
    if (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / name).is_dir():
        return CHECKOUT / name
    prefixes = [sys.prefix, sysconfig.get_path("data"), getattr(site, "USER_BASE", None)]
    for prefix in filter(None, prefixes):
        candidate = Path(prefix) / SHARE / name
        if candidate.is_dir():
            return candidate
    return CHECKOUT / name
