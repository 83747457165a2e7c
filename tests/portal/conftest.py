"""One small release, built by the pipeline, shared by the portal tests (they only read it)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import uvicorn
from factories import LIMITS, car_park, land
from fastapi.testclient import TestClient

from civicflow.jobs.publication import gate_and_publish
from civicflow.portal.app import create_app
from civicflow.registry import CouncilRegistry, build_registry
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.feedback import pending_summaries, record_published
from civicflow.warehouse.layout import Layout

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ODBL = {
    "name": "ODbL-1.0",
    "path": "https://opendatacommons.org/licenses/odbl/1-0/",
    "title": "Open Data Commons Open Database License 1.0",
    "attribution": "Citizen sensor network contributors",
}


P1_AT = (52.4796241, -1.9026911)
"""Where p1's readings say it is (its council's own car park: published as sent)."""
S1_AT = (57.1381234, -2.0771234)
"""Where s1's readings say it is (a citizen's station: published rounded to 3 decimals)."""
P2_AT = (52.4776, -1.8971)
"""Where the registry says p2 is (its readings carry no position)."""
P1_REFUSED = [
    ("city/testtown/parking/p1", b'{"observed_at": "2016-10-04T09:15:00Z", "occupied_spots": "secret-value"'),
    ("city/testtown/parking/p1", b"not json at all"),
]
"""Two payloads of p1 that are not JSON (their bytes must never reach a page)."""
REGISTRY = build_registry(
    [
        CouncilRegistry.model_validate(
            {
                "council": "testtown",
                "quality": {"reporting_interval_s": {"p1": 1800}},
                "devices": [
                    {"device_id": "p1", "domain": "parking", "total_spots": 100},
                    {"device_id": "p2", "domain": "parking", "lat": P2_AT[0], "lon": P2_AT[1]},
                ],
            }
        ),
        CouncilRegistry.model_validate({"council": "citizens", "citizen_hosted": True}),
    ]
)


def air(device: str, observed_at: str, pm10: float, no2: float) -> tuple[str, dict]:
    payload = {"observed_at": observed_at, "pm10": pm10, "no2": no2, "lat": S1_AT[0], "lon": S1_AT[1]}
    return (f"city/citizens/air_quality/{device}", payload)


def positioned(message: tuple[str, dict], at: tuple[float, float]) -> tuple[str, dict]:
    return message[0], {**message[1], "lat": at[0], "lon": at[1]}


@pytest.fixture(scope="session")
def released(tmp_path_factory) -> Layout:
    """Parking of testtown (OGL) over two days and air quality of citizens (ODbL), one release;
    two messages of p1 refused (P1_REFUSED) and their feedback summary recorded as published.

    p1 and s1 send their positions, p2 has one in REGISTRY; citizens' stations are citizen-hosted."""
    layout = Layout(tmp_path_factory.mktemp("portal") / "data")
    con = connect(layout.warehouse)
    land(
        layout,
        [
            *(
                positioned(car_park("p1", f"2016-10-0{d}T{h:02d}:{m:02d}:00Z", 10 + h), P1_AT)
                for d in (4, 5)
                for h in range(8, 12)
                for m in (0, 30)
            ),
            *(car_park("p2", f"2016-10-04T{h:02d}:00:00Z", 50 + h, total=80) for h in range(8, 12)),
            *(air("s1", f"2016-10-04T{h:02d}:00:00Z", 10.5 + h, 20.0) for h in range(8, 11)),
            *P1_REFUSED,
        ],
    )
    stage_segments(layout, con, LIMITS)
    # p1's refused messages, summarised as feedback to its gateway (the device page shows it).
    record_published(con, pending_summaries(con, NOW, timedelta(hours=24)).summaries)
    result = gate_and_publish(layout, con, now=NOW, licences={"citizens": ODBL}, registry=REGISTRY)
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
