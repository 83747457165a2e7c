"""One fuzz run end to end: Mosquitto, `civicflow listen`, staging and publication, then the account.

`run_fuzz` publishes the messages (QoS 1, in windows, as a gateway does) with a control council's
clean readings among them through a private Mosquitto to a real `civicflow listen` process, and
waits for the listener's own count of received messages to reach the number the broker delivers
(what matches its subscriptions), never for a time. Topics Mosquitto refuses are sent on
throwaway connections of their own (the broker drops those connections). A last clean message
then proves the listener still lands; it must be healthy, on its first connection, and exit 0 on
SIGTERM. The raw zone must hold exactly the bytes delivered.

Then staging and publication run, through the jobs layer (`stage_job`, `publish_job`: what the DAG
tasks call) or through `civicflow batch` (Airflow's `dag.test()`), and `accounting.account` checks
every reading of every landed message; the control council must be published exactly as sent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from brokers import run_mosquitto
from listeners import ListenerProcess
from paho.mqtt.enums import CallbackAPIVersion

from civicflow.ingest.gateway import publish_messages
from civicflow.jobs import _limits, publish_job, stage_job
from civicflow.settings import LORAWAN_TOPIC_FILTERS, Settings
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from fuzz.accounting import Ledger, account, check_control, landed_records
from fuzz.corpus import fuzz_registry, write_registry_dir
from fuzz.generators import CONTROL_COUNCIL, PREFIX, Message, control_messages, matches, publishable

TOPIC_FILTERS = (f"{PREFIX}/#", *LORAWAN_TOPIC_FILTERS)
CANARY: Message = (b"city/fuzzcanary/parking/c1", b'{"observed_at":"2026-03-01T12:00:00Z","status":"free"}')
SILENCE_S = 120.0
"""Longest time without progress (acknowledgements, messages landed) before a run is failed."""


@dataclass
class Run:
    """What a fuzz run sent, what landed and what became of it."""

    messages: int = 0
    control: int = 0
    sent: int = 0
    delivered: int = 0
    refused_by_broker: int = 0
    refused_sent: int = 0
    landed: int = 0
    listener: dict = field(default_factory=dict)
    listener_exit: int | None = None
    ledger: Ledger = field(default_factory=Ledger)
    listener_problems: list[str] = field(default_factory=list)
    landing_problems: list[str] = field(default_factory=list)
    batch_problems: list[str] = field(default_factory=list)
    control_problems: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    stage: dict = field(default_factory=dict)
    publish: dict = field(default_factory=dict)
    via: str = "jobs"
    seed: int | None = None

    def all_problems(self) -> list[str]:
        return [
            *self.listener_problems,
            *self.landing_problems,
            *self.batch_problems,
            *self.control_problems,
            *self.ledger.all_problems(),
        ]


def wait_progress(count: Callable[[], int], target: int, what: str, proc=None) -> int:
    """Wait until `count()` reaches `target`; fail after SILENCE_S seconds without any progress."""
    last, since = -1, time.monotonic()
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"listener exited ({proc.returncode}) while {what}")
        now = count()
        if now >= target:
            return now
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > SILENCE_S:
            raise AssertionError(f"{what}: stuck at {now} of {target} for {SILENCE_S:.0f}s")
        time.sleep(0.05)


def send_refused(port: int, topic: bytes, payload: bytes, timeout_s: float = 30) -> None:
    """Publish to a topic Mosquitto refuses, on a connection of its own; wait for the broker to drop it."""
    dropped = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
    client.on_disconnect = lambda *args: dropped.set()
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.wait(timeout_s), "no CONNACK for the refused-topic client"
        # paho checks only wildcards and length; the bytes go out as given
        info = client.publish(topic.decode("utf-8", "surrogatepass"), payload, qos=1)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            assert dropped.wait(timeout_s), f"Mosquitto kept the connection after topic {topic[:60]!r}"
    except (ValueError, UnicodeEncodeError):
        pass  # paho refuses it itself (a wildcard, or not encodable): nothing reaches the broker
    finally:
        client.disconnect()
        client.loop_stop()


def run_fuzz(
    messages: Sequence[Message],
    workdir: Path,
    *,
    via: str = "jobs",
    refused_max: int = 10,
    window: int = 1000,
    log: Callable[[str], None] = lambda _: None,
) -> Run:
    """Run messages through broker, listener, staging and publication; account for everything."""
    run = Run(messages=len(messages), via=via)
    control = control_messages()
    run.control = len(control)
    sendable = [m for m in messages if publishable(m[0])]
    refused = [m for m in messages if not publishable(m[0])]
    stream = _mix(sendable, control)
    delivered = [m for m in stream if any(matches(f, m[0].decode()) for f in TOPIC_FILTERS)]
    run.sent, run.delivered, run.refused_by_broker = len(stream), len(delivered), len(refused)
    registry_dir = write_registry_dir(workdir / "registry")
    data_root = workdir / "data"
    settings = Settings(data_root=data_root, registry_dir=registry_dir)
    started = time.monotonic()
    with run_mosquitto(workdir, persistence=False) as broker:
        listener = ListenerProcess(
            data_root, broker.port, workdir / "listener.log", client_id="fuzz-listener"
        )
        listener.start()
        try:
            listener.wait_subscribed()
            log(f"publishing {len(stream):,} messages to Mosquitto on port {broker.port}")
            publish_messages(
                "127.0.0.1",
                broker.port,
                ((t.decode(), p) for t, p in stream),
                window=window,
                timeout_s=SILENCE_S,
                client_id="fuzz-gateway",
            )
            run.seconds["publish"] = time.monotonic() - started
            received = lambda: listener.own_status().get("received", 0)  # noqa: E731
            wait_progress(received, len(delivered), "landing the delivered messages", listener.proc)
            sample = refused[:: max(1, len(refused) // refused_max)][:refused_max]
            for topic, payload in sample:
                send_refused(broker.port, topic, payload)
            run.refused_sent = len(sample)
            publish_messages(
                "127.0.0.1", broker.port, [(CANARY[0].decode(), CANARY[1])], client_id="fuzz-canary"
            )
            wait_progress(
                received, len(delivered) + 1, "landing the canary after the fuzz input", listener.proc
            )
            status, health = listener.health()
            run.listener = listener.own_status()
            if status != 200 or not health.get("healthy"):
                run.listener_problems.append(f"listener unhealthy after the fuzz input: {status} {health}")
            if run.listener.get("connects") != 1 or run.listener.get("received") != len(delivered) + 1:
                run.listener_problems.append(
                    f"listener reconnected or received more than was sent: {run.listener}"
                )
            run.listener_exit = listener.terminate()
            if run.listener_exit != 0:
                run.listener_problems.append(
                    f"listener exited {run.listener_exit} on SIGTERM; see {listener.log}"
                )
        finally:
            listener.ensure_stopped()
    run.seconds["listen"] = time.monotonic() - started - run.seconds.get("publish", 0)
    layout = Layout(data_root)
    landed = Counter((r.topic, r.payload) for _, r in landed_records(layout))
    run.landed = sum(landed.values())
    wanted = Counter([*delivered, CANARY])
    if landed != wanted:
        missing, extra = wanted - landed, landed - wanted
        run.landing_problems.append(
            f"the raw zone holds {run.landed} messages, {len(wanted)} were delivered: "
            f"{sum(missing.values())} missing (e.g. {list(missing)[:2]}), {sum(extra.values())} extra "
            f"(e.g. {list(extra)[:2]})"
        )
    clock = time.monotonic()
    if via == "batch":
        run.batch_problems.extend(_batch(settings, workdir, log))
    else:
        log("staging and publishing through the jobs layer (stage_job, publish_job)")
        run.stage = stage_job(settings, registry_dir)
        run.seconds["stage"] = time.monotonic() - clock
        run.publish = publish_job(settings)
    run.seconds["stage_publish"] = time.monotonic() - clock
    clock = time.monotonic()
    con = connect(layout.warehouse, read_only=True)
    try:
        run.ledger = account(layout, con, _limits(settings), fuzz_registry())
        run.control_problems.extend(check_control(con, CONTROL_COUNCIL, control))
    finally:
        con.close()
    run.seconds["account"] = time.monotonic() - clock
    return run


def _mix(sendable: list[Message], control: list[Message]) -> list[Message]:
    out: list[Message] = []
    every = max(1, len(sendable) // max(1, len(control)))
    pending = list(reversed(control))
    for i, message in enumerate(sendable):
        if pending and i % every == 0:
            out.append(pending.pop())
        out.append(message)
    out.extend(reversed(pending))
    return out


def _batch(settings: Settings, workdir: Path, log: Callable[[str], None]) -> list[str]:
    """`civicflow batch` as a data engineer runs it: the stage and publish DAGs through Airflow."""
    log("staging and publishing through `civicflow batch` (Airflow dag.test())")
    env = os.environ | {
        "CIVICFLOW_DATA_ROOT": str(settings.data_root.resolve()),
        "CIVICFLOW_REGISTRY_DIR": str(Path(settings.registry_dir).resolve()),
    }
    out = workdir / "batch.log"
    with out.open("w") as fh:
        rc = subprocess.call(
            [sys.executable, "-m", "civicflow.app.cli", "batch"], env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    if rc != 0:
        return [f"civicflow batch exited {rc}; see {out} and {settings.data_root / 'airflow' / 'logs'}"]
    return []


def summary(run: Run, seed: int | None = None) -> str:
    """What a run did, in the words of docs/fuzzing.md: messages, readings and where each went."""
    ledger = run.ledger
    quarantined = ledger.quarantined
    path = "civicflow batch" if run.via == "batch" else "the jobs layer"
    lines = [
        f"fuzz run{'' if seed is None else f' (seed {seed})'}: {run.messages:,} messages "
        f"+ {run.control} control readings, through {path}",
        f"  broker: {run.sent:,} published, {run.delivered:,} delivered to the listener "
        f"({run.sent - run.delivered:,} on topics it does not subscribe to); "
        f"{run.refused_by_broker:,} on topics Mosquitto refuses "
        f"({run.refused_sent} sent, connections dropped)",
        f"  listener: {run.landed:,} landed (with the canary), "
        f"{'healthy' if not run.listener_problems else 'NOT healthy'}, "
        f"{run.listener.get('connects', '?')} connection, exit {run.listener_exit}",
        f"  readings landed {ledger.landed_readings:,} = published {ledger.total('published'):,} "
        f"+ held back {ledger.total('held'):,} + quarantined {sum(quarantined.values()):,} "
        f"+ collapsed duplicates {ledger.total('collapsed'):,}",
        "  quarantined by reason: " + ", ".join(f"{r} {n:,}" for r, n in quarantined.most_common()),
        f"  warehouse: {ledger.partitions} partitions, {ledger.holds} holds, "
        f"{ledger.corrections} corrections",
        "  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in run.seconds.items()),
    ]
    problems = run.all_problems()
    if problems:
        lines.append(f"  {len(problems)} PROBLEMS:")
        lines.extend(f"   - {p[:600]}" for p in problems[:50])
    else:
        lines.append("  nothing unaccounted for")
    return "\n".join(lines)
