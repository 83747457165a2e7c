"""Staging benchmark: `stage_job` on raw segments against DuckDB's own `read_json` → Parquet.

For each size (0.5, 1, 2 and 5 million readings by default), in a throwaway data root:

1. generate the readings: native-contract messages of the four domains, one reading per message,
   from a fixed fleet of devices in five councils reporting on their own schedules (so a larger
   backlog spans more days, as a longer outage does); written with `SegmentWriter` into 64 MiB raw
   segments, and the same readings as newline-delimited JSON, one file per domain, with the
   topic's council and device id as fields;
2. the ceiling, in a fresh process: DuckDB reads each domain's NDJSON with `read_json` and writes
   zstd Parquet partitioned by council and event date (`COPY ... PARTITION_BY`); and, as a second
   reference, the same without partitioning (one Parquet file per domain);
3. staging, in a fresh process: `civicflow.jobs.stage_job` on the data root, with the checkout's
   device registry, exactly as the Airflow task runs it (decode, de-duplicate, load `staged.*`
   in DuckDB, record the ledger and corrections, export the council × date Parquet partitions).
   The run fails unless every reading was staged once and nothing was quarantined.

Each timed process reports its own wall time (imports excluded), CPU time and peak resident set
(VmHWM). Run with `make bench-stage`, or `python -m bench.stage --help`.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import pstats
import random
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.machine import code_version, filesystem, machine

ROOT = Path(__file__).resolve().parent.parent
COUNCILS = ("leeds", "manchester", "bristol", "sheffield", "newcastle")
DOMAINS = ("traffic", "parking", "air_quality", "waste")
LISTENER_ID = "bench-listener"
SLOT_S = 300
START_S = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp())
# Per council: traffic counters (two lanes each, one message per lane every 5 min), car parks and
# air-quality monitors every 5 min, litter bins every hour (a twelfth of them in each 5 min slot).
TRAFFIC_COUNTERS = 120
CAR_PARKS = 60
AIR_MONITORS = 40
BINS = 2400
BIN_EVERY_SLOTS = 12
MESSAGES_PER_SLOT = len(COUNCILS) * (
    2 * TRAFFIC_COUNTERS + CAR_PARKS + AIR_MONITORS + BINS // BIN_EVERY_SLOTS
)
SEGMENT_MAX_BYTES = 64 * 1024 * 1024
TARGET_RATIO = 0.5
TARGET_PEAK_MIB = 1.5 * 1024
TARGET_GROWTH = 11.0
DOCS_BEGIN = "<!-- bench:stage:begin -->"
DOCS_END = "<!-- bench:stage:end -->"


# -- the readings ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 16)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _iso(seconds: int, fraction_ms: int | None = None, offset: str = "Z") -> str:
    text = _second(seconds)
    if fraction_ms is not None:
        text += f".{fraction_ms:03d}"
    return text + offset


def make_readings(
    n: int, seed: int = 2026, councils: tuple[str, ...] = COUNCILS
) -> Iterator[tuple[str, str, str, dict[str, Any], int]]:
    """The first `n` messages of the fleet's backlog: (council, domain, device_id, reading, received_ns).

    Deterministic for a given `seed`: a smaller run is a prefix of a larger one. Every reading is
    valid under the contract and has its own natural key, so staging must keep all of them.
    Each of `councils` has the same fleet.
    """
    rng = random.Random(seed)
    fleet: list[tuple[str, str, str, int, list[Any]]] = []  # council, domain, device, offset_s, state
    for council in councils:
        c = council[:3]
        fleet += [
            (council, "traffic", f"{c}-tc{j:04d}", 0, [rng.randint(5, 60)]) for j in range(TRAFFIC_COUNTERS)
        ]
        fleet += [
            (
                council,
                "parking",
                f"{c}-cp{j:03d}",
                rng.randrange(SLOT_S),
                [0, rng.choice((120, 250, 400, 800))],
            )
            for j in range(CAR_PARKS)
        ]
        fleet += [
            (
                council,
                "air_quality",
                f"{c}-aq{j:03d}",
                rng.randrange(SLOT_S),
                [53.0 + rng.random() * 2, -2.5 + rng.random() * 2, rng.uniform(10, 60)],
            )
            for j in range(AIR_MONITORS)
        ]
        fleet += [
            (
                council,
                "waste",
                f"{c}-bin{j:05d}",
                rng.randrange(SLOT_S * BIN_EVERY_SLOTS),
                [rng.random() * 0.3],
            )
            for j in range(BINS)
        ]
    emitted = 0
    slot = 0
    while True:
        t = START_S + slot * SLOT_S
        for index, (council, domain, device, offset, state) in enumerate(fleet):
            if domain == "traffic":
                base = state[0]
                hour = (t // 3600) % 24
                rush = 2.0 if hour in (7, 8, 16, 17) else (0.3 if hour < 6 else 1.0)
                for lane in (1, 2):
                    count = max(0, int(base * rush * (0.7 + 0.6 * rng.random())))
                    reading: dict[str, Any] = {
                        "observed_at": _iso(t),
                        "intensity": count,
                        "average_vehicle_speed": round(20 + 40 * rng.random(), 1),
                        "occupancy": round(min(1.0, count / 400 + 0.05 * rng.random()), 3),
                        "lane_id": lane,
                        "interval_s": SLOT_S,
                    }
                    if index % 2:
                        reading["msg_id"] = f"{device}-{lane}-{slot}"
                    yield council, domain, device, reading, (t + 2) * 1_000_000_000 + rng.randrange(10**9)
                    emitted += 1
                    if emitted >= n:
                        return
                continue
            if domain == "waste" and (offset // SLOT_S) != slot % BIN_EVERY_SLOTS:
                continue
            observed = t + offset % SLOT_S
            if domain == "parking":
                total = state[1]
                state[0] = min(total, max(0, state[0] + rng.randint(-12, 14)))
                reading = {
                    "observed_at": _iso(observed, rng.randrange(1000)),
                    "occupied_spots": state[0],
                    "total_spots": total,
                }
            elif domain == "air_quality":
                lat, lon, no2 = state
                no2 = state[2] = min(400.0, max(1.0, no2 + rng.uniform(-4, 4)))
                reading = {
                    "observed_at": _iso(observed, offset="+00:00"),
                    "no2": round(no2, 1),
                    "pm10": round(8 + 30 * rng.random(), 1),
                    "pm25": round(4 + 18 * rng.random(), 1),
                    "temperature": round(4 + 8 * rng.random(), 1),
                    "relative_humidity": round(0.55 + 0.4 * rng.random(), 2),
                    "lat": round(lat, 5),
                    "lon": round(lon, 5),
                }
            else:
                state[0] = 0.05 if state[0] > 0.95 else state[0] + 0.02 * rng.random()
                reading = {
                    "observed_at": _iso(observed),
                    "filling_level": round(state[0], 3),
                    "temperature": round(3 + 9 * rng.random(), 1),
                    "status": "lidOpen" if rng.random() < 0.01 else "ok",
                }
            yield council, domain, device, reading, (observed + 1) * 1_000_000_000 + rng.randrange(10**9)
            emitted += 1
            if emitted >= n:
                return
        slot += 1


def write_backlog(
    n: int,
    data_root: Path,
    ndjson_dir: Path,
    segment_max_bytes: int = SEGMENT_MAX_BYTES,
    councils: tuple[str, ...] = COUNCILS,
) -> dict[str, Any]:
    """Land `n` messages of `councils`' fleets as the listener would (raw segments of at most
    `segment_max_bytes`) and as NDJSON; return what was written."""
    from civicflow.warehouse.segments import SegmentWriter

    clock = [float(START_S)]
    raw_dir = data_root / "raw" / LISTENER_ID
    writer = SegmentWriter(
        raw_dir, max_bytes=segment_max_bytes, max_age_s=1e12, fsync=False, clock=lambda: clock[0]
    )
    ndjson_dir.mkdir(parents=True, exist_ok=True)
    files = {d: (ndjson_dir / f"{d}.ndjson").open("wb") for d in DOMAINS}
    per_domain = dict.fromkeys(DOMAINS, 0)
    payload_bytes = 0
    days: set[str] = set()
    count = 0
    try:
        for council, domain, device, reading, received_ns in make_readings(n, councils=councils):
            clock[0] = received_ns / 1e9
            payload = orjson.dumps(reading)
            writer.append(f"city/{council}/{domain}/{device}".encode(), payload, received_ns)
            files[domain].write(orjson.dumps({"council": council, "device_id": device, **reading}) + b"\n")
            per_domain[domain] += 1
            payload_bytes += len(payload)
            count += 1
            if count % 20_000 == 0:
                writer.flush()
                days.add(reading["observed_at"][:10])
            if writer.due_to_roll():
                writer.roll()
            last_day = reading["observed_at"][:10]
        writer.close()
        if count:
            days.add(last_day)
    finally:
        for fh in files.values():
            fh.close()
    if count != n:
        raise RuntimeError(f"generated {count} messages, expected {n}")
    segments = sorted(raw_dir.glob("*.seg"))
    return {
        "messages": count,
        "per_domain": per_domain,
        "payload_bytes_per_message": payload_bytes / count,
        "segments": len(segments),
        "segment_bytes": sum(p.stat().st_size for p in segments),
        "ndjson_bytes": sum(p.stat().st_size for p in ndjson_dir.glob("*.ndjson")),
        "first_day": min(days, default=None),
        "last_day": max(days, default=None),
    }


# -- the timed children ---------------------------------------------------------------------


def _vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_stage(workdir: Path, profile: Path | None) -> dict[str, Any]:
    """Time `stage_job` on `workdir/data`, as the Airflow task calls it."""
    # Imported before the clock starts, as in a warm worker. pandas too: DuckDB imports it on the
    # first `register()` of an Arrow table, a one-off of several seconds per process here.
    import pandas  # noqa: F401

    import civicflow.registry  # noqa: F401
    import civicflow.transforms.stage  # noqa: F401
    import civicflow.warehouse.db  # noqa: F401
    from civicflow.jobs import stage_job
    from civicflow.settings import Settings

    settings = Settings(data_root=workdir / "data")
    profiler = cProfile.Profile() if profile else None
    cpu0, t0 = _cpu(), time.perf_counter()
    if profiler:
        profiler.enable()
    result = stage_job(settings)
    if profiler:
        profiler.disable()
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    if profiler and profile:
        profiler.dump_stats(profile)
    result.pop("changed_partitions", None)
    return {"seconds": seconds, "cpu_s": cpu, "vm_hwm_kib": _vm_hwm_kib(), "result": result}


def child_ceiling(workdir: Path, partitioned: bool, threads: int | None = None) -> dict[str, Any]:
    """Time DuckDB's `read_json` → zstd Parquet for each domain's NDJSON (on `threads` threads;
    None: DuckDB's default, one per core)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    out = workdir / ("ceiling" if partitioned else "ceiling-plain")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cpu0, t0 = _cpu(), time.perf_counter()
    for domain in DOMAINS:
        source = workdir / "ndjson" / f"{domain}.ndjson"
        if partitioned:
            con.execute(
                f"COPY (SELECT *, CAST(observed_at AS DATE) AS event_date "
                f"FROM read_json('{source}', format = 'newline_delimited')) "
                f"TO '{out / domain}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (council, event_date))"
            )
        else:
            con.execute(
                f"COPY (SELECT * FROM read_json('{source}', format = 'newline_delimited')) "
                f"TO '{out / domain}.parquet' (FORMAT parquet, COMPRESSION zstd)"
            )
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    files = sorted(out.rglob("*.parquet"))
    (rows,) = con.execute(f"SELECT count(*) FROM read_parquet({[str(f) for f in files]!r})").fetchone()
    types = con.execute(
        f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{files[0]}'))"
    ).fetchall()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "vm_hwm_kib": _vm_hwm_kib(),
        "rows": rows,
        "files": len(files),
        "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
        "first_file_types": dict(types),
    }


