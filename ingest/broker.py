"""An embedded MQTT 3.1.1 broker (amqtt) for the demo and for machines without Mosquitto.

The broker runs in its own process (`python -m civicflow.ingest.broker`) so that its asyncio loop never
competes with paho's network threads in the caller, and so that stopping it cannot leave tasks
behind in the caller's interpreter.

amqtt 0.12.1 marks every client accepted by its `AnonymousAuthPlugin` as anonymous, and an
anonymous session is neither kept after disconnect nor sent the QoS 1 messages published while it
was away, whatever its `clean_session` flag says. `AcceptAllAuthPlugin` accepts every client
without that mark, which is what makes persistent sessions work here.

Known amqtt 0.12.1 limits, read in its source and pinned by tests/ingest/test_broker.py: it speaks
MQTT 3.1.1 only (a v5 CONNECT gets "unsupported protocol version", a v3.1 one is dropped); sessions
live in memory only; and an outgoing QoS 1 message is forgotten, not redelivered, if its PUBACK takes
more than 5 s or the subscriber disconnects before sending it. Messages queued for an offline
session arrive with the retain flag set. Use Mosquitto wherever any of that matters.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

log = logging.getLogger(__name__)

_AUTH_PLUGIN = "civicflow.ingest.broker.AcceptAllAuthPlugin"
_CONNACK_ACCEPTED = bytes([0x20, 0x02, 0x00, 0x00])
_DISCONNECT = bytes([0xE0, 0x00])


def _connect_packet(client_id: bytes) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session, no keep-alive and no credentials."""
    body = b"\x00\x04MQTT" + bytes([0x04, 0x02, 0x00, 0x00]) + len(client_id).to_bytes(2, "big") + client_id
    return bytes([0x10, len(body)]) + body


class AcceptAllAuthPlugin(BaseAuthPlugin):
    """Accept every client without marking its session anonymous.

    amqtt discards anonymous sessions on disconnect and never queues messages for them, so the
    stock `AnonymousAuthPlugin` silently turns `clean_session=False` into a clean session.
    """

    async def authenticate(self, *, session: Session) -> bool | None:
        """Accept the client; credentials, if any, are not checked.

        Args:
            session: The connecting client's session.

        Returns:
            Always True.
        """
        return True


def broker_config(host: str, port: int) -> dict[str, Any]:
    """Build the amqtt configuration: one TCP listener, no plugins that read files.

    Args:
        host: Address to bind.
        port: TCP port to bind.

    Returns:
        A dict accepted by `amqtt.broker.Broker`.
    """
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {_AUTH_PLUGIN: {}},
    }


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a TCP port that is free right now.

    Args:
        host: Address the port must be free on.

    Returns:
        A port number; another process may still take it before it is bound.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _mqtt_handshake(host: str, port: int, timeout_s: float) -> bool:
    """Return True if an MQTT broker at host:port accepts a clean-session CONNECT.

    A bare TCP probe would make amqtt log an error for the connection that sent nothing, so the
    probe speaks just enough MQTT 3.1.1 to be a well-behaved client.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(_connect_packet(b"civicflow-probe"))
            reply = b""
            while len(reply) < len(_CONNACK_ACCEPTED):
                chunk = sock.recv(len(_CONNACK_ACCEPTED) - len(reply))
                if not chunk:
                    return False
                reply += chunk
            sock.sendall(_DISCONNECT)
            return reply == _CONNACK_ACCEPTED
    except OSError:
        return False


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker did not start."""


class EmbeddedBroker:
    """Run amqtt on 127.0.0.1 in a child process for the lifetime of a `with` block.

    Example:
        with EmbeddedBroker() as broker:
            publish_messages(broker.host, broker.port, messages)
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        start_timeout_s: float = 20.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        """Configure, but do not start, the broker.

        Args:
            port: TCP port to listen on; a free one is chosen when None.
            host: Address to listen on.
            log_path: File for amqtt's WARNING-and-above log; a temporary file when None.
            start_timeout_s: How long to wait for the broker to accept an MQTT connection.
            stop_timeout_s: How long to wait after SIGTERM before killing the process.
        """
        self.host = host
        self._requested_port = port
        self.port = port if port is not None else 0
        self._log_path = log_path
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """The file amqtt logs to; only meaningful once started."""
        if self._log_path is None:
            raise RuntimeError("the broker has not been started")
        return self._log_path

    @property
    def pid(self) -> int | None:
        """The broker process id while it runs."""
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the broker process and wait until it completes an MQTT handshake.

        A port picked for the caller can be taken by another process before the broker binds it,
        so that case is retried on a new port.

        Raises:
            EmbeddedBrokerError: The process exited or did not answer within the start timeout.
        """
        if self._process is not None:
            raise RuntimeError("the embedded broker is already running")
        if self._log_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="civicflow-amqtt-")
            self._log_path = Path(self._tmpdir.name) / "broker.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            self.port = self._requested_port if self._requested_port is not None else free_port(self.host)
            try:
                self._launch_and_wait()
                return
            except EmbeddedBrokerError:
                if attempt == attempts or self._process is None or self._process.poll() is None:
                    self.stop()
                    raise
                log.warning("embedded broker on port %d exited during start; retrying", self.port)
                self._process = None

    def _launch_and_wait(self) -> None:
        command = [
            sys.executable,
            "-m",
            "civicflow.ingest.broker",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--log-file",
            str(self.log_path),
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedBrokerError(
                    f"embedded amqtt broker exited with code {self._process.returncode} before accepting "
                    f"connections on {self.host}:{self.port}; log {self.log_path}:\n{self._log_tail()}"
                )
            if _mqtt_handshake(self.host, self.port, timeout_s=1.0):
                log.info(
                    "embedded amqtt broker (pid %d) listening on %s:%d",
                    self._process.pid,
                    self.host,
                    self.port,
                )
                return
            time.sleep(0.05)
        raise EmbeddedBrokerError(
            f"embedded amqtt broker did not accept an MQTT connection on {self.host}:{self.port} within "
            f"{self._start_timeout_s:.0f}s; log {self.log_path}:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
        except OSError as exc:
            return f"(unreadable: {exc})"

    def stop(self) -> None:
        """Stop the broker: SIGTERM for a clean shutdown, SIGKILL if it takes too long."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "embedded broker (pid %d) ignored SIGTERM for %.0fs; killing it",
                    process.pid,
                    self._stop_timeout_s,
                )
                process.kill()
                process.wait()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
            self._log_path = None


async def _serve(host: str, port: int) -> None:
    """Run the broker until SIGTERM or SIGINT, then shut it down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    broker = Broker(broker_config(host, port), loop=loop)
    await broker.start()
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the broker process.

    Args:
        argv: Command-line arguments; `sys.argv[1:]` when None.

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(description="Run the embedded amqtt MQTT 3.1.1 broker.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-file", type=Path, default=None, help="log here instead of stderr")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        filename=args.log_file,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(_serve(args.host, args.port))
    except Exception:
        log.exception("embedded amqtt broker on %s:%d failed", args.host, args.port)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
