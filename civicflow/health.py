"""`civicflow status`: the health of every listener that has landed under the data root.

A running listener answers on its `/health` endpoint; that is the live truth, even while its disk
refuses writes. When it cannot be asked, the `status.json` it keeps beside its segments is read
instead, and judged by whether its process still runs and how old the file is.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from civicflow.settings import Settings

STALE_AFTER_S = 30.0
STAGED_MARKER = ".staged-through"  # written by staging: the last segment it has recorded


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ask(host: str, port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503: unhealthy, but it answered
        try:
            return json.loads(exc.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None


def closed_backlog(directory: Path) -> int:
    try:
        through = (directory / STAGED_MARKER).read_text().strip()
    except OSError:
        through = ""
    return sum(1 for p in directory.glob("*.seg") if p.name > through)


def listener_health(settings: Settings) -> list[dict]:
    reports = []
    for status_path in sorted((settings.data_root / "raw").glob("*/status.json")):
        try:
            doc = json.loads(status_path.read_text())
        except (OSError, ValueError) as exc:
            reports.append(
                {
                    "client_id": status_path.parent.name,
                    "healthy": False,
                    "source": "file",
                    "problem": str(exc),
                }
            )
            continue
        doc.setdefault("client_id", status_path.parent.name)
        alive = _alive(doc.get("pid"))
        live = _ask(settings.metrics.host, doc["metrics_port"]) if alive and doc.get("metrics_port") else None
        if live is not None and live.get("client_id") == doc["client_id"]:
            report = live | {"source": "live"}
            report["problem"] = None if live.get("healthy") else (live.get("last_error") or live.get("state"))
        else:
            report = doc | {"source": "file"}
            age = time.time() - doc.get("updated_at", 0)
            if not alive:
                report["healthy"] = False
                report["problem"] = f"not running (last state {doc.get('state')!r}, {age:,.0f}s ago)"
            elif age > STALE_AFTER_S:
                report["healthy"] = False
                report["problem"] = f"status not updated for {age:,.0f}s: the listener may be stuck"
            else:
                report["problem"] = (
                    None if doc.get("healthy") else (doc.get("last_error") or doc.get("state"))
                )
        report["closed_backlog"] = closed_backlog(status_path.parent)
        reports.append(report)
    return reports
