"""A real S3-compatible server for tests: moto's, on a free port, started by the test process.

`shared_moto()` is one server for the whole test process (each xdist worker has its own); tests
share it through the `moto_server` fixture and tell themselves apart by bucket (`s3_storage`
makes a new bucket per test). `MotoServer` can also be run on its own and stopped and started
again on the same port, which makes the store unreachable (connections refused) and then
reachable again with everything it held: moto keeps its objects in this process, not in the server.

The server handles one request at a time (werkzeug without threads), as S3 handles a conditional
write: moto checks If-None-Match / If-Match and writes the object in two steps without a lock, so
two requests served at once could both pass the check. One at a time, they cannot.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import uuid

import boto3
import pytest
from brokers import free_port

from civicflow.settings import StorageSettings

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "civicflow-test",
    "AWS_SECRET_ACCESS_KEY": "civicflow-test-secret",
}
"""Any credentials do for moto; a test sets them in its environment (and its listeners')."""


class MotoServer:
    """moto's S3 on 127.0.0.1:`port`, in a thread of this process; restartable on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> MotoServer:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            "127.0.0.1", self.port, app, threaded=False, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port: clients get "connection refused" until `start()`."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"civicflow-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def storage(self, bucket: str, prefix: str = "zones") -> StorageSettings:
        return StorageSettings(url=f"s3://{bucket}/{prefix}", endpoint_url=self.endpoint_url)


logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request in failure reports

_shared: MotoServer | None = None
_lock = threading.Lock()
_buckets = itertools.count()


def shared_moto() -> MotoServer:
    """The test process's moto server, started on first use and stopped at exit."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = MotoServer().start()
            atexit.register(_shared.stop)
        return _shared


@pytest.fixture
def aws_credentials(monkeypatch):
    """Test credentials in the environment, where boto3 (and a listener started from it) reads them."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return dict(CREDENTIALS)


@pytest.fixture
def moto_server(aws_credentials) -> MotoServer:
    return shared_moto()


@pytest.fixture
def s3_storage(moto_server) -> StorageSettings:
    """StorageSettings of a new, empty bucket on the shared server (prefix `zones`)."""
    return moto_server.storage(moto_server.create_bucket(f"civicflow-{os.getpid()}-{next(_buckets)}"))
