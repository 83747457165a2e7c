"""Zero loss under faults, with a real Mosquitto and real `civicflow listen` processes.

Each test breaks something the way production breaks it (SIGKILL, a broker restart, a full disk,
an unwritable directory, a broker that forgot the session) and then counts what landed.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import pytest
from brokers import run_mosquitto
from listeners import ListenerProcess, landed_payloads

from civicflow.health import closed_backlog
from civicflow.ingest.gateway import publish_messages
from civicflow.jobs import publish_job, stage_job
from civicflow.settings import Settings
from civicflow.warehouse.layout import Layout

pytestmark = pytest.mark.integration
BASE = datetime(2026, 5, 1, tzinfo=UTC).timestamp()


def readings(n: int, start: int = 0, council: str = "testtown") -> Iterator[tuple[str, bytes]]:
    """Valid parking readings, one natural key each, all on 2026-05-01; msg_id carries the sequence."""
    for i in range(start, n):
        yield (
            f"city/{council}/parking/p{i % 50}",
            b'{"observed_at":%.1f,"occupied_spots":%d,"total_spots":100,"msg_id":"m%d"}'
            % (BASE + i / 10, i % 100, i),
        )


def paced(messages: Iterator[tuple[str, bytes]], per_second: float) -> Iterator[tuple[str, bytes]]:
    """At most `per_second` messages a second, as a fleet of gateways sends them: the run lasts
    long enough for every kill to land while messages are still arriving."""
    started = time.monotonic()
    for i, message in enumerate(messages):
        ahead = i / per_second - (time.monotonic() - started)
        if ahead > 0.01:
            time.sleep(ahead)
        yield message


def sequences(payloads: list[bytes]) -> set[int]:
    return {int(orjson.loads(p)["msg_id"][1:]) for p in payloads}


def publish_in_background(port: int, messages, **kwargs) -> threading.Thread:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            publish_messages("127.0.0.1", port, messages, client_id="test-gateway", **kwargs)
        except BaseException as exc:  # surfaced by join_publisher
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def join_publisher(thread: threading.Thread, timeout_s: float = 300) -> None:
    thread.join(timeout=timeout_s)
    assert not thread.is_alive(), "the gateway did not finish publishing"
    assert not thread.errors, thread.errors  # type: ignore[attr-defined]


def gated(n: int, stretch: int, gates: list[threading.Event]) -> Iterator[tuple[str, bytes]]:
    """`readings(n)`, the k-th stretch of `stretch` readings held back until `gates[k]` is set and
    then paced at 4,000 a second."""
    for k, start in enumerate(range(0, n, stretch)):
        if not gates[k].wait(timeout=600):
            raise TimeoutError(f"stretch {k} was never released")
        yield from paced(readings(min(n, start + stretch), start), per_second=4_000)


def test_sigkill_ten_times_during_100k_messages_loses_nothing_and_publishes_each_once(tmp_path):
    n, stretch = 100_000, 10_000
    data_root = tmp_path / "data"
    log = tmp_path / "listener.log"
    kills = 0
    gates = [threading.Event() for _ in range(n // stretch)]
    with run_mosquitto(tmp_path, persistence=True) as broker:
        listener = ListenerProcess(data_root, broker.port, log).start()
        listener.wait_subscribed()
        # Ten stretches of 10,000 readings, each paced over about 2.5 s and released once the
        # listener before it was killed: each process is killed while its stretch is arriving
        # (or queued at the broker), however slowly the machine restarts it.
        publisher = publish_in_background(
            broker.port,
            gated(n, stretch, gates),
            window=2000,
            timeout_s=900,
        )
        try:
            for kills in range(1, 11):  # noqa: B007 (counted for the assertion below)
                gates[kills - 1].set()
                # Let this process land part of the stretch, then kill it without warning.
                listener.wait_for(lambda: listener.own_status().get("acked", 0) >= 3_000, 120, "landing")
                listener.kill()
                listener.start()
                listener.wait_subscribed()
            join_publisher(publisher)
            final = listener.wait_settled()
            assert listener.terminate() == 0
        finally:
            for gate in gates:
                gate.set()
            listener.ensure_stopped()
    assert kills == 10
    assert final["sessions_lost"] == 0
    landed = landed_payloads(data_root / "raw")
    missing = set(range(n)) - sequences(landed)
    assert not missing, f"{len(missing)} messages never landed, e.g. {sorted(missing)[:5]}"
    assert len(landed) >= n  # at least once: redeliveries after a kill land twice

    settings = Settings(data_root=data_root)
    staged = stage_job(settings)
    assert staged["readings"] == len(landed)
    assert staged["duplicates"] == len(landed) - n
    published = publish_job(settings)
    assert published["published"] == 1
    con = duckdb.connect()
    dataset_dir = Layout(data_root).latest / "parking"  # what consumers read
    package = orjson.loads((dataset_dir / "datapackage.json").read_bytes())
    files = [
        str(dataset_dir / r["path"])
        for r in package["resources"]
        if r["path"].endswith(".parquet") and r["path"].startswith("council=")  # the day files
    ]
    total, distinct = con.execute(
        "SELECT count(*), count(DISTINCT (device_id, observed_at)) FROM read_parquet($files)",
        {"files": files},
    ).fetchone()
    assert (total, distinct) == (n, n)


def test_broker_restart_mid_run_loses_nothing(tmp_path):
    n = 30_000
    data_root = tmp_path / "data"
    with run_mosquitto(tmp_path, persistence=True) as broker:
        listener = ListenerProcess(data_root, broker.port, tmp_path / "listener.log").start()
        try:
            listener.wait_subscribed()
            publish_messages("127.0.0.1", broker.port, readings(n // 2), client_id="test-gateway")
            listener.wait_for(lambda: listener.status().get("acked", 0) >= 2_000, 60, "landing")
            broker.stop()  # graceful: Mosquitto saves sessions and queued messages
            broker.start()
            publish_messages("127.0.0.1", broker.port, readings(n, n // 2), client_id="test-gateway")
            final = listener.wait_settled()
            assert listener.terminate() == 0
        finally:
            listener.ensure_stopped()
    assert final["connects"] >= 2
    assert final["sessions_lost"] == 0
    assert sequences(landed_payloads(data_root / "raw")) == set(range(n))


def test_a_broker_that_lost_the_session_is_reported_loudly(tmp_path):
    data_root = tmp_path / "data"
    log = tmp_path / "listener.log"
    with run_mosquitto(tmp_path, persistence=False) as broker:
        listener = ListenerProcess(data_root, broker.port, log).start()
        try:
            listener.wait_subscribed()
            broker.stop()
            broker.start()  # no persistence: the listener's session is gone
            listener.wait_for(lambda: listener.status().get("connects", 0) >= 2, 60, "reconnecting")
            status = listener.wait_subscribed()
            code, health = listener.health()
            metrics = listener.metrics()
            # It goes on landing in its new session.
            publish_messages("127.0.0.1", broker.port, readings(5), client_id="test-gateway")
            listener.wait_for(lambda: listener.own_status().get("acked", 0) >= 5, 30, "landing")
            assert listener.terminate() == 0
        finally:
            listener.ensure_stopped()
    assert (status["sessions_lost"], status["sessions_lost_by_cause"]) == (1, {"not_present": 1})
    assert status["session_lost"]["cause"] == "not_present"
    # Subscribed and landing, yet unhealthy for a while: the queue it had is gone.
    assert (code, health["state"], health["healthy"]) == (503, "subscribed", False)
    assert health["last_error"].startswith("SESSION LOST: broker mqtt://127.0.0.1:")
    assert "ask the councils to resend them" in health["last_error"]
    [line] = [line for line in log.read_text().splitlines() if "SESSION LOST" in line]
    assert "[error" in line and "Check the broker's persistence settings" in line
    assert re.search(r'^civicflow_listener_sessions_lost_total\{cause="not_present"\} 1\.0$', metrics, re.M)
    assert re.search(r'^civicflow_listener_sessions_lost_total\{cause="taken_over"\} 0\.0$', metrics, re.M)
    assert re.search(r"^civicflow_listener_healthy 0\.0$", metrics, re.M)
    assert len(landed_payloads(data_root / "raw")) == 5


def civicflow_status(data_root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "civicflow.app.cli", "status", "--json"],
        env=os.environ | {"CIVICFLOW_DATA_ROOT": str(data_root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs root to mount a small tmpfs as a full disk: {exc}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, leave_bytes: int) -> Path:
    stat = os.statvfs(directory)
    filler = directory / "filler"
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave_bytes))
    return filler


def _fault_and_recover(tmp_path: Path, data_root: Path, break_it, fix_it) -> None:
    """Run gateways through a landing fault: the listener must stop acking, say so, and resume."""
    n = 20_000
    with run_mosquitto(tmp_path, persistence=True) as broker:
        listener = ListenerProcess(
            data_root, broker.port, tmp_path / "listener.log", CIVICFLOW_LANDING__SEGMENT_MAX_AGE_S="0.3"
        ).start()
        try:
            listener.wait_subscribed()
            publisher = publish_in_background(broker.port, readings(n), window=500, timeout_s=300)
            listener.wait_for(lambda: listener.status().get("acked", 0) >= 2_000, 60, "landing")
            break_it()
            code, doc = listener.wait_for(
                lambda: (h := listener.health())[1].get("state") == "landing_failed" and h, 60, "failing"
            )
            assert code == 503 and doc["healthy"] is False and "refused a write" in doc["last_error"]
            acked = doc["acked"]
            time.sleep(1.5)
            assert listener.health()[1]["acked"] == acked, "acknowledged while it could not land"
            status = civicflow_status(data_root)
            assert status.returncode == 1, status.stdout + status.stderr
            [report] = orjson.loads(status.stdout)["listeners"]
            assert (report["source"], report["state"], report["healthy"]) == ("live", "landing_failed", False)
            fix_it()
            listener.wait_for(lambda: listener.health()[0] == 200, 60, "resuming")
            join_publisher(publisher)
            final = listener.wait_settled()
            assert listener.terminate() == 0
        finally:
            listener.ensure_stopped()
    assert final["landing_failures"] >= 1
    landed = landed_payloads(data_root / "raw")
    assert sequences(landed) == set(range(n))


def test_full_disk_stops_acknowledging_reports_unhealthy_and_resumes_without_loss(tmp_path):
    data_root = tmp_path / "data"
    with tmpfs(data_root / "raw", "6m") as raw:
        filler: list[Path] = []
        _fault_and_recover(
            tmp_path,
            data_root,
            break_it=lambda: filler.append(fill(raw, leave_bytes=96 * 1024)),
            fix_it=lambda: filler[0].unlink(),
        )
        # read before the tmpfs goes away
        assert len(landed_payloads(raw)) >= 20_000


def test_unwritable_landing_directory_stops_acknowledging_and_resumes_without_loss(tmp_path):
    data_root = tmp_path / "data"
    directory = data_root / "raw" / "test-listener"

    def chattr(flag: str) -> None:
        result = subprocess.run(["chattr", flag, str(directory)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"needs chattr on this filesystem to make a directory unwritable: {result.stderr}")

    try:
        _fault_and_recover(tmp_path, data_root, break_it=lambda: chattr("+i"), fix_it=lambda: chattr("-i"))
    finally:
        subprocess.run(["chattr", "-i", str(directory)], capture_output=True, check=False)


def test_two_listeners_share_one_subscription_and_together_land_everything(tmp_path):
    n = 20_000
    data_root = tmp_path / "data"
    with run_mosquitto(tmp_path, persistence=True) as broker:
        group = {"CIVICFLOW_MQTT__SHARED_GROUP": "civicflow"}
        listeners = [
            ListenerProcess(data_root, broker.port, tmp_path / f"{name}.log", client_id=name, **group)
            for name in ("listener-a", "listener-b")
        ]
        try:
            for listener in listeners:
                listener.start()
            for listener in listeners:
                listener.wait_subscribed()
            publish_messages("127.0.0.1", broker.port, readings(n), client_id="test-gateway")
            for listener in listeners:
                listener.wait_settled()
            for listener in listeners:
                assert listener.terminate() == 0
        finally:
            for listener in listeners:
                listener.ensure_stopped()
    shares = [sequences(landed_payloads_of(data_root, lp.client_id)) for lp in listeners]
    assert all(len(share) > n // 10 for share in shares), [len(s) for s in shares]  # both took load
    assert shares[0] | shares[1] == set(range(n))
    assert [closed_backlog(lp.directory) for lp in listeners] != [0, 0]
    staged = stage_job(Settings(data_root=data_root))
    assert staged["readings"] - staged["duplicates"] == n
    assert [closed_backlog(lp.directory) for lp in listeners] == [0, 0]  # staging caught up


def landed_payloads_of(data_root: Path, client_id: str) -> list[bytes]:
    from civicflow.warehouse.segments import list_closed_segments, read_segment

    return [
        r.payload
        for p in list_closed_segments(data_root / "raw")
        if p.parent.name == client_id
        for r in read_segment(p)
    ]
