"""`civicflow listen` as a real subprocess, for integration tests, and ways to read what it landed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from brokers import free_port

from civicflow.warehouse.segments import list_closed_segments, read_segment


class ListenerProcess:
    """One `civicflow listen` process with its own client id, data root, metrics port and log."""

    def __init__(
        self, data_root: Path, port: int, log: Path, *, client_id: str = "test-listener", **env: str
    ) -> None:
        self.data_root = data_root
        self.port = port
        self.log = log
        self.client_id = client_id
        self.metrics_port = free_port()
        self.env = {
            "CIVICFLOW_DATA_ROOT": str(data_root),
            "CIVICFLOW_MQTT__HOST": "127.0.0.1",
            "CIVICFLOW_MQTT__PORT": str(port),
            "CIVICFLOW_MQTT__CLIENT_ID": client_id,
            "CIVICFLOW_LANDING__SEGMENT_MAX_AGE_S": "1",
            "CIVICFLOW_METRICS__PORT": str(self.metrics_port),
        } | env
        self.proc: subprocess.Popen | None = None

    @property
    def directory(self) -> Path:
        return self.data_root / "raw" / self.client_id

    def start(self) -> ListenerProcess:
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "civicflow.app.cli", "listen", "-v"],
                env=os.environ | self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def status(self) -> dict:
        try:
            return json.loads((self.directory / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def health(self) -> tuple[int, dict]:
        """(HTTP status, document) from the listener's /health endpoint; (0, {}) if it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/health", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
            return r.read().decode()

    def wait_for(self, predicate, timeout_s: float, what: str):
        return wait_for(predicate, timeout_s, what, self.proc)

    def own_status(self) -> dict:
        """status.json as this process wrote it: a restarted listener's file is its predecessor's
        until the new process first writes it."""
        doc = self.status()
        return doc if self.proc is not None and doc.get("pid") == self.proc.pid else {}

    def wait_subscribed(self, timeout_s: float = 120) -> dict:
        return self.wait_for(
            lambda: (doc := self.own_status()).get("state") == "subscribed" and doc, timeout_s, "subscribing"
        )

    def wait_settled(self, quiet_s: float = 2.0, timeout_s: float = 180) -> dict:
        """Wait until `acked` has not moved for `quiet_s` seconds (the session is drained)."""
        last = [-1, time.monotonic()]

        def settled() -> bool:
            acked = self.own_status().get("acked", -1)
            if acked != last[0]:
                last[:] = [acked, time.monotonic()]
            return time.monotonic() - last[1] > quiet_s

        self.wait_for(settled, timeout_s, "draining the session")
        return self.status()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"listener exited ({proc.returncode}) while {what}")
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out {what}")


def landed_payloads(raw_root: Path) -> list[bytes]:
    """Every payload in the closed segments under `raw_root` (all listeners), duplicates included."""
    return [r.payload for p in list_closed_segments(raw_root) for r in read_segment(p)]
