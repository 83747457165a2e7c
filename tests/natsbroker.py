"""NATS Server with JetStream from deploy/nats/, for tests: a private server on free ports, and the
gateway simulator publishing to it under a user of accounts.conf (tests/ingest/test_nats.py,
tests/dags/test_celery.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from brokers import deploy_nats_config, free_port
from listeners import wait_for

from civicflow.ingest.gateway import publish_messages

DEPLOY_NATS = Path(__file__).resolve().parents[1] / "deploy" / "nats"

NATS_SERVER = Path(os.environ.get("CIVICFLOW_TEST_NATS_SERVER", "/usr/sbin/nats-server"))
HOST = "127.0.0.1"
# Redelivery of what a killed listener had not acknowledged waits for ack_wait (NATS does not
# resend on reconnect); the example's 30 s would make each kill test wait that long.
TEST_ACK_WAIT = '"2s"'
CHIRPSTACK_UPLINK = "application/0b4c9a5e-7f2d-4e3a-9c1b-2d5e8f6a7b3c/device/0011223344556677/event/up"


def _users() -> dict[str, str]:
    """Each user of secrets.conf.example (PW_GW_LEEDS_1 is gw-leeds-1) with a made-up password."""
    names = re.findall(r"^(PW_[A-Z0-9_]+):", (DEPLOY_NATS / "secrets.conf.example").read_text(), re.M)
    return {name[3:].lower().replace("_", "-"): f"test-{name[3:].lower()}-pw" for name in names}


USERS = _users()


def install_accounts(workdir: Path) -> None:
    """Put accounts.conf and a secrets.conf of the test's passwords in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEPLOY_NATS / "accounts.conf", workdir / "accounts.conf")
    secrets = "".join(
        f'PW_{user.upper().replace("-", "_")}: "{password}"\n' for user, password in USERS.items()
    )
    (workdir / "secrets.conf").write_text(secrets)


class NatsServer:
    """One private nats-server; restartable on the same ports and store directory."""

    def __init__(self, workdir: Path, config: str, *, mqtt_port: int, http_port: int, name: str) -> None:
        self.workdir = workdir
        self.mqtt_port = mqtt_port
        self.http_port = http_port
        self.name = name
        self.config_path = workdir / f"{name}.conf"
        self.config_path.write_text(config)
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"

    def launch(self) -> None:
        """Start the process without waiting for it (a cluster's nodes wait for each other)."""
        if not NATS_SERVER.exists():
            raise RuntimeError(
                f"{NATS_SERVER} not found: install Debian's nats-server package (2.9 or later) or "
                "set CIVICFLOW_TEST_NATS_SERVER to the binary"
            )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(NATS_SERVER), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def healthy(self) -> bool:
        """/healthz answers ok: JetStream is up (in a cluster: it has a meta leader and is current)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited ({self.proc and self.proc.returncode}):\n{self.log_text()}"
            )
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/healthz", timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def start(self, timeout_s: float = 60) -> NatsServer:
        self.launch()
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        try:
            wait_for(lambda: self.healthy() and _accepts(self.mqtt_port), timeout_s, f"{self.name} starting")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{self.log_text()}") from None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or handed over."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def jsz(self, **params: str) -> dict:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/jsz?{query}", timeout=5) as r:
            return json.loads(r.read())

    def account_streams(self) -> dict[str, dict]:
        """The CIVICFLOW account's JetStream streams by name, with their consumers."""
        doc = self.jsz(acc="CIVICFLOW", streams="true", consumers="true", config="true")
        [account] = [a for a in doc.get("account_details", []) if a["name"] == "CIVICFLOW"] or [{}]
        return {s["name"]: s for s in account.get("stream_detail", [])}


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def single_node(workdir: Path, *, ack_wait: str = TEST_ACK_WAIT) -> NatsServer:
    """deploy/nats/nats-server.conf on free ports, its store under `workdir`."""
    install_accounts(workdir)
    mqtt_port, http_port, client_port = free_port(), free_port(), free_port()
    config = deploy_nats_config(
        DEPLOY_NATS / "nats-server.conf",
        addresses={
            "127.0.0.1:4222": f"{HOST}:{client_port}",
            "127.0.0.1:8222": f"{HOST}:{http_port}",
            "0.0.0.0:8883": f"{HOST}:{mqtt_port}",
        },
        store_dir=workdir / "jetstream",
        settings={"ack_wait": ack_wait},
    )
    return NatsServer(workdir, config, mqtt_port=mqtt_port, http_port=http_port, name="nats-server")


class Gateway(threading.Thread):
    """The gateway simulator publishing at QoS 1 in the background under a user of accounts.conf."""

    def __init__(self, port: int, user: str, messages: Iterable[tuple[str, bytes]]) -> None:
        super().__init__(daemon=True)
        self.port, self.user, self.messages = port, user, messages
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            publish_messages(
                HOST,
                self.port,
                self.messages,
                client_id=self.user,
                username=self.user,
                password=USERS[self.user],
                window=500,
                timeout_s=60,
            )
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> None:
        self.join(timeout=180)
        assert not self.is_alive(), f"gateway {self.user} did not finish publishing"
        assert self.error is None, f"gateway {self.user}: {self.error!r}"
