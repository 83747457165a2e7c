"""`civicflow demo`: the whole pipeline on real data, on a machine with nothing but Python.

1. start an embedded MQTT broker (amqtt) on a free port, unless CIVICFLOW_MQTT__HOST names one;
2. start the listener (`civicflow listen`) as its own process, as in production;
3. replay every domain as its gateways would publish it (QoS 1; `ingest/samples.py`): a month of
   real Birmingham car-park readings, two weeks of real Edinburgh litter-bin collections, two days
   of real Aberdeen Sensor.Community air-quality readings, and two days of SYNTHETIC traffic
   counts (no open traffic-counter recording is shipped);
4. stop the listener with SIGTERM once it has acknowledged every message;
5. run the batch DAGs once through Airflow, and print what happened, per domain.

The quality gate shows both of its outcomes. Real Birmingham car-park days with gaps are published
with warnings (rows of incomplete device-hours carry `qc_flag = 'completeness'`), as they come. No
shipped recording breaks a blocking rule, so the demo adds a small, clearly labelled FAULT INJECTION
to the synthetic traffic council: one extra counter reporting every minute on 2026-03-07 whose
gateway, for the first hour, bursts a physically impossible 900 km/h. Staging quarantines those
readings (`out_of_range`), that counter's quarantine share that day exceeds the gate's 5 %, and its
day is held back, while the council's other counters that day are published. Real Birmingham car
parks whose counters over-read (more cars than spaces) are held back the same way, device by device:
`civicflow release list` shows them, `civicflow release approve ... --device ...` publishes one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from civicflow.settings import Settings

DEMO_CLIENT_ID = "civicflow-demo-listener"


def _wait_for_status(status: Path, proc: subprocess.Popen, predicate, timeout_s: float, what: str) -> dict:
    deadline = time.monotonic() + timeout_s
    doc: dict = {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the listener exited with code {proc.returncode} while {what}; "
                f"see {status.parent / 'listener.log'}"
            )
        if status.exists():
            try:
                doc = json.loads(status.read_text())
            except json.JSONDecodeError:
                doc = {}
            if predicate(doc):
                return doc
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s {what} (last status: {doc})")


REPLAY_CHUNK = 400
"""Messages the demo gateway publishes before waiting for the listener to catch up.