# -- the parent -----------------------------------------------------------------------------


def busy_cpu_s() -> float:
    """CPU time the whole machine has spent busy since boot (all cores, all processes)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_child(kind: str, workdir: Path, timeout_s: float, extra: list[str] | None = None) -> dict[str, Any]:
    """Run one timed child in a fresh interpreter; return its report plus what the machine did."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIVICFLOW_")}
    cmd = [sys.executable, "-m", "bench.stage", "--child", kind, "--workdir", str(workdir), *(extra or [])]
    log = workdir / f"{kind}.log"
    machine_before, spawned = busy_cpu_s(), time.time()
    with log.open("ab") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log_file)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            hwm = 0
            try:  # its peak so far, read before it is stopped
                status = Path(f"/proc/{proc.pid}/status").read_text()
                hwm = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:")))
            except (OSError, StopIteration):
                pass
            proc.kill()
            proc.communicate()
            return {"kind": kind, "timed_out": True, "timeout_s": timeout_s, "peak_rss_mib": hwm / 1024}
    wall = time.time() - spawned
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child exited {proc.returncode}; see {log}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    other = (busy_cpu_s() - machine_before) - report["cpu_s"]
    return report | {
        "kind": kind,
        "wall_from_spawn_s": wall,
        # CPU the rest of the machine used while the child ran (interpreter start-up included):
        # other work competing for the two cores. Near 0 for a clean measurement.
        "other_cpu_s": max(0.0, other),
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "peak_rss_mib": report["vm_hwm_kib"] / 1024,
    }


