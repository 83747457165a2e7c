"""What every benchmark records about where it ran: the machine, its filesystem and the code."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def machine(**versions: str) -> dict[str, Any]:
    """CPU model, cores, RAM, kernel and Python, plus the versions of what the benchmark measures."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), ""
    )
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(next(ln.split()[1] for ln in meminfo.splitlines() if ln.startswith("MemTotal")))
    return {
        "cpu": model or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **versions,
    }


def filesystem(path: Path) -> str:
    """Filesystem type of the mount holding `path` (fsync and write costs depend on it)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind


def code_version(*packages: str) -> dict[str, Any]:
    """The commit benchmarked, and the files of `packages` that differed from it in the working tree."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.rstrip()

    dirty = git("status", "--porcelain", "--", *packages).splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": [ln[3:] for ln in dirty if ln]}
