"""The batch side's Prometheus metrics, read from a warehouse the pipeline built: at the portal's
`/metrics`, in `civicflow metrics`, and while a task holds the warehouse for writing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from factories import LIMITS, car_park, land
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from civicflow.jobs.publication import gate_and_publish
from civicflow.transforms.stage import stage_segments
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.metrics import BatchCollector

pytestmark = pytest.mark.integration
STAGED = datetime(2040, 1, 1, 0, 0, tzinfo=UTC)  # later than the wall clock that staged `released`
PUBLISHED = datetime(2040, 1, 1, 1, 0, tzinfo=UTC)
SCRAPED = datetime(2040, 1, 1, 2, 0, tzinfo=UTC).timestamp()
DAY = "2016-10-04"


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def traffic(device: str, council: str, observed_at: str, intensity: int) -> tuple[str, dict]:
    return (f"city/{council}/traffic/{device}", {"observed_at": observed_at, "intensity": intensity})


def samples(exposition: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(collector: BatchCollector) -> dict:
    registry = CollectorRegistry()
    registry.register(collector)
    return samples(generate_latest(registry))


@pytest.fixture(scope="module")
def monitored(released, tmp_path_factory) -> Layout:
    """`released` (parking of testtown, air quality of citizens), then traffic of leeds and york
    with one of leeds' devices held back, messages that are quarantined, and one segment not staged."""
    layout = Layout(tmp_path_factory.mktemp("monitored") / "data")
    shutil.copytree(released.root, layout.root, symlinks=True)
    big = 2**63 - 1
    land(
        layout,
        [
            # a64: 2 of its 14 readings out of range, so its day is held back (quarantine_share);
            # its readings are later than a65's, so leeds' newest released reading is a65's.
            traffic("a64", "leeds", f"{DAY}T10:00:00Z", big),
            traffic("a64", "leeds", f"{DAY}T10:05:00Z", big),
            *[traffic("a64", "leeds", f"{DAY}T10:{m:02d}:00Z", 20) for m in range(0, 60, 5)],
            *[traffic("a65", "leeds", f"{DAY}T09:{m:02d}:00Z", 30) for m in range(0, 60, 5)],
            *[traffic("b1", "york", f"{DAY}T08:{m:02d}:00Z", 40) for m in range(0, 60, 5)],
            ("city/leeds/traffic/x9", b"not json"),
            ("city/nowhere/parking/p1", b"not json"),  # a council nothing was staged for
            ("nonsense", b"{}"),  # bad topics name no council and no domain
            ("city/leeds/teleport/t1", b"{}"),
        ],
        received_at_ns=int(STAGED.timestamp() * 1e9),
    )
    con = connect(layout.warehouse)
    stage_segments(layout, con, LIMITS, now=STAGED)
    result = gate_and_publish(layout, con, now=PUBLISHED)
    con.close()
    assert [(h["council"], h["device_id"], h["failed"]) for h in result.devices_held] == [
        ("leeds", "a64", ["quarantine_share"])
    ]
    land(layout, [car_park("p1", f"{DAY}T12:00:00Z", 5)], listener="l2")  # closed, not staged
    return layout


def test_batch_metrics_are_read_from_the_warehouse(monitored):
    got = scrape(BatchCollector(monitored, min_interval_s=0, clock=lambda: SCRAPED))

    def values(name: str) -> dict[tuple[str, ...], float]:
        return {tuple(v for _, v in labels): value for (n, labels), value in got.items() if n == name}

    assert values("civicflow_batch_warehouse_up") == {(): 1}
    assert values("civicflow_batch_warehouse_read_timestamp_seconds") == {(): SCRAPED}
    assert values("civicflow_stage_last_success_timestamp_seconds") == {(): STAGED.timestamp()}
    # `released`'s one segment (23 readings, p1's 2 bad messages) and this one: 12 + 12 + 12
    # readings staged, a64's 2 readings and the 4 bad messages refused.
    assert values("civicflow_stage_segments_total") == {(): 2}
    assert values("civicflow_stage_readings_total") == {(): 23 + 36}
    assert values("civicflow_stage_rejected_total") == {(): 2 + 6}
    assert values("civicflow_raw_segments_awaiting_staging") == {("l1",): 0, ("l2",): 1}
    assert values("civicflow_publish_last_release_timestamp_seconds") == {(): PUBLISHED.timestamp()}
    assert values("civicflow_publish_pending_partitions") == {(): 0}
    # labels in name order: council, domain
    assert values("civicflow_published_partitions") == {
        ("citizens", "air_quality"): 1,
        ("testtown", "parking"): 2,
        ("leeds", "traffic"): 1,
        ("york", "traffic"): 1,
    }
    newest = {
        ("citizens", "air_quality"): at("2016-10-04T10:00:00+00:00"),
        ("testtown", "parking"): at("2016-10-05T11:30:00+00:00"),
        ("leeds", "traffic"): at("2016-10-04T09:55:00+00:00"),  # a65's: a64's later day is held back
        ("york", "traffic"): at("2016-10-04T08:55:00+00:00"),
    }
    assert values("civicflow_dataset_newest_reading_timestamp_seconds") == newest
    assert values("civicflow_dataset_freshness_seconds") == {k: SCRAPED - t for k, t in newest.items()}
    # council, domain, grain: a zero for each staged dataset and council
    assert values("civicflow_gate_held_back_partitions") == {
        **{(c, d, g): 0 for c, d in newest for g in ("device", "partition")},
        ("leeds", "traffic", "device"): 1,
    }
    assert values("civicflow_gate_held_back_reasons") == {("leeds", "traffic", "quarantine_share"): 1}
    # council, domain, reason: unknown councils and domains, and none, are `other`
    assert values("civicflow_quarantine_readings") == {
        ("leeds", "traffic", "out_of_range"): 2,
        ("leeds", "traffic", "not_json"): 1,
        ("other", "parking", "not_json"): 1,
        ("testtown", "parking", "not_json"): 2,
        ("other", "other", "bad_topic"): 2,
    }
    assert not [name for name, labels in got if any(k == "device_id" for k, _ in labels)]