def verify_staged(workdir: Path, n: int, stage: dict[str, Any]) -> dict[str, Any]:
    """Every reading staged once, nothing quarantined, and the Parquet partitions hold them all."""
    import duckdb

    result = stage["result"]
    if result["readings"] != n or result["records"] != n or result["quarantined"] or result["duplicates"]:
        raise RuntimeError(f"staging did not keep exactly the {n} readings: {result}")
    con = duckdb.connect(str(workdir / "data" / "warehouse" / "civicflow.duckdb"), read_only=True)
    try:
        in_tables = sum(con.execute(f"SELECT count(*) FROM staged.{d}").fetchone()[0] for d in DOMAINS)
    finally:
        con.close()
    files = sorted((workdir / "data" / "staged").rglob("*.parquet"))
    (in_files,) = (
        duckdb.connect().execute(f"SELECT count(*) FROM read_parquet({[str(f) for f in files]!r})").fetchone()
    )
    if in_tables != n or in_files != n:
        raise RuntimeError(f"staged tables hold {in_tables} rows and Parquet {in_files}, expected {n}")
    return {"staged_rows": in_tables, "parquet_rows": in_files, "parquet_files": len(files)}


def committed_readings(workdir: Path) -> int | None:
    """Readings in the segments a stopped staging run had committed (its ledger), if readable."""
    import duckdb

    try:
        con = duckdb.connect(str(workdir / "data" / "warehouse" / "civicflow.duckdb"), read_only=True)
    except duckdb.Error:
        return None
    try:
        return int(con.execute("SELECT coalesce(sum(readings), 0) FROM raw.segments").fetchone()[0])
    finally:
        con.close()


