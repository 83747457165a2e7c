"""Backlog drain benchmark: the Civicflow listener against mosquitto_sub and a bare paho subscriber.

For each subscriber, on its own fresh private Mosquitto:

1. register the subscriber's persistent session (connect once with its fixed client id, subscribe
   to `city/#` at QoS 1, disconnect);
2. queue the backlog: publish N QoS 1 parking readings with the windowed gateway simulator and wait
   until the broker has acknowledged every one;
3. start the subscriber and time, from its spawn, until all N are received (mosquitto_sub, bare
   paho) or durably landed and acknowledged (the listener: `acked` in its status.json).

The listener is then stopped with SIGTERM and its raw segments are read back: they must hold
exactly the N published payloads. Run with `make bench`, or `python -m bench.drain --help`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.broker import Mosquitto, mosquitto_version
from bench.machine import filesystem, machine
from civicflow.ingest.gateway import publish_messages
from civicflow.warehouse.segments import list_closed_segments, read_segment

ROOT = Path(__file__).resolve().parent.parent
SUBSCRIBERS = ("listener", "bare_paho", "mosquitto_sub")
CLIENT_IDS = {
    "listener": "bench-listener",
    "bare_paho": "bench-bare-paho",
    "mosquitto_sub": "bench-mosquitto-sub",
}
TOPIC_FILTER = "city/#"
COUNCILS = ("birmingham", "leeds", "manchester", "bristol", "sheffield")
DEVICES_PER_COUNCIL = 80
DOCS_BEGIN = "<!-- bench:drain:begin -->"
DOCS_END = "<!-- bench:drain:end -->"


def make_messages(n: int, seed: int = 2024) -> list[tuple[str, bytes]]:
    """N distinct car-park readings in the wire contract, the same for a given `n` and `seed`.

    400 car parks (80 in each of 5 councils) report every 5 minutes, each at its own millisecond
    offset within the interval, so every payload is distinct.
    """
    rng = random.Random(seed)
    devices = [
        (council, f"{council[:3]}cp{j:03d}") for council in COUNCILS for j in range(DEVICES_PER_COUNCIL)
    ]
    start = datetime(2024, 3, 4, 0, 0, tzinfo=UTC)
    occupied = [rng.randint(0, 500) for _ in devices]
    messages = []
    for i in range(n):
        d = i % len(devices)
        council, device = devices[d]
        occupied[d] = min(500, max(0, occupied[d] + rng.randint(-12, 12)))
        observed = start + timedelta(seconds=300 * (i // len(devices)), milliseconds=700 * d)
        stamp = observed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{observed.microsecond // 1000:03d}Z"
        payload = json.dumps({"observed_at": stamp, "occupied_spots": occupied[d], "total_spots": 500})
        messages.append((f"city/{council}/parking/{device}", payload.encode()))
    return messages


@dataclass
class Child:
    """A subprocess reaped with wait4, so its own peak RSS and CPU time are known."""

    proc: subprocess.Popen[bytes]
    exit_code: int | None = None
    exited_at: float | None = None
    rusage: Any = None
    vm_hwm_kib: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> bool:
        """Reap the child if it has exited; return whether it has."""
        if self.exit_code is not None:
            return True
        self._sample_peak_rss()
        pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.exited_at = time.time()
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.exit_code
        self.rusage = rusage
        return True

    def _sample_peak_rss(self) -> None:
        # The kernel's high-water mark of the process's resident set. wait4's ru_maxrss cannot be
        # used: it also counts this (much larger) parent process, whose memory the child shared
        # between fork and exec. Sampled on every poll; the mark only grows.
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.vm_hwm_kib = max(self.vm_hwm_kib, int(line.split()[1]))

    def wait(self, timeout_s: float, interval_s: float = 0.005) -> int:
        deadline = time.monotonic() + timeout_s
        while not self.poll():
            if time.monotonic() > deadline:
                self.proc.kill()
                while not self.poll():
                    time.sleep(0.01)
                raise TimeoutError(f"{self.proc.args!r} did not finish within {timeout_s:g}s; killed")
            time.sleep(interval_s)
        assert self.exit_code is not None
        return self.exit_code

    def cpu_s(self) -> float:
        return self.rusage.ru_utime + self.rusage.ru_stime

    def max_rss_mib(self) -> float:
        return self.vm_hwm_kib / 1024


def busy_cpu_s() -> float:
    """CPU time the whole machine has spent busy since boot (all cores, all processes)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def spawn(cmd: list[str], *, env: dict[str, str] | None = None, stdout=None, log: Path) -> Child:
    with log.open("ab") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log_file,
            stderr=log_file,
        )
    return Child(proc)


