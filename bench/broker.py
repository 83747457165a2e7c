"""A private Mosquitto for one benchmark run, on a free port, with a deliberate configuration.

Kept apart from tests/brokers.py on purpose: the test broker snapshots its database every second
(`autosave_interval 1`), which is right for crash tests but would put a full-database write into
every second of a timed drain.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = Path(os.environ.get("CIVICFLOW_BENCH_MOSQUITTO", "/usr/sbin/mosquitto"))


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mosquitto_version() -> str:
    """The broker's version line, e.g. 'mosquitto version 2.0.11'."""
    out = subprocess.run([str(MOSQUITTO), "-h"], capture_output=True, text=True, check=False).stdout
    return next((line.strip() for line in out.splitlines() if "version" in line), "unknown")


def bench_config(port: int, workdir: Path, *, max_inflight: int) -> str:
    """Render mosquitto.conf for a benchmark broker.

    Args:
        port: Port of the only listener, on 127.0.0.1.
        workdir: Directory for the persistence file and log.
        max_inflight: QoS 1 messages the broker sends a subscriber before waiting for PUBACKs;
            the same for every subscriber under test.

    Returns:
        The configuration text.
    """
    return "\n".join(
        [
            "# Written by bench/broker.py for one benchmark run.",
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "# Sessions and queued messages are persisted (saved on shutdown and every 30 minutes,",
            "# Mosquitto's default), so no database snapshot lands inside a timed drain.",
            "persistence true",
            f"persistence_location {workdir}/",
            "persistence_file mosquitto.db",
            "autosave_interval 1800",
            "# Never drop a queued QoS 1 message for an offline subscriber: Mosquitto's default",
            "# max_queued_messages of 1000 would keep only the first 1000 of the backlog.",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            f"max_inflight_messages {max_inflight}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "",
        ]
    )


class Mosquitto:
    """One private Mosquitto; use as a context manager."""

    def __init__(self, workdir: Path, *, max_inflight: int) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.config_path.write_text(bench_config(self.port, workdir, max_inflight=max_inflight))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Mosquitto:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited early; its log:\n{self.log_path.read_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError(f"mosquitto did not listen on port {self.port}; log in {self.log_path}")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the broker has used so far."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