def versions() -> dict[str, str]:
    import duckdb
    import pyarrow

    return {"duckdb": duckdb.__version__, "pyarrow": pyarrow.__version__, "orjson": orjson.__version__}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in runs if "stage" in r and not r["stage"].get("timed_out")]
    summary: dict[str, Any] = {
        "peak_rss_mib": max((r["stage"]["peak_rss_mib"] for r in done), default=None),
    }
    for r in done:
        r["ratio"] = r["stage"]["rows_per_s"] / r["ceiling"]["rows_per_s"]
        r["ratio_plain"] = r["stage"]["rows_per_s"] / r["ceiling_plain"]["rows_per_s"]
        # Readings per CPU-second, staging over ceiling: less sensitive to a busy machine.
        r["cpu_ratio"] = r["ceiling"]["cpu_s"] / r["stage"]["cpu_s"]
    if done:
        summary["worst_ratio"] = min(r["ratio"] for r in done)
        summary["worst_cpu_ratio"] = min(r["cpu_ratio"] for r in done)
        summary["stage_cpu_us_per_reading"] = [r["stage"]["cpu_s"] / r["n"] * 1e6 for r in done]
        summary["ceiling_cpu_us_per_reading"] = [r["ceiling"]["cpu_s"] / r["n"] * 1e6 for r in done]
        largest = max(done, key=lambda r: r["n"])
        summary["ratio_at_largest"] = largest["ratio"]
    sizes = {r["n"]: r for r in done}
    small, large = min(sizes, default=0), max(sizes, default=0)
    if large > small:
        summary["growth"] = {
            "from": small,
            "to": large,
            "data_factor": large / small,
            "stage_time_factor": sizes[large]["stage"]["seconds"] / sizes[small]["stage"]["seconds"],
            "stage_cpu_factor": sizes[large]["stage"]["cpu_s"] / sizes[small]["stage"]["cpu_s"],
            "ceiling_time_factor": sizes[large]["ceiling"]["seconds"] / sizes[small]["ceiling"]["seconds"],
        }
    return summary