A broker bounds what it queues for a subscriber (Mosquitto's default `max_queued_messages` is
1000 and it silently drops QoS 1 messages beyond that), so the replay, which is far faster than
real car parks, never lets more than two chunks wait for the listener.
"""


def _replay(
    publish,
    messages: list,
    status: Path,
    listener: subprocess.Popen,
    stall_s: float = 20.0,
    progress=lambda sent, acked: None,
) -> None:
    sent = 0
    for start in range(0, len(messages), REPLAY_CHUNK):
        chunk = messages[start : start + REPLAY_CHUNK]
        publish(chunk)
        sent += len(chunk)
        behind_ok = sent - REPLAY_CHUNK if sent < len(messages) else sent
        last, moved = -1, time.monotonic()
        while True:
            if listener.poll() is not None:
                raise RuntimeError(f"the listener exited with code {listener.returncode}; see its log")
            try:
                acked = json.loads(status.read_text()).get("acked", 0)
            except (OSError, ValueError):
                acked = 0
            progress(sent, acked)
            if acked >= behind_ok:
                break
            if acked != last:
                last, moved = acked, time.monotonic()
            elif time.monotonic() - moved > stall_s:
                raise RuntimeError(
                    f"the broker delivered {acked:,} of the {sent:,} messages published and then "
                    f"nothing for {stall_s:.0f}s: it dropped the rest. Mosquitto drops QoS 1 messages "
                    "beyond max_queued_messages (default 1000) for a subscriber; set "
                    "`max_queued_messages 0` in mosquitto.conf (see deploy/mosquitto/)"
                )
            time.sleep(0.1)


FAULT_DAY = "2026-03-07"
FAULT_DEVICE = "radial-9-fault-injection"
FAULT_READINGS = 120
FAULT_BURST = 60


def fault_injection_messages(prefix: str) -> list[tuple[str, bytes]]:
    """FAULT INJECTION, not data: a traffic gateway bursting physically impossible speeds.

    One reading a minute from 10:00 to 12:00 UTC on the synthetic council's second day; the first
    hour's have an average speed of 900 km/h (the contract allows at most 400), the second's 48.
    """
    messages = []
    for minute in range(FAULT_READINGS):
        reading = {
            "observed_at": f"{FAULT_DAY}T{10 + minute // 60:02d}:{minute % 60:02d}:00Z",
            "interval_s": 60,
            "lane_id": 1,
            "intensity": 30,
            "average_vehicle_speed": 900.0 if minute < FAULT_BURST else 48.0,
        }
        topic = f"{prefix}/synthetic/traffic/{FAULT_DEVICE}"
        messages.append((topic, json.dumps(reading, separators=(",", ":")).encode()))
    return messages


@dataclass(frozen=True)
class Replay:
    """What the demo publishes for one domain, and where it comes from."""

    domain: str
    kind: str  # "real" or "synthetic"
    description: str
    messages: list[tuple[str, bytes]]


def demo_replays(prefix: str) -> list[Replay]:
    """The messages of every domain, from `samples/` (real) or generated (traffic)."""
    from civicflow.ingest import samples

    return [
        Replay(
            "traffic",
            "synthetic + fault injection",
            "generated counters, council 'synthetic', 3 devices x 2 lanes every 5 min, "
            f"{', '.join(d.isoformat() for d in samples.SYNTHETIC_TRAFFIC_DAYS)}; plus FAULT "
            f"INJECTION: counter {FAULT_DEVICE!r} bursts {FAULT_BURST} of its {FAULT_READINGS} readings "
            f"on {FAULT_DAY} at an impossible 900 km/h, to show the gate holding that counter's day back",
            [*samples.synthetic_traffic_messages(prefix=prefix), *fault_injection_messages(prefix)],
        ),
        Replay(
            "parking",
            "real",
            f"Birmingham car parks, October 2016 (samples/parking/{samples.BIRMINGHAM_PARKING.name})",
            list(samples.birmingham_parking_messages(prefix=prefix)),
        ),
        Replay(
            "air_quality",
            "real",
            "Aberdeen Sensor.Community stations, 2018-01-01..02 "
            f"(samples/air_quality/{samples.ABERDEEN_AIR_QUALITY.name}/)",
            list(samples.aberdeen_air_quality_messages(prefix=prefix)),
        ),
        Replay(
            "waste",
            "real",
            "Edinburgh litter-bin fill sensors, 2016-07-25..08-07 "
            f"(samples/waste/{samples.EDINBURGH_WASTE.name})",
            list(samples.edinburgh_waste_messages(prefix=prefix)),
        ),
    ]


def run_demo(console: Console, data_root: Path) -> int:
    from civicflow.app.batch import run_batch
    from civicflow.app.progress import dag_progress, message_progress
    from civicflow.app.summary import print_summary, warehouse_summary
    from civicflow.ingest.broker import EmbeddedBroker
    from civicflow.ingest.gateway import publish_messages

    data_root = data_root.resolve()
    if data_root.exists():
        shutil.rmtree(data_root)
    data_root.mkdir(parents=True)
    base = Settings()
    replays = demo_replays(base.mqtt.topic_prefix)
    messages = [m for replay in replays for m in replay.messages]
    run_dir = data_root / "run"
    run_dir.mkdir()

    with ExitStack() as stack:
        if base.mqtt.host is None:
            broker = stack.enter_context(EmbeddedBroker(log_path=run_dir / "broker.log"))
            host, port, kind = broker.host, broker.port, "embedded amqtt broker"
        else:
            stack.enter_context(nullcontext())
            host, port, kind = base.mqtt.host, base.mqtt.port, "broker from CIVICFLOW_MQTT__HOST"
        console.print(f"[bold]1.[/] MQTT: {kind} at {escape(host)}:{port}")

        env = os.environ | {
            "CIVICFLOW_DATA_ROOT": str(data_root),
            "CIVICFLOW_MQTT__HOST": host,
            "CIVICFLOW_MQTT__PORT": str(port),
            "CIVICFLOW_MQTT__CLIENT_ID": DEMO_CLIENT_ID,
            "CIVICFLOW_LANDING__SEGMENT_MAX_AGE_S": "5",
            "CIVICFLOW_METRICS__PORT": "0",
        }
        status = data_root / "raw" / DEMO_CLIENT_ID / "status.json"
        log_file = (run_dir / "listener.log").open("w")
        listener = subprocess.Popen(
            [sys.executable, "-m", "civicflow.app.cli", "listen"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_status(
                status,
                listener,
                lambda d: d.get("state") == "subscribed",
                60,
                "waiting for the listener to subscribe",
            )
            console.print(
                f"[bold]2.[/] listener (pid {listener.pid}) subscribed to "
                f"{escape(base.mqtt.topic_prefix)}/# with QoS 1"
            )
            password = base.mqtt.password.get_secret_value() if base.mqtt.password else None
            started = time.monotonic()
            with message_progress(console, len(messages)) as progress:
                _replay(
                    lambda chunk: publish_messages(
                        host,
                        port,
                        chunk,
                        qos=1,
                        username=base.mqtt.username,
                        password=password,
                        timeout_s=300,
                    ),
                    messages,
                    status,
                    listener,
                    progress=progress,
                )
            console.print(
                f"[bold]3.[/] gateways published {len(messages):,} messages in "
                f"{time.monotonic() - started:.1f}s:"
            )
            for replay in replays:
                console.print(f"   {replay.domain}: {len(replay.messages):,} messages ({replay.kind} data)")
            doc = _wait_for_status(
                status,
                listener,
                lambda d: d.get("acked", 0) >= len(messages),
                300,
                "waiting for the listener to land every message",
            )
        finally:
            if listener.poll() is None:
                listener.send_signal(signal.SIGTERM)
                try:
                    listener.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    listener.kill()
                    listener.wait()
            log_file.close()
        console.print(
            f"[bold]4.[/] listener landed and acknowledged {doc['acked']:,} messages, "
            f"stopped with exit code {listener.returncode}"
        )
        if listener.returncode != 0:
            console.print(f"[red]listener failed; see {escape(str(run_dir / 'listener.log'))}[/]")
            return 1

    settings = Settings(data_root=data_root)
    console.print(
        "[bold]5.[/] running the batch DAGs through Airflow (civicflow_stage, then civicflow_publish)..."
    )
    with dag_progress(console) as on_progress:
        outcome = run_batch(settings, on_progress=on_progress)
    sources = {r.domain: (r.kind, r.description) for r in replays}
    print_summary(console, warehouse_summary(settings, count_topics=True), outcome, sources)
    if outcome.ok:
        print_next_steps(console, data_root)
    return 0 if outcome.ok else 1


def shown_path(path: Path) -> str:
    """A path as a user would type it here: relative under the working directory, else absolute."""
    path = path.absolute()
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def command_name() -> str:
    """How to run this `civicflow` again: its bare name where PATH finds this very script, else its path."""
    script = Path(sys.executable).parent / "civicflow"
    found = shutil.which("civicflow")
    if found and Path(found).resolve() == script.resolve():
        return "civicflow"
    return shown_path(script)


def print_next_steps(console: Console, data_root: Path) -> None:
    """Where to look next: the portal over what the demo published, and the one-screen status."""
    root, cli = escape(shown_path(data_root)), escape(command_name())
    console.print()
    console.print(
        f"[bold]Open-data portal[/] over this release: run\n"
        f"  [bold]CIVICFLOW_DATA_ROOT={root} {cli} serve[/]\n"
        f"and open [bold]http://127.0.0.1:8000/[/] (catalogue, dataset pages with charts and downloads; "
        f"API at /api/datasets, described at /docs; DCAT-AP at /catalog.jsonld)."
    )
    console.print(f"Pipeline on one screen: CIVICFLOW_DATA_ROOT={root} {cli} status --no-probe")
    console.print(f"These DAG runs in Airflow's UI: CIVICFLOW_DATA_ROOT={root} {cli} airflow")