def test_the_portal_serves_them_at_metrics(client):
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    assert answer.headers["cache-control"] == "no-store"
    got = samples(answer.text)
    assert got[("civicflow_batch_warehouse_up", ())] == 1
    assert got[("civicflow_published_partitions", (("council", "testtown"), ("domain", "parking")))] == 2
    assert got[
        (
            "civicflow_dataset_newest_reading_timestamp_seconds",
            (("council", "citizens"), ("domain", "air_quality")),
        )
    ] == at("2016-10-04T10:00:00+00:00")
    head = client.head("/metrics")
    assert (head.status_code, head.content) == (200, b"")
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_a_warehouse_held_for_writing_serves_the_last_read(monitored, tmp_path, monkeypatch, capsys):
    """While a task writes the warehouse (another process), a scrape serves the last values read,
    their freshness aged to the scrape, with up 0; `civicflow metrics --textfile` exits 2 and leaves
    the file as it was."""
    from typer.testing import CliRunner

    from civicflow.app.cli import app, main

    up, read_at = (
        ("civicflow_batch_warehouse_up", ()),
        ("civicflow_batch_warehouse_read_timestamp_seconds", ()),
    )
    york = ("civicflow_dataset_freshness_seconds", (("council", "york"), ("domain", "traffic")))

    def same(a: dict, b: dict) -> bool:
        """Equal but for when they were read and how old the readings were then."""
        moving = ("civicflow_batch_warehouse_read_timestamp_seconds", "civicflow_dataset_freshness_seconds")
        return {k: v for k, v in a.items() if k[0] not in moving} == {
            k: v for k, v in b.items() if k[0] not in moving
        }

    now = [SCRAPED]
    collector = BatchCollector(monitored, min_interval_s=30, clock=lambda: now[0])
    first = scrape(collector)
    prom = tmp_path / "civicflow.prom"
    monkeypatch.setenv("CIVICFLOW_DATA_ROOT", str(monitored.root))
    done = CliRunner().invoke(app, ["metrics", "--textfile", str(prom)])
    assert done.exit_code == 0, done.output
    written = prom.read_bytes()
    assert same(samples(written), first)

    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, duckdb; con = duckdb.connect(sys.argv[1]); print('open', flush=True); "
            "sys.stdin.read()",
            str(monitored.warehouse),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline() == "open\n"
        now[0] += 10  # within min_interval_s: the last read is served, the warehouse not tried
        cached = scrape(collector)
        now[0] += 30
        held = scrape(collector)
        monkeypatch.setattr(sys, "argv", ["civicflow", "metrics", "--textfile", str(prom)])
        with pytest.raises(SystemExit) as exited:
            main()
    finally:
        writer.communicate("", timeout=30)
    assert (cached[up], cached[read_at], cached[york]) == (1, SCRAPED, first[york] + 10)
    assert same(cached, first)
    assert (held[up], held[read_at], held[york]) == (0, SCRAPED, first[york] + 40)
    assert same({**held, up: 1}, first)
    assert exited.value.code == 2
    assert "open for writing by another process" in capsys.readouterr().err
    assert prom.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["civicflow.prom"]  # no temporary file left
    now[0] += 30
    again = scrape(collector)  # the writer is gone
    assert (again[up], again[read_at]) == (1, SCRAPED + 70)