def _millions(n: int) -> str:
    return f"{n / 1e6:g}M"


def markdown(report: dict[str, Any]) -> str:
    m, cfg, s = report["machine"], report["config"], report["summary"]
    code = report["code"]
    lines = [
        f"Run {report['date']} with `{report['command']}`.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, DuckDB {m['duckdb']}, pyarrow {m['pyarrow']}; data on "
        f"{cfg['filesystem']}. Load average before the run: {' '.join(report['loadavg_before'])}.",
        f"- Code: commit {code['commit']}"
        + (
            f", with uncommitted changes in {', '.join(f'`{p}`' for p in code['uncommitted'])}"
            if code["uncommitted"]
            else ""
        )
        + ".",
        f"- Readings: native-contract messages, one reading each, from {len(COUNCILS)} councils × "
        f"({2 * TRAFFIC_COUNTERS} traffic lanes, {CAR_PARKS} car parks, {AIR_MONITORS} air monitors every "
        f"5 min; {BINS} bins hourly) = {MESSAGES_PER_SLOT:,} messages per 5 min; raw segments of "
        f"{SEGMENT_MAX_BYTES >> 20} MiB.",
        "",
        "| readings | event dates | segments | staging (s) | staging rows/s | staging CPU (s) "
        "| ceiling (s) | ceiling rows/s | ceiling CPU (s) | ratio | unpartitioned ceiling rows/s "
        "| staging peak RSS (MiB) | ceiling peak RSS (MiB) | other CPU during staging (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["runs"]:
        g, c, p = r["generated"], r.get("ceiling", {}), r.get("ceiling_plain", {})
        st = r.get("stage", {})
        days = (
            (datetime.fromisoformat(g["last_day"]) - datetime.fromisoformat(g["first_day"])).days + 1
            if g.get("first_day")
            else "?"
        )
        ceiling_cells = f"{c['seconds']:.1f} | {c['rows_per_s']:,.0f} | {c['cpu_s']:.1f}"
        if st.get("timed_out"):
            done = st.get("readings_committed")
            stage_cells = (
                f"> {st['timeout_s']:.0f} (stopped"
                + (f"; {done:,} committed" if done is not None else "")
                + f") | – | – | {ceiling_cells} | – | {p['rows_per_s']:,.0f} | "
                + (f"≥ {st['peak_rss_mib']:,.0f}" if st.get("peak_rss_mib") else "–")
                + f" | {c['peak_rss_mib']:,.0f} | – |"
            )
        else:
            stage_cells = (
                f"{st['seconds']:.1f} | {st['rows_per_s']:,.0f} | {st['cpu_s']:.0f} | {ceiling_cells} | "
                f"{r['ratio']:.2f}× | {p['rows_per_s']:,.0f} | {st['peak_rss_mib']:,.0f} | "
                f"{c['peak_rss_mib']:,.0f} | {st['other_cpu_s']:.0f} |"
            )
        lines.append(f"| {_millions(r['n'])} | {days} | {g['segments']} | {stage_cells}")
    verdicts = []
    if "worst_ratio" in s:
        ok = s["worst_ratio"] >= TARGET_RATIO
        verdicts.append(
            f"ratio to the ceiling {s['worst_ratio']:.2f}× at worst: "
            f"{'meets' if ok else 'misses'} the {TARGET_RATIO}× target; by CPU time "
            f"(readings per CPU-second) {s['worst_cpu_ratio']:.3f}× at worst: staging used "
            + ", ".join(f"{us:.0f}" for us in s["stage_cpu_us_per_reading"])
            + " µs of CPU per reading, the ceiling "
            + ", ".join(f"{us:.1f}" for us in s["ceiling_cpu_us_per_reading"])
        )
    if s.get("peak_rss_mib") is not None:
        ok = s["peak_rss_mib"] < TARGET_PEAK_MIB
        verdicts.append(
            f"staging peak RSS {s['peak_rss_mib']:,.0f} MiB: {'meets' if ok else 'misses'} the 1.5 GiB target"
        )
    if "growth" in s:
        gr = s["growth"]
        ok = gr["stage_time_factor"] <= TARGET_GROWTH * gr["data_factor"] / 10
        ok_cpu = gr["stage_cpu_factor"] <= TARGET_GROWTH * gr["data_factor"] / 10
        verdicts.append(
            f"{gr['data_factor']:g}× the readings ({_millions(gr['from'])} → {_millions(gr['to'])}) took "
            f"{gr['stage_time_factor']:.1f}× the staging time ({gr['stage_cpu_factor']:.1f}× its CPU time; "
            f"ceiling {gr['ceiling_time_factor']:.1f}×): "
            f"{'meets' if ok else 'misses'} the linear-growth target (at most 1.1× the data factor) by "
            f"wall time, {'meets' if ok_cpu else 'misses'} it by CPU time"
        )
    lines += ["", *(f"- {v}." for v in verdicts)]
    lines += [
        "",
        "Staging time is `stage_job` inside its own process, imports excluded; the ceilings likewise "
        "(`COPY` statements only). Rows/s is readings per second. Ratio is staging rows/s over the "
        "partitioned ceiling's. Peak RSS is each process's VmHWM (interpreter and libraries "
        "included). *Other CPU* is what the rest of the machine used while staging ran (it competes "
        "for the two cores; near 0 on an idle machine).",
    ]
    return "\n".join(lines)


def update_docs(
    path: Path, block: str, begin: str = DOCS_BEGIN, end: str = DOCS_END, title: str = "# Benchmarks"
) -> None:
    """Replace what lies between the `begin` and `end` markers of `path` with `block` (markers
    appended at the end first if missing; the file created with `title` if absent)."""
    text = path.read_text() if path.exists() else f"{title}\n"
    if begin not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{block}\n{end}{tail}")


def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir.resolve() / f"n{n}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    t0 = time.perf_counter()
    generated = write_backlog(n, workdir / "data", workdir / "ndjson")
    generated["seconds"] = time.perf_counter() - t0
    print(
        f"[{_millions(n)}] generated {n:,} messages in {generated['seconds']:.0f}s: {generated['segments']} "
        f"segments, {generated['segment_bytes'] / 2**20:,.0f} MiB raw, "
        f"{generated['ndjson_bytes'] / 2**20:,.0f} MiB NDJSON, "
        f"{generated['first_day']} .. {generated['last_day']}",
        flush=True,
    )
    run: dict[str, Any] = {"n": n, "generated": generated}
    for key, kind in (("ceiling", "ceiling"), ("ceiling_plain", "ceiling-plain"), ("stage", "stage")):
        report = run_child(kind, workdir, args.timeout)
        run[key] = report
        if report.get("timed_out"):
            print(f"[{_millions(n)}] {kind}: stopped after {args.timeout:.0f}s", flush=True)
            continue
        report["rows_per_s"] = n / report["seconds"]
        print(
            f"[{_millions(n)}] {kind}: {report['seconds']:.1f}s, {report['rows_per_s']:,.0f} rows/s, "
            f"peak RSS {report['peak_rss_mib']:,.0f} MiB, other CPU {report['other_cpu_s']:.0f}s",
            flush=True,
        )
    if not run["stage"].get("timed_out"):
        run["verified"] = verify_staged(workdir, n, run["stage"])
    else:
        run["stage"]["readings_committed"] = committed_readings(workdir)
    for key in ("ceiling", "ceiling_plain"):
        if run[key].get("rows") not in (None, n):
            raise RuntimeError(f"{key} wrote {run[key]['rows']} rows, expected {n}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return run


def profile(n: int, args: argparse.Namespace) -> int:
    """Stage `n` readings under cProfile (not timed against anything) and print where time goes."""
    workdir = args.workdir.resolve() / f"profile-n{n}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    write_backlog(n, workdir / "data", workdir / "ndjson")
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"stage-profile-{_millions(n)}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.pstats"
    report = run_child("stage", workdir, args.timeout, ["--profile-to", str(out.resolve())])
    print(f"profiled staging of {n:,} readings: {report['seconds']:.1f}s under cProfile; stats in {out}")
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stage",
        description="Stage raw segments with stage_job; compare with DuckDB read_json → Parquet.",
    )
    parser.add_argument(
        "--sizes", default="0.5,1,2,5", help="millions of readings, comma-separated (default 0.5,1,2,5)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "bench" / "out" / "stage", help="throwaway data"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="JSON results dir")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds before a timed child is stopped"
    )
    parser.add_argument("--keep", action="store_true", help="keep each size's data root")
    parser.add_argument("--profile", action="store_true", help="profile staging of the first size instead")
    parser.add_argument(
        "--update-docs", action="store_true", help="rewrite the results block of docs/benchmarks.md"
    )
    parser.add_argument("--child", choices=("stage", "ceiling", "ceiling-plain"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child == "stage":
            report = child_stage(args.workdir, args.profile_to)
        else:
            report = child_ceiling(args.workdir, partitioned=args.child == "ceiling")
        print(json.dumps(report, default=str))
        return 0
    try:
        sizes = sorted(int(round(float(s) * 1_000_000)) for s in args.sizes.split(",") if s.strip())
    except ValueError:
        parser.error(f"--sizes takes millions of readings, e.g. 0.5,1; got {args.sizes!r}")
    if not sizes or min(sizes) <= 0:
        parser.error("--sizes needs at least one positive size")
    if args.profile:
        return profile(sizes[0], args)
    cli_args = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    if os.environ.get("MAKELEVEL"):
        command = f'make bench-stage BENCH_STAGE_ARGS="{cli_args}"' if cli_args else "make bench-stage"
    else:
        command = f"python -m bench.stage {cli_args}".strip()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(**versions()),
        "code": code_version("transforms", "warehouse", "civicflow"),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "config": {
            "sizes": sizes,
            "councils": COUNCILS,
            "messages_per_5_min": MESSAGES_PER_SLOT,
            "segment_max_bytes": SEGMENT_MAX_BYTES,
            "filesystem": filesystem(args.workdir.parent if not args.workdir.exists() else args.workdir),
            "timeout_s": args.timeout,
        },
        "runs": [],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"stage-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    for n in sizes:
        report["runs"].append(measure(n, args))
        report["summary"] = summarise(report["runs"])
        out.write_text(json.dumps(report, indent=2, default=str))  # after every size: partial results
    block = markdown(report)
    print()
    print(block)
    print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if args.update_docs:
        update_docs(ROOT / "docs" / "benchmarks.md", block)
        print("updated docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
