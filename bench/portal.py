"""Portal API benchmark: `civicflow serve` over a year of 200 car parks, against DuckDB itself.

1. the release: a year (2025) of readings from 200 car parks (4 councils of 50) reporting every
   30 minutes, 3.5 million readings, published with the project's own publish code
   (`civicflow.publish.partition.publish_partition` per council and day, which writes the readings and
   their aggregates and records the publication, then `civicflow.publish.release.release` with the
   quality summary, which writes the data package and cuts the release, as `gate_and_publish`
   runs them). Staging and the Great Expectations gate are left out: at 1,460 partitions the
   gate alone would take most of an hour, and what the portal reads is only the release. It is
   kept under the work directory and reused while its parameters are the same;
2. `civicflow serve` in its own process (real uvicorn on a free loopback port), as a consumer
   would run it;
3. (a) one-device, one-month readings queries through the API, one after another (median and
   p95 of the repeats), and the ceiling in the same run: DuckDB reading the same rows from the
   same month's Parquet files of the release directly; the API's rows must be the ceiling's;
   (b) 50 concurrent clients issuing a fixed mix of queries for a bounded time and count; any
   error (not 200, or an exception) fails the run.

Run with `make bench-portal`, or `python -m bench.portal --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import code_version, filesystem, machine

ROOT = Path(__file__).resolve().parent.parent
COUNCILS = ("leeds", "manchester", "bristol", "sheffield")
DEVICES_PER_COUNCIL = 50
INTERVAL_S = 1800
YEAR = 2025
PUBLISHED_AT = datetime(2026, 1, 1, 6, 0, tzinfo=UTC)
SPEC = {
    "councils": list(COUNCILS),
    "devices_per_council": DEVICES_PER_COUNCIL,
    "interval_s": INTERVAL_S,
    "year": YEAR,
    "version": 2,  # 2: aggregates published with each partition, Table Schema files, a manifest
}
CLIENTS = 50
TARGET_MEDIAN_S = 0.25
TARGET_P95_S = 0.5
DOCS_BEGIN = "<!-- bench:portal:begin -->"
DOCS_END = "<!-- bench:portal:end -->"


def device_ids(council: str) -> list[str]:
    return [f"{council[:3]}-cp{j:03d}" for j in range(DEVICES_PER_COUNCIL)]


def days() -> list[date]:
    first = date(YEAR, 1, 1)
    return [first + timedelta(days=i) for i in range((date(YEAR + 1, 1, 1) - first).days)]


# -- the release ----------------------------------------------------------------------------


def _day_rows(council: str, day: date, rng: np.random.Generator, state: dict[str, np.ndarray]):
    """A council's readings of one day as the staged rows the publisher takes (every column)."""
    import pyarrow as pa

    devices = device_ids(council)
    slots = 86_400 // INTERVAL_S
    n = len(devices) * slots
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    offsets = state["offset_s"]  # each car park reports at its own second within the interval
    seconds = start + np.repeat(offsets, slots) + np.tile(np.arange(slots) * INTERVAL_S, len(devices))
    total = np.repeat(state["total"], slots)
    # Occupancy follows the day (busy 10:00-17:00) with noise; every value within [0, total].
    hour = (np.tile(np.arange(slots), len(devices)) * INTERVAL_S) / 3600
    busy = np.clip(np.sin((hour - 6) / 13 * np.pi), 0, None) * 0.85 + 0.05
    occupied = np.clip(np.round(total * busy + rng.normal(0, 0.05, n) * total), 0, total).astype(np.int64)
    return pa.table(
        {
            "council": pa.array([council] * n, pa.string()),
            "device_id": pa.array(np.repeat(np.array(devices, dtype=object), slots), pa.string()),
            "observed_at": pa.array(seconds * 1_000_000, pa.timestamp("us", tz="UTC")),
            "occupied_spots": pa.array(occupied, pa.int64()),
            "total_spots": pa.array(total, pa.int64()),
            "status": pa.nulls(n, pa.string()),
            "occupancy": pa.array(occupied / total, pa.float64()),
            "lat": pa.nulls(n, pa.float64()),
            "lon": pa.nulls(n, pa.float64()),
            "qc_flag": pa.nulls(n, pa.string()),
        }
    )