@dataclass
class Options:
    messages: int
    repeat: int
    max_inflight: int
    publish_window: int
    workdir: Path
    timeout_s: float
    listener_env: dict[str, str] = field(default_factory=dict)
    listener_prefix: list[str] = field(default_factory=list)


class Run:
    """One subscriber draining one fresh backlog on its own broker."""

    def __init__(self, kind: str, repeat: int, opts: Options, messages: list[tuple[str, bytes]]) -> None:
        self.kind = kind
        self.opts = opts
        self.messages = messages
        self.client_id = CLIENT_IDS[kind]
        self.dir = opts.workdir / f"r{repeat}-{kind}"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.log = self.dir / "subscriber.log"
        self.data_root = self.dir / "data"
        self.broker: Mosquitto | None = None

    # -- the three subscribers -------------------------------------------------------------
    def _listener_env(self) -> dict[str, str]:
        assert self.broker is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIVICFLOW_")}
        env |= {
            "CIVICFLOW_DATA_ROOT": str(self.data_root),
            "CIVICFLOW_MQTT__HOST": self.broker.host,
            "CIVICFLOW_MQTT__PORT": str(self.broker.port),
            "CIVICFLOW_MQTT__CLIENT_ID": self.client_id,
            "CIVICFLOW_METRICS__PORT": "0",
        }
        return env | self.opts.listener_env

    def _listener_cmd(self) -> list[str]:
        script = Path(sys.executable).parent / "civicflow"
        return (
            [str(script), "listen"]
            if script.exists()
            else [sys.executable, "-m", "civicflow.app.cli", "listen"]
        )

    def _status_path(self) -> Path:
        return self.data_root / "raw" / self.client_id / "status.json"

    def _status(self) -> dict[str, Any]:
        try:
            return json.loads(self._status_path().read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _paho_cmd(self, *mode: str) -> list[str]:
        assert self.broker is not None
        return [
            sys.executable,
            "-m",
            "bench.bare_paho",
            "--port",
            str(self.broker.port),
            "--client-id",
            self.client_id,
            "--topic",
            TOPIC_FILTER,
            *mode,
        ]

    def _mosquitto_sub_cmd(self, *mode: str) -> list[str]:
        assert self.broker is not None
        return [
            shutil.which("mosquitto_sub") or "mosquitto_sub",
            "-h",
            self.broker.host,
            "-p",
            str(self.broker.port),
            "-V",
            "mqttv311",
            "-c",
            "-i",
            self.client_id,
            "-q",
            "1",
            "-t",
            TOPIC_FILTER,
            *mode,
        ]

    def register(self) -> None:
        """Create the subscriber's persistent session with its subscription, then disconnect."""
        if self.kind == "listener":
            child = spawn(self._listener_cmd(), env=self._listener_env(), log=self.log)
            self._wait_status(child, lambda s: s.get("state") == "subscribed", "subscribing")
            child.proc.send_signal(signal.SIGTERM)
            code = child.wait(30)
        elif self.kind == "bare_paho":
            code = spawn(self._paho_cmd("--register"), log=self.log).wait(30)
        else:
            code = spawn(self._mosquitto_sub_cmd("-E"), log=self.log).wait(30)
        if code != 0:
            raise RuntimeError(f"{self.kind} failed to register its session (exit {code}); see {self.log}")

    def _wait_status(self, child: Child, ready, what: str) -> dict[str, Any]:
        """Poll status.json until `ready(status)`; fail if the listener exits or stalls."""
        last, progress_at = -1, time.monotonic()
        while True:
            if child.poll():
                raise RuntimeError(f"listener exited ({child.exit_code}) while {what}; see {self.log}")
            status = self._status()
            if ready(status):
                return status
            if status.get("acked", 0) != last:
                last, progress_at = status.get("acked", 0), time.monotonic()
            if time.monotonic() - progress_at > self.opts.timeout_s:
                child.proc.kill()
                child.wait(30)
                raise TimeoutError(f"listener made no progress for {self.opts.timeout_s:g}s while {what}")
            time.sleep(0.01)

    def drain(self) -> dict[str, Any]:
        """Start the subscriber on the queued backlog and time it; return the measurements."""
        assert self.broker is not None
        n = self.opts.messages
        broker_cpu_before = self.broker.cpu_seconds()
        machine_before, self_before = busy_cpu_s(), self_cpu_s()
        result: dict[str, Any] = {"subscriber": self.kind, "client_id": self.client_id}
        if self.kind == "listener":
            self._status_path().unlink(missing_ok=True)
            started = time.time()
            child = spawn(
                self.opts.listener_prefix + self._listener_cmd(), env=self._listener_env(), log=self.log
            )
            status = self._wait_status(child, lambda s: s.get("acked", 0) >= n, "draining")
            finished = time.time()
            broker_cpu = self.broker.cpu_seconds() - broker_cpu_before
            raw_dir = self.data_root / "raw" / self.client_id
            last_write = max(
                p.stat().st_mtime_ns / 1e9 for p in raw_dir.iterdir() if p.suffix in (".open", ".seg")
            )
            child.poll()  # one more peak-RSS sample before shutdown
            if self.opts.listener_prefix:  # signal the listener, not the profiler wrapping it
                os.kill(int(status["pid"]), signal.SIGTERM)
            else:
                child.proc.send_signal(signal.SIGTERM)
            code = child.wait(60)
            if code != 0:
                raise RuntimeError(f"listener exited {code} after SIGTERM; see {self.log}")
            final = self._status()
            result |= self._verify_landed(raw_dir, started)
            result |= {
                "status_acked_at_s": finished - started,
                "last_segment_write_s": last_write - started,
                "acked": status["acked"],
                "flushes": final.get("flushes"),  # not in every version's status.json
                "received": final.get("received"),
                "sessions_lost": final.get("sessions_lost"),
            }
        else:
            started = time.time()
            if self.kind == "bare_paho":
                child = spawn(self._paho_cmd("--count", str(n)), stdout=subprocess.PIPE, log=self.log)
            else:
                child = spawn(self._mosquitto_sub_cmd("-C", str(n)), stdout=subprocess.DEVNULL, log=self.log)
            code = child.wait(self.opts.timeout_s * 10)
            broker_cpu = self.broker.cpu_seconds() - broker_cpu_before
            if code != 0:
                raise RuntimeError(f"{self.kind} exited {code}; see {self.log}")
            finished = child.exited_at
            assert finished is not None
            if self.kind == "bare_paho":
                assert child.proc.stdout is not None
                counted = json.loads(child.proc.stdout.read())
                child.proc.stdout.close()
                if counted["received"] != n:
                    raise RuntimeError(f"bare paho counted {counted['received']} of {n}")
                # Its own clock at the Nth message: a few ms before the process had exited.
                finished = counted["last"]
                result["first_message_s"] = counted["first"] - started
                result["last_message_s"] = counted["last"] - started
        # CPU that neither the subscriber, the broker nor this script used during the drain: other
        # work on the machine competing for its cores (should be near 0 for a clean measurement).
        other_cpu = (
            (busy_cpu_s() - machine_before) - (self_cpu_s() - self_before) - broker_cpu - child.cpu_s()
        )
        seconds = finished - started
        result |= {
            "other_cpu_s": max(0.0, other_cpu),
            "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
            "seconds": seconds,
            "msgs_per_s": n / seconds,
            "cpu_s": child.cpu_s(),
            "broker_cpu_s": broker_cpu,
            "max_rss_mib": child.max_rss_mib(),
        }
        return result

    def _verify_landed(self, raw_dir: Path, started: float) -> dict[str, Any]:
        """The closed segments must hold exactly the published payloads, each once."""
        records = [r for seg in list_closed_segments(raw_dir.parent) for r in read_segment(seg)]
        payloads = {r.payload for r in records}
        expected = {payload for _, payload in self.messages}
        if len(records) != len(self.messages) or payloads != expected:
            raise RuntimeError(
                f"listener landed {len(records)} records, {len(payloads)} distinct, "
                f"{len(expected - payloads)} missing, {len(payloads - expected)} unexpected"
            )
        return {
            "landed_records": len(records),
            "landed_distinct": len(payloads),
            "segments": len(list_closed_segments(raw_dir.parent)),
            "first_message_s": min(r.received_at_ns for r in records) / 1e9 - started,
            "last_message_s": max(r.received_at_ns for r in records) / 1e9 - started,
        }

    def execute(self) -> dict[str, Any]:
        with Mosquitto(self.dir / "broker", max_inflight=self.opts.max_inflight) as broker:
            self.broker = broker
            self.register()
            published = publish_messages(
                broker.host,
                broker.port,
                self.messages,
                qos=1,
                window=self.opts.publish_window,
                client_id="bench-gateway",
                timeout_s=self.opts.timeout_s,
            )
            if published.messages != self.opts.messages:
                raise RuntimeError(f"published {published.messages} of {self.opts.messages}")
            result = self.drain()
            result["publish_s"] = published.seconds
            result["payload_bytes"] = published.bytes
        self.broker = None
        return result


# -- reporting ------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import paho.mqtt

    return {"paho_mqtt": paho.mqtt.__version__, "mosquitto": mosquitto_version()}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for kind in SUBSCRIBERS:
        mine = [r for r in runs if r["subscriber"] == kind]
        if not mine:
            continue
        summary[kind] = {
            "runs": len(mine),
            "msgs_per_s": statistics.median(r["msgs_per_s"] for r in mine),
            "seconds": statistics.median(r["seconds"] for r in mine),
            "cpu_s": statistics.median(r["cpu_s"] for r in mine),
            "broker_cpu_s": statistics.median(r["broker_cpu_s"] for r in mine),
            "other_cpu_s": statistics.median(r["other_cpu_s"] for r in mine),
            "max_rss_mib": max(r["max_rss_mib"] for r in mine),
        }
        if kind == "listener":
            landed = [r["messages"] / r["last_segment_write_s"] for r in mine]
            summary[kind]["msgs_per_s_by_last_write"] = statistics.median(landed)
        if all("first_message_s" in r for r in mine):
            summary[kind]["first_message_s"] = statistics.median(r["first_message_s"] for r in mine)
            summary[kind]["streaming_msgs_per_s"] = statistics.median(
                (r["messages"] - 1) / (r["last_message_s"] - r["first_message_s"]) for r in mine
            )
    if "listener" in summary and "bare_paho" in summary:
        base = summary["bare_paho"]["msgs_per_s"]
        summary["ratio_listener_to_bare_paho"] = summary["listener"]["msgs_per_s"] / base
        summary["ratio_listener_to_bare_paho_by_last_write"] = (
            summary["listener"]["msgs_per_s_by_last_write"] / base
        )
    return summary


def markdown(report: dict[str, Any]) -> str:
    s, m, cfg = report["summary"], report["machine"], report["config"]
    labels = {
        "listener": "`civicflow listen` (ack after fsync)",
        "bare_paho": "bare paho, counting only",
        "mosquitto_sub": "`mosquitto_sub`",
    }
    base = s.get("bare_paho", {}).get("msgs_per_s")
    lines = [
        f"Run {report['date']} with `{report['command']}`.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, paho-mqtt {m['paho_mqtt']}, {m['mosquitto']}; "
        f"data and broker on {cfg['filesystem']}.",
        f"- Backlog: {cfg['messages']:,} QoS 1 parking readings ({cfg['payload_bytes_per_message']:.0f}-byte "
        f"payloads on 4-level topics), queued for an offline persistent session; Mosquitto "
        f"`max_inflight_messages {cfg['max_inflight']}` for every subscriber, `max_queued_messages 0`, "
        f"`max_queued_bytes 0`, `persistence true`.",
        f"- Listener settings: flush every {cfg['listener']['flush_max_messages']} messages or "
        f"{cfg['listener']['flush_max_delay_s'] * 1000:g} ms, fsync {cfg['listener']['fsync']}"
        + (f", overrides {cfg['listener_env']}" if cfg["listener_env"] else "")
        + ".",
        f"- {cfg['repeat']} run(s) of each subscriber, each on its own fresh broker and backlog; "
        + ("median shown." if cfg["repeat"] > 1 else "single run.")
        + f" Order: {', '.join(report['order'])}.",
        "",
        "| subscriber | drain time (s) | msg/s | vs bare paho | CPU (s) | broker CPU (s) "
        "| other CPU (s) | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in SUBSCRIBERS:
        if kind not in s:
            continue
        row = s[kind]
        ratio = f"{row['msgs_per_s'] / base:.2f}×" if base else "n/a"
        lines.append(
            f"| {labels[kind]} | {row['seconds']:.2f} | {row['msgs_per_s']:,.0f} | {ratio} | "
            f"{row['cpu_s']:.2f} | {row['broker_cpu_s']:.2f} | {row['other_cpu_s']:.2f} | "
            f"{row['max_rss_mib']:.0f} |"
        )
    if "listener" in s:
        lines += [
            "",
            f"Listener: by the time of its last segment write (the fsync and PUBACKs of that group follow "
            f"immediately) it ran at {s['listener']['msgs_per_s_by_last_write']:,.0f} msg/s"
            + (
                f", {s['ratio_listener_to_bare_paho_by_last_write']:.2f}× bare paho"
                if "ratio_listener_to_bare_paho_by_last_write" in s
                else ""
            )
            + ". The table's time is when its status.json first showed every message acknowledged "
            "(the listener rewrites that file at most every 0.5 s).",
        ]
    lines += [
        "",
        "CPU is user + system seconds during the drain; *other CPU* is what the rest of the machine "
        "used meanwhile (it competes for the cores, so it should be near 0). Peak RSS is the "
        "process's VmHWM.",
    ]
    streaming = [k for k in ("listener", "bare_paho") if "streaming_msgs_per_s" in s.get(k, {})]
    if streaming:
        lines += [
            "",
            "Start-up versus steady state (from each process's own receive timestamps): "
            + "; ".join(
                f"{labels[k]} got its first message {s[k]['first_message_s']:.2f} s after spawn and "
                f"then received {s[k]['streaming_msgs_per_s']:,.0f} msg/s up to the last one"
                for k in streaming
            )
            + ".",
        ]
    return "\n".join(lines)


def update_docs(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{DOCS_BEGIN}\n{DOCS_END}\n"
    if DOCS_BEGIN not in text or DOCS_END not in text:
        text += f"\n{DOCS_BEGIN}\n{DOCS_END}\n"
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    path.write_text(f"{head}{DOCS_BEGIN}\n{block}\n{DOCS_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.drain", description="Drain a queued QoS 1 backlog: listener vs baselines."
    )
    parser.add_argument("--messages", type=int, default=200_000, help="backlog size (default 200000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per subscriber; median reported")
    parser.add_argument(
        "--max-inflight", type=int, default=1000, help="Mosquitto max_inflight_messages (default 1000)"
    )
    parser.add_argument("--publish-window", type=int, default=5000, help="publisher's unacked window")
    parser.add_argument("--only", default=",".join(SUBSCRIBERS), help="comma-separated subscribers to run")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out", help="brokers and data")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="JSON results dir")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds without progress = failure")
    parser.add_argument(
        "--listener-env", action="append", default=[], metavar="KEY=VALUE", help="extra env for the listener"
    )
    parser.add_argument(
        "--listener-prefix", default="", help="command to run the timed listener under, e.g. a profiler"
    )
    parser.add_argument(
        "--update-docs", action="store_true", help="rewrite the results block of docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    if unknown := set(kinds) - set(SUBSCRIBERS):
        parser.error(f"unknown subscriber(s) {sorted(unknown)}; choose from {SUBSCRIBERS}")
    opts = Options(
        messages=args.messages,
        repeat=args.repeat,
        max_inflight=args.max_inflight,
        publish_window=args.publish_window,
        workdir=args.workdir.resolve(),
        timeout_s=args.timeout,
        listener_env=dict(kv.split("=", 1) for kv in args.listener_env),
        listener_prefix=args.listener_prefix.split(),
    )
    from civicflow.settings import LandingSettings

    landing = LandingSettings()
    messages = make_messages(opts.messages)
    runs: list[dict[str, Any]] = []
    order: list[str] = []
    for rep in range(opts.repeat):
        # Rotate the order each repeat so that no subscriber always goes first or last.
        rotated = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]
        for kind in rotated:
            print(f"[repeat {rep + 1}/{opts.repeat}] {kind}: registering, queueing {opts.messages:,} ...")
            result = Run(kind, rep, opts, messages).execute()
            result |= {"repeat": rep, "messages": opts.messages}
            runs.append(result)
            order.append(kind)
            print(
                f"[repeat {rep + 1}/{opts.repeat}] {kind}: {result['seconds']:.2f}s, "
                f"{result['msgs_per_s']:,.0f} msg/s, peak RSS {result['max_rss_mib']:.0f} MiB"
            )
    cli_args = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    if os.environ.get("MAKELEVEL"):
        command = f'make bench BENCH_ARGS="{cli_args}"' if cli_args else "make bench"
    else:
        command = f"python -m bench.drain {cli_args}".strip()
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(**versions()),
        "config": {
            "messages": opts.messages,
            "repeat": opts.repeat,
            "max_inflight": opts.max_inflight,
            "publish_window": opts.publish_window,
            "filesystem": filesystem(opts.workdir),
            "payload_bytes_per_message": runs[0]["payload_bytes"] / opts.messages,
            "listener": landing.model_dump(),
            "listener_env": opts.listener_env,
            "listener_prefix": opts.listener_prefix,
        },
        "order": order,
        "runs": runs,
        "summary": summarise(runs),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"drain-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    block = markdown(report)
    print()
    print(block)
    print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    ratio = report["summary"].get("ratio_listener_to_bare_paho")
    if ratio is not None:
        verdict = "meets" if ratio >= 0.8 else "misses"
        print(f"listener / bare paho = {ratio:.2f}×: {verdict} the 0.8× target")
    if args.update_docs:
        update_docs(ROOT / "docs" / "benchmarks.md", block)
        print("updated docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
