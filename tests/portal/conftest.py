"""One small release, built by the pipeline, shared by the portal tests (they only read it)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import uvicorn
from factories import LIMITS, car_park, land
from fastapi.testclient import TestClient

from jobs.publication import gate_and_publish
from portal.app import create_app
from transforms.stage import stage_segments
from warehouse.db import connect
from warehouse.layout import Layout

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ODBL = {
    "name": "ODbL-1.0",
    "path": "https://opendatacommons.org/licenses/odbl/1-0/",
    "title": "Open Data Commons Open Database License 1.0",
    "attribution": "Citizen sensor network contributors",
}


def air(device: str, observed_at: str, pm10: float, no2: float) -> tuple[str, dict]:
    return (f"city/citizens/air_quality/{device}", {"observed_at": observed_at, "pm10": pm10, "no2": no2})


@pytest.fixture(scope="session")
def released(tmp_path_factory) -> Layout:
    """Parking of testtown (OGL) over two days and air quality of citizens (ODbL), one release."""
    layout = Layout(tmp_path_factory.mktemp("portal") / "data")
    con = connect(layout.warehouse)
    land(
        layout,
        [
            *(
                car_park("p1", f"2016-10-0{d}T{h:02d}:{m:02d}:00Z", 10 + h)
                for d in (4, 5)
                for h in range(8, 12)
                for m in (0, 30)
            ),
            *(car_park("p2", f"2016-10-04T{h:02d}:00:00Z", 50 + h, total=80) for h in range(8, 12)),
            *(air("s1", f"2016-10-04T{h:02d}:00:00Z", 10.5 + h, 20.0) for h in range(8, 11)),
        ],
    )
    stage_segments(layout, con, LIMITS)
    result = gate_and_publish(layout, con, now=NOW, licences={"citizens": ODBL})
    con.close()
    # Three partitions, every device of every day published (no day or device held back), one release.
    assert (result.published, result.held_back, result.devices_held, result.released) == (3, [], [], 3)
    return layout


@pytest.fixture(scope="session")
def client(released) -> TestClient:
    return TestClient(create_app(released))


@pytest.fixture(scope="session")
def portal_url(released) -> Iterator[str]:
    """The portal over `released`, served by a real uvicorn on a free loopback port (in a thread)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn.Config(create_app(released), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.01)
    assert server.started, "uvicorn did not start"
    yield f"http://{host}:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()