def build_release(data_root: Path) -> dict[str, Any]:
    """Publish the year of readings under `data_root` with the publisher's own functions."""
    from civicflow.contract import DATASETS, Domain
    from civicflow.expectations.summary import quality_summary
    from civicflow.publish.partition import publish_partition
    from civicflow.publish.release import release
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.layout import Layout

    shutil.rmtree(data_root, ignore_errors=True)
    layout = Layout(data_root)
    con = connect(layout.warehouse)  # a writable connect creates every table the publisher uses
    dataset = DATASETS[Domain.PARKING]
    rng = np.random.default_rng(YEAR)
    states = {
        c: {
            "offset_s": rng.integers(0, INTERVAL_S, DEVICES_PER_COUNCIL),
            "total": rng.choice([120, 250, 400, 800], DEVICES_PER_COUNCIL),
        }
        for c in COUNCILS
    }
    # Aggregates are written with each partition's publication, so publishing includes them.
    timings = {"publish_partitions_s": 0.0}
    readings = partitions = 0
    for day in days():
        t0 = time.perf_counter()
        for council in COUNCILS:
            rows = _day_rows(council, day, rng, states[council])
            publish_partition(con, layout, dataset, council, day, 1, rows, PUBLISHED_AT)
            readings += rows.num_rows
            partitions += 1
        timings["publish_partitions_s"] += time.perf_counter() - t0
        if (day + timedelta(days=1)).day == 1:
            print(f"  published {day:%Y-%m}: {readings:,} readings so far", flush=True)
    t0 = time.perf_counter()
    quality = {Domain.PARKING.value: quality_summary(con, Domain.PARKING, PUBLISHED_AT)}
    outcome = release(con, layout, now=PUBLISHED_AT, quality=quality)
    timings["package_and_release_s"] = time.perf_counter() - t0
    con.close()
    if not outcome.cut or outcome.marked != partitions:
        raise RuntimeError(f"the release holds {outcome.marked} of {partitions} partitions ({outcome})")
    path = layout.releases / outcome.release
    files = [p for p in path.rglob("*") if p.is_file()]
    return {
        "readings": readings,
        "partitions": partitions,
        "release": outcome.release,
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "parquet_readings_bytes": sum(
            p.stat().st_size for p in (path / "parking").glob("council=*/date=*/*.parquet")
        ),
        "datapackage_bytes": (path / "parking" / "datapackage.json").stat().st_size,
        "timings": timings,
    }


def ensure_release(workdir: Path, fresh: bool) -> dict[str, Any]:
    """The release under `workdir`, built unless one of the same SPEC is already there."""
    marker = workdir / "release.json"
    if not fresh and marker.is_file():
        known = json.loads(marker.read_text())
        if known.get("spec") == SPEC and (workdir / "data" / "published" / "latest").is_symlink():
            known["reused"] = True
            return known
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    t0 = time.perf_counter()
    built = build_release(workdir / "data")
    built["seconds"] = time.perf_counter() - t0
    built["spec"] = SPEC
    marker.write_text(json.dumps(built, indent=2))
    built["reused"] = False
    return built


# -- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`civicflow serve` over a data root, in its own process, until stopped."""

    def __init__(self, data_root: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        script = Path(sys.executable).parent / "civicflow"
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "civicflow.app.cli"]
        self.command = [*cmd, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIVICFLOW_")}
        env["CIVICFLOW_DATA_ROOT"] = str(data_root)
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout_s: float = 60) -> float:
        import httpx

        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"civicflow serve exited {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + "/api/datasets", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError(f"civicflow serve did not answer within {timeout_s:g}s; see {self.log}")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


# -- (a) one device, one month --------------------------------------------------------------


@dataclass(frozen=True)
class MonthQuery:
    council: str
    device_id: str
    month: int

    @property
    def start(self) -> datetime:
        return datetime(YEAR, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return datetime(YEAR + self.month // 12, self.month % 12 + 1, 1, tzinfo=UTC)

    def params(self) -> dict[str, str | int]:
        return {
            "council": self.council,
            "device_id": self.device_id,
            "start": self.start.isoformat().replace("+00:00", "Z"),
            "end": self.end.isoformat().replace("+00:00", "Z"),
            "limit": 2000,  # a month of one car park is 1,440 to 1,488 readings: one page
        }


def month_queries(n: int) -> list[MonthQuery]:
    """`n` different one-device, one-month queries, spread over councils, devices and months."""
    out = []
    for i in range(n):
        council = COUNCILS[i % len(COUNCILS)]
        out.append(MonthQuery(council, device_ids(council)[(i * 7) % DEVICES_PER_COUNCIL], 1 + (i * 5) % 12))
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q, method="linear"))


def api_month(url: str, queries: list[MonthQuery], warmup: int) -> dict[str, Any]:
    """Each query through the API, one after another on one keep-alive connection."""
    import httpx

    seconds, rows, answers = [], [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for q in month_queries(warmup + len(queries))[len(queries) :]:
            client.get("/api/datasets/parking/readings", params=q.params()).raise_for_status()
        for q in queries:
            t0 = time.perf_counter()
            answer = client.get("/api/datasets/parking/readings", params=q.params())
            body = answer.json()
            seconds.append(time.perf_counter() - t0)
            answer.raise_for_status()
            if body["next"] is not None:
                raise RuntimeError(f"{q} did not fit in one page")
            rows.append(body["count"])
            answers.append([(r["observed_at"], r["occupied_spots"]) for r in body["rows"]])
    return {"seconds": seconds, "rows": rows, "answers": answers}


def ceiling_month(release: Path, queries: list[MonthQuery], warmup: int) -> dict[str, Any]:
    """The same rows read by DuckDB directly from that month's Parquet files of the release."""
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    sql = (
        "SELECT observed_at, occupied_spots FROM read_parquet(?) "
        "WHERE device_id = ? AND observed_at >= ? AND observed_at < ? ORDER BY observed_at"
    )

    def run(q: MonthQuery):
        files = sorted(
            str(p) for p in release.glob(f"parking/council={q.council}/date={YEAR}-{q.month:02d}-*/*.parquet")
        )
        return con.sql(sql, params=[files, q.device_id, q.start, q.end]).to_arrow_table()

    for q in month_queries(warmup + len(queries))[len(queries) :]:
        run(q)
    seconds, rows, answers = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        table = run(q)
        seconds.append(time.perf_counter() - t0)
        rows.append(table.num_rows)
        stamps = [t.isoformat().replace("+00:00", "Z") for t in table["observed_at"].to_pylist()]
        answers.append(list(zip(stamps, table["occupied_spots"].to_pylist(), strict=True)))
    (threads,) = con.execute("SELECT current_setting('threads')").fetchone()
    con.close()
    return {"seconds": seconds, "rows": rows, "answers": answers, "threads": threads}


def latency(seconds: list[float]) -> dict[str, float]:
    return {
        "n": len(seconds),
        "median_s": statistics.median(seconds),
        "p95_s": percentile(seconds, 95),
        "p99_s": percentile(seconds, 99),
        "min_s": min(seconds),
        "max_s": max(seconds),
    }


# -- (b) concurrent clients -----------------------------------------------------------------


def mixed_queries(n: int, seed: int = 2025) -> list[tuple[str, str, dict[str, Any]]]:
    """A fixed, shuffled mix of consumer queries: (label, path, params)."""
    rng = random.Random(seed)

    def device() -> tuple[str, str]:
        council = rng.choice(COUNCILS)
        return council, rng.choice(device_ids(council))

    def day() -> date:
        return date(YEAR, 1, 1) + timedelta(days=rng.randrange(365))

    def z(d: date) -> str:
        return f"{d.isoformat()}T00:00:00Z"

    def make(kind: str) -> tuple[str, str, dict[str, Any]]:
        council, dev = device()
        d = day()
        month = date(d.year, d.month, 1)
        next_month = (month + timedelta(days=32)).replace(day=1)
        if kind == "readings, device, day":
            params = {"council": council, "device_id": dev, "start": z(d), "end": z(d + timedelta(days=1))}
            return kind, "/api/datasets/parking/readings", params
        if kind == "readings, device, month":
            params = {
                "council": council,
                "device_id": dev,
                "start": z(month),
                "end": z(next_month),
                "limit": 2000,
            }
            return kind, "/api/datasets/parking/readings", params
        if kind == "readings, device, week, CSV":
            params = {
                "council": council,
                "device_id": dev,
                "start": z(d),
                "end": z(d + timedelta(days=7)),
                "format": "csv",
            }
            return kind, "/api/datasets/parking/readings", params
        if kind == "hourly, device, month":
            params = {"council": council, "device_id": dev, "start": z(month), "end": z(next_month)}
            return kind, "/api/datasets/parking/hourly", params
        if kind == "daily, council, month":
            params = {"council": council, "start": z(month), "end": z(next_month), "limit": 2000}
            return kind, "/api/datasets/parking/daily", params
        if kind == "council_daily, council, year":
            return kind, "/api/datasets/parking/council_daily", {"council": council, "limit": 5000}
        return kind, "/api/datasets", {}

    weights = {
        "readings, device, day": 3,
        "readings, device, month": 3,
        "readings, device, week, CSV": 2,
        "hourly, device, month": 2,
        "daily, council, month": 1,
        "council_daily, council, year": 1,
        "datasets": 1,
    }
    kinds = [k for k, w in weights.items() for _ in range(w)]
    return [make(rng.choice(kinds)) for _ in range(n)]


async def _load(url: str, queries: list[tuple[str, str, dict[str, Any]]], clients: int, duration_s: float):
    import httpx

    results: list[tuple[str, float, int, int]] = []  # label, seconds, status, bytes
    errors: list[str] = []
    position = 0
    deadline = time.monotonic() + duration_s

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal position
        while position < len(queries) and time.monotonic() < deadline:
            label, path, params = queries[position]
            position += 1
            t0 = time.perf_counter()
            try:
                answer = await client.get(path, params=params)
                body = answer.content
            except httpx.HTTPError as exc:
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                continue
            results.append((label, time.perf_counter() - t0, answer.status_code, len(body)))
            if answer.status_code != 200:
                errors.append(f"{label}: HTTP {answer.status_code}: {body[:200]!r}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return results, errors, time.perf_counter() - started


def concurrent_load(
    url: str, clients: int, max_requests: int, duration_s: float, server: Server
) -> dict[str, Any]:
    queries = mixed_queries(max_requests)
    cpu0, self0, busy0 = server.cpu_s(), _self_cpu_s(), _busy_cpu_s()
    results, errors, seconds = asyncio.run(_load(url, queries, clients, duration_s))
    server_cpu, client_cpu = server.cpu_s() - cpu0, _self_cpu_s() - self0
    by_kind: dict[str, list[float]] = {}
    for label, s, _, _ in results:
        by_kind.setdefault(label, []).append(s)
    return {
        "clients": clients,
        "requests": len(results) + sum(1 for e in errors if "HTTP " not in e),
        "ok": sum(1 for r in results if r[2] == 200),
        "errors": errors,
        "seconds": seconds,
        "throughput_rps": len(results) / seconds if seconds else 0.0,
        "bytes": sum(r[3] for r in results),
        "latency": latency([r[1] for r in results]) if results else {},
        "by_kind": {k: latency(v) for k, v in sorted(by_kind.items())},
        "server_cpu_s": server_cpu,
        "client_cpu_s": client_cpu,
        # what the rest of the machine used meanwhile: it competes for the same cores
        "other_cpu_s": max(0.0, _busy_cpu_s() - busy0 - server_cpu - client_cpu),
    }


def _busy_cpu_s() -> float:
    """CPU time the whole machine has spent busy since boot (all cores, all processes)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _self_cpu_s() -> float:
    usage = os.times()
    return usage.user + usage.system


# -- reporting ------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import duckdb
    import fastapi
    import httpx
    import pyarrow
    import uvicorn

    return {
        "duckdb": duckdb.__version__,
        "pyarrow": pyarrow.__version__,
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
        "httpx": httpx.__version__,
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def verdicts(report: dict[str, Any]) -> list[str]:
    api, load = report["month"]["api"], report["load"]
    ok_a = api["median_s"] <= TARGET_MEDIAN_S and api["p95_s"] <= TARGET_P95_S
    ok_b = not load["errors"]
    return [
        f"one device, one month through the API: median {_ms(api['median_s'])} ms, "
        f"p95 {_ms(api['p95_s'])} ms: "
        f"{'meets' if ok_a else 'misses'} the target (median ≤ {_ms(TARGET_MEDIAN_S)} ms, "
        f"p95 ≤ {_ms(TARGET_P95_S)} ms); {report['month']['ratio']:.1f}× the DuckDB ceiling's median",
        f"{load['clients']} concurrent clients: {load['ok']:,} of {load['requests']:,} requests "
        "answered 200, "
        f"{len(load['errors'])} errors: {'meets' if ok_b else 'misses'} the zero-error requirement",
    ]


def markdown(report: dict[str, Any]) -> str:
    m, rel, month, load = report["machine"], report["release"], report["month"], report["load"]
    cfg = report["config"]
    code = report["code"]
    lines = [
        f"Run {report['date']} with `{report['command']}`.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, DuckDB {m['duckdb']}, pyarrow {m['pyarrow']}, FastAPI {m['fastapi']}, "
        f"uvicorn {m['uvicorn']}, httpx {m['httpx']} (the clients); release on {cfg['filesystem']}. "
        f"Load average before the run: {' '.join(report['loadavg_before'])}.",
        f"- Code: commit {code['commit']}"
        + (f", with uncommitted changes to {', '.join(code['uncommitted'])}" if code["uncommitted"] else "")
        + ".",
        f"- Release: {rel['readings']:,} parking readings of {YEAR} ({len(COUNCILS)} councils × "
        f"{DEVICES_PER_COUNCIL} car parks, every {INTERVAL_S // 60} min), {rel['partitions']:,} "
        f"council × day partitions; {rel['files']:,} files, {rel['bytes'] / 2**20:,.0f} MiB "
        f"({rel['parquet_readings_bytes'] / 2**20:,.0f} MiB of readings Parquet), "
        f"`datapackage.json` {rel['datapackage_bytes'] / 2**20:,.1f} MiB"
        + (
            f"; built in {rel['seconds']:.0f} s."
            if not rel.get("reused")
            else f"; reused from an earlier run (built in {rel['seconds']:.0f} s)."
        ),
        "- Server: `civicflow serve` (one uvicorn process), answering after "
        f"{report['server']['ready_s']:.1f} s; "
        f"peak RSS {report['server']['peak_rss_mib']:,.0f} MiB.",
        "",
        f"**(a) One device, one month of readings** ({month['api']['n']} different queries, "
        "one after another, "
        f"after {cfg['warmup']} warm-up queries; {statistics.median(month['rows']):,.0f} rows each, median):",
        "",
        "| reader | median (ms) | p95 (ms) | p99 (ms) | min (ms) | max (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, key in (
        ("API, JSON over HTTP", "api"),
        (f"ceiling: DuckDB on the month's Parquet files ({month['ceiling_threads']} threads)", "ceiling"),
    ):
        row = month[key]
        lines.append(
            f"| {label} | {_ms(row['median_s'])} | {_ms(row['p95_s'])} | {_ms(row['p99_s'])} | "
            f"{_ms(row['min_s'])} | {_ms(row['max_s'])} |"
        )
    lines += [
        "",
        f"API / ceiling (medians): {month['ratio']:.1f}×. Every answer held exactly the ceiling's rows.",
        "",
        f"**(b) {load['clients']} concurrent clients**, a fixed mix of queries, at most "
        f"{cfg['max_requests']:,} requests or {cfg['duration_s']:g} s: {load['requests']:,} requests in "
        f"{load['seconds']:.1f} s, "
        f"**{load['throughput_rps']:,.1f} requests/s**, {len(load['errors'])} errors; "
        f"{load['bytes'] / 2**20:,.0f} MiB answered. Server CPU {load['server_cpu_s']:.0f} s, "
        f"client CPU {load['client_cpu_s']:.0f} s (same machine), other processes "
        f"{load['other_cpu_s']:.0f} s; "
        f"{load['server_cpu_s'] / max(1, load['ok']) * 1000:.0f} ms of server CPU per request.",
        "",
        "| query | requests | median (ms) | p95 (ms) | p99 (ms) | max (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, row in [*load["by_kind"].items(), ("all", load["latency"])]:
        name = f"**{label}**" if label == "all" else label
        lines.append(
            f"| {name} | {row['n']:,} | {_ms(row['median_s'])} | {_ms(row['p95_s'])} | {_ms(row['p99_s'])} | "
            f"{_ms(row['max_s'])} |"
        )
    lines += ["", *(f"- {v}" for v in verdicts(report))]
    return "\n".join(lines)


def update_docs(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{DOCS_BEGIN}\n{DOCS_END}\n"
    if DOCS_BEGIN not in text or DOCS_END not in text:
        text = text.rstrip("\n") + f"\n\n{DOCS_BEGIN}\n{DOCS_END}\n"
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    path.write_text(f"{head}{DOCS_BEGIN}\n{block}\n{DOCS_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.portal",
        description="civicflow serve over a year of 200 car parks: queries vs DuckDB, then many clients.",
    )
    parser.add_argument("--repeats", type=int, default=40, help="one-month queries timed (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed queries first (default 5)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent clients (default 50)")
    parser.add_argument("--max-requests", type=int, default=3000, help="load phase: at most this many (3000)")
    parser.add_argument("--duration", type=float, default=60.0, help="load phase: at most this long (60 s)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "portal", help="the release")
    parser.add_argument("--fresh", action="store_true", help="rebuild the release even if one is there")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="JSON results dir")
    parser.add_argument(
        "--update-docs", action="store_true", help="rewrite the results block of docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    cli_args = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    if os.environ.get("MAKELEVEL"):
        command = f'make bench-portal BENCH_PORTAL_ARGS="{cli_args}"' if cli_args else "make bench-portal"
    else:
        command = f"python -m bench.portal {cli_args}".strip()
    workdir = args.workdir.resolve()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(**versions()),
        "code": code_version("portal", "publish", "warehouse", "civicflow"),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "config": {
            "repeats": args.repeats,
            "warmup": args.warmup,
            "clients": args.clients,
            "max_requests": args.max_requests,
            "duration_s": args.duration,
            "spec": SPEC,
        },
    }
    print(f"release under {workdir} ...", flush=True)
    report["release"] = ensure_release(workdir, args.fresh)
    report["config"]["filesystem"] = filesystem(workdir)
    rel = report["release"]
    print(
        f"release {rel['release']}: {rel['readings']:,} readings, {rel['files']:,} files"
        + (" (reused)" if rel["reused"] else f", built in {rel['seconds']:.0f} s"),
        flush=True,
    )
    release_dir = workdir / "data" / "published" / "releases" / rel["release"]
    server = Server(workdir / "data", workdir / "serve.log")
    try:
        ready = server.wait_ready()
        report["server"] = {"command": " ".join(server.command[-5:]), "ready_s": ready}
        print(f"civicflow serve answering on {server.url} after {ready:.1f}s", flush=True)
        queries = month_queries(args.repeats)
        api = api_month(server.url, queries, args.warmup)
        ceiling = ceiling_month(release_dir, queries, args.warmup)
        for q, got, want in zip(queries, api["answers"], ceiling["answers"], strict=True):
            if got != want:
                raise RuntimeError(
                    f"the API's rows for {q} are not DuckDB's ({len(got)} against {len(want)})"
                )
        report["month"] = {
            "api": latency(api["seconds"]),
            "ceiling": latency(ceiling["seconds"]),
            "ceiling_threads": ceiling["threads"],
            "rows": api["rows"],
        }
        report["month"]["ratio"] = report["month"]["api"]["median_s"] / report["month"]["ceiling"]["median_s"]
        a, c = report["month"]["api"], report["month"]["ceiling"]
        print(
            f"(a) API median {_ms(a['median_s'])} ms, p95 {_ms(a['p95_s'])} ms; "
            f"ceiling median {_ms(c['median_s'])} ms",
            flush=True,
        )
        report["load"] = concurrent_load(server.url, args.clients, args.max_requests, args.duration, server)
        load = report["load"]
        print(
            f"(b) {load['requests']:,} requests in {load['seconds']:.1f}s, {load['throughput_rps']:,.0f}/s, "
            f"{len(load['errors'])} errors",
            flush=True,
        )
        report["server"]["peak_rss_mib"] = server.peak_rss_mib()
    finally:
        report.setdefault("server", {})["exit_code"] = server.stop()
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"portal-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    block = markdown(report)
    print()
    print(block)
    print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    for error in report["load"]["errors"][:10]:
        print(f"error: {error}")
    if args.update_docs:
        update_docs(ROOT / "docs" / "benchmarks.md", block)
        print("updated docs/benchmarks.md")
    return 1 if report["load"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
