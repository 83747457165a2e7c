"""Staging on many workers: 1 and 2 staging workers on the same backlog, against DuckDB's ceiling.

Staging runs as decode tasks, one per shard (each decodes the closed raw segments whose id hashes
to it and appends them to the Iceberg table `staged.increments`), then one merge into the DuckDB
warehouse (civicflow.jobs.decode_job, civicflow.jobs.merge_job). For one generated backlog
(bench/stage.py's fleet, 1 million readings by default, in raw segments of 4 MiB so that the
shards get many segments each), every repeat runs, in throwaway data roots holding a copy of the
same raw zone:

- **1 worker**: one process runs `decode_job(0, shards=1)`, pinned to one core; then `merge_job`
  in a fresh process on that core;
- **2 workers**: two processes run `decode_job(0, shards=2)` and `decode_job(1, shards=2)` at the
  same moment (each waits, imports done, until the parent starts both), one core each; then
  `merge_job` on both cores;
- **the ceilings**: DuckDB's `read_json` → partitioned zstd Parquet of the same readings as NDJSON
  (bench/stage.py `child_ceiling`) with `SET threads = 1` on one core, and with 2 threads.

Each timed process measures itself (imports excluded), counts its Iceberg catalogue commits and
their time, and reports its CPU time and peak RSS; the 2-worker decode time is from the first
worker's start to the last one's end. Every run is verified: every reading staged once, nothing
quarantined, no duplicate, the staged tables and Parquet files hold exactly the generated
readings, `staged.increments` is empty after the merge, and every run's ledger (segment, bytes,
SHA-256, records, readings) is the same. The order of the configurations alternates between
repeats; medians are reported. Before each configuration the benchmark waits for the rest of
the (shared) machine to go quiet, and before each 2-worker run it measures how much faster two
CPU-bound processes run than one, so that the machine's share in a result can be told apart.

`--councils 5,400` runs the same on a fleet of 400 councils too, whose commits span every
council's partitions as a national commit does; from both runs it projects the national case
into docs/scaling.md. Run with `make bench-scale`, or `python -m bench.scale --help`.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import inspect
import json
import math
import os
import pstats
import select
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import code_version, filesystem, machine
from bench.stage import (
    COUNCILS,
    MESSAGES_PER_SLOT,
    _cpu,
    _vm_hwm_kib,
    busy_cpu_s,
    child_ceiling,
    update_docs,
    versions,
    write_backlog,
)

ROOT = Path(__file__).resolve().parent.parent
TARGET_SPEEDUP = 1.7
TARGET_RATIO = 0.5
SEGMENT_MIB = 4.0
MIN_SEGMENTS = 16
"""Segments are made smaller than --segment-mib when the backlog would give fewer than this."""
BYTES_PER_READING_GUESS = 170
"""Raw bytes a generated reading takes, to size segments before generating them (measured: 169)."""

# The national case (the issue): ~3 million sensors reporting once a minute.
NATIONAL_SENSORS = 3_000_000
NATIONAL_RATE = 50_000  # readings per second
NATIONAL_PER_DAY = NATIONAL_RATE * 86_400  # 4.32 billion
NATIONAL_RAW_BYTES_PER_DAY = 740e9  # the estimate
HEADROOM = 2.0
"""Workers are sized for twice the national rate: an hour's outage is caught up in an hour."""
LISTENER_MSGS_PER_S = 23_172
"""`civicflow listen`, one process, draining a backlog with ack after fsync (docs/benchmarks.md,
backlog drain, 2026-12-01): the ingest side of the projection is taken from that benchmark."""
BROKER_MSGS_PER_S = 99_450
"""Mosquitto delivering a queued backlog to `mosquitto_sub` in the same benchmark (one core)."""

NATIONAL_FANOUT = 100
"""A run with at least this many councils has a national commit's fan-out (a commit spans every
council's partitions); only such a run writes the projection of docs/scaling.md."""

DOCS_BEGIN = "<!-- bench:scale:begin -->"
DOCS_END = "<!-- bench:scale:end -->"
PROJECTION_BEGIN = "<!-- bench:scale-projection:begin -->"
PROJECTION_END = "<!-- bench:scale-projection:end -->"


def fleet_councils(n: int) -> tuple[str, ...]:
    """bench/stage.py's five councils, then `bench-001`, `bench-002`, ... up to `n` councils."""
    return COUNCILS[:n] + tuple(f"bench-{i:03d}" for i in range(1, n - len(COUNCILS) + 1))


def docs_markers(councils: int) -> tuple[str, str]:
    """The results block of a run: one for bench/stage.py's five councils, one per other count."""
    if councils == len(COUNCILS):
        return DOCS_BEGIN, DOCS_END
    return f"<!-- bench:scale:{councils}-councils:begin -->", f"<!-- bench:scale:{councils}-councils:end -->"


def commit_readings() -> int:
    """Readings a decode commit takes at most (`decode_shard`'s `max_readings_per_commit`)."""
    from civicflow.transforms.stage import decode_shard

    return int(inspect.signature(decode_shard).parameters["max_readings_per_commit"].default)


# -- the timed children ---------------------------------------------------------------------


SPIN_ITERATIONS = 30_000_000


def _spin(iterations: int) -> int:
    """Pure-Python CPU work with no memory traffic: what two cores give two processes here."""
    total = 0
    for i in range(iterations):
        total += i
    return total


# Where staging's time goes: (module, attribute) timed by wrapping it in the child, by name.
PARTS = {
    "append": ("civicflow.warehouse.lake", "Lake.append"),
    "write_files": ("civicflow.warehouse.lake", "_write_data_files"),
    "ledger_read": ("civicflow.warehouse.lake", "Lake.staged_segments"),
    "read_increments": ("civicflow.warehouse.lake", "Lake.read_increment"),
    "merge_domains": ("civicflow.transforms.stage", "_merge_domain"),
    "corrections": ("civicflow.transforms.stage", "_record_corrections"),
    "export": ("civicflow.transforms.stage", "export_partitions"),
    "fold": ("civicflow.warehouse.lake", "Lake.fold"),
}


def _instrument() -> dict[str, Any]:
    """Count and time this process's Iceberg catalogue commits, and time the parts in PARTS."""
    import importlib

    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.exceptions import CommitFailedException

    stats: dict[str, Any] = {"commits": 0, "commits_failed": 0, "commit_s": [], "parts": {}}
    commit_table = SqlCatalog.commit_table

    def timed_commit(self, table, requirements, updates):
        t0 = time.perf_counter()
        try:
            return commit_table(self, table, requirements, updates)
        except CommitFailedException:
            stats["commits_failed"] += 1
            raise
        finally:
            stats["commits"] += 1
            stats["commit_s"].append(time.perf_counter() - t0)

    SqlCatalog.commit_table = timed_commit

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                part = stats["parts"].setdefault(name, {"calls": 0, "s": 0.0})
                part["calls"] += 1
                part["s"] += time.perf_counter() - t0

        return wrapper

    for name, (module_name, attribute) in PARTS.items():
        owner = importlib.import_module(module_name)
        *path, leaf = attribute.split(".")
        for step in path:
            owner = getattr(owner, step)
        fn = getattr(owner, leaf, None)
        if fn is None:  # renamed or gone: the breakdown lacks it, the run goes on
            print(f"bench.scale: no {module_name}.{attribute} to time", file=sys.stderr)
            continue
        setattr(owner, leaf, timed(name, fn))
    return stats


def _part_s(report: dict[str, Any], name: str) -> float:
    return report.get("parts", {}).get(name, {}).get("s", 0.0)


def child(args: argparse.Namespace) -> int:
    """One timed process: import, say ready, wait for `go` on stdin, run, print a JSON report."""
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    if args.child in ("ceiling", "spin"):
        import duckdb  # noqa: F401

        stats: dict[str, Any] = {}
    else:
        # Imported before the clock starts, as in a warm worker (pandas: DuckDB imports it on the
        # first register() of an Arrow table, several seconds per process here).
        import importlib

        import pandas  # noqa: F401

        for module in (  # what pyiceberg and SQLAlchemy import on first use
            "pyiceberg.table",
            "pyiceberg.io.pyarrow",
            "pyiceberg.avro.decoder_fast",
            "pyiceberg.table.puffin",
            "pyarrow.dataset",
            "pyarrow.acero",
            "sqlalchemy.dialects.sqlite",
            "sqlite3",
            "rich.console",
            "rich.table",
        ):
            importlib.import_module(module)

        import civicflow.jobs  # noqa: F401
        import civicflow.registry  # noqa: F401
        import civicflow.transforms.stage  # noqa: F401
        import civicflow.warehouse.db  # noqa: F401
        import civicflow.warehouse.lake  # noqa: F401
        from civicflow.settings import Settings

        stats = _instrument()
        settings = Settings(data_root=args.workdir / "data")
    print(json.dumps({"ready": os.getpid()}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    modules = set(sys.modules)
    profiler = cProfile.Profile() if args.profile_to else None
    started_at = time.time()  # the wall clock, comparable between the workers
    cpu0, t0 = _cpu(), time.perf_counter()
    if profiler:
        profiler.enable()
    if args.child == "decode":
        from civicflow.jobs import decode_job

        result = decode_job(args.shard, shards=args.shards, settings=settings)
    elif args.child == "merge":
        from civicflow.jobs import merge_job

        result = merge_job(settings)
        result.pop("changed_partitions", None)
    elif args.child == "spin":
        result = {"sum": _spin(SPIN_ITERATIONS)}
    else:
        result = child_ceiling(args.workdir, partitioned=True, threads=args.threads)
    if profiler:
        profiler.disable()
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    ended_at = time.time()
    if profiler:
        profiler.dump_stats(args.profile_to)
    if args.child == "ceiling":  # child_ceiling times the COPY statements only
        seconds, cpu = result.pop("seconds"), result.pop("cpu_s")
        result.pop("vm_hwm_kib")
    report = {
        "seconds": seconds,
        "cpu_s": cpu,
        "started_at": started_at,
        "ended_at": ended_at,
        "vm_hwm_kib": _vm_hwm_kib(),
        "result": result,
        # Modules the timed part imported (their import time is inside it): should stay few.
        "imported": sorted(set(sys.modules) - modules),
        **stats,
    }
    print(json.dumps(report, default=str), flush=True)
    return 0


# -- the parent -----------------------------------------------------------------------------


def _read_line(proc: subprocess.Popen, deadline: float) -> bytes:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            return proc.stdout.readline()


def run_together(jobs: list[tuple[str, list[str]]], logdir: Path, timeout_s: float) -> list[dict[str, Any]]:
    """Start a timed child per (name, arguments), let them all begin at once, return their reports.

    Each child imports what it needs and says it is ready; only when all are ready are they told
    to go, so their timed parts overlap from the start. Any failure stops every one of them.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIVICFLOW_")}
    logdir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen, Path]] = []
    deadline = time.monotonic() + timeout_s
    try:
        for name, extra in jobs:
            log = logdir / f"{name}.log"
            with log.open("ab") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.scale", *extra],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log_file,
                )
            procs.append((name, proc, log))
        for name, proc, log in procs:
            if not _read_line(proc, deadline).startswith(b'{"ready"'):
                raise RuntimeError(f"{name} exited before it was ready (code {proc.wait()}); see {log}")
        busy_before = busy_cpu_s()
        for _, proc, _ in procs:
            proc.stdin.write(b"go\n")
            proc.stdin.flush()  # communicate() closes it
        reports = []
        for name, proc, log in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if proc.returncode != 0:
                raise RuntimeError(f"{name} exited {proc.returncode}; see {log}")
            report = json.loads(out.decode().strip().splitlines()[-1])
            report["name"] = name
            report["peak_rss_mib"] = report.pop("vm_hwm_kib") / 1024
            reports.append(report)
        busy = busy_cpu_s() - busy_before
    except (subprocess.TimeoutExpired, TimeoutError) as exc:
        raise RuntimeError(
            f"{', '.join(n for n, _, _ in procs)} did not finish within {timeout_s:.0f} s; "
            f"see the logs in {logdir}, or raise --timeout"
        ) from exc
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # CPU the rest of the machine used meanwhile (near 0 on an idle machine): other work competing
    # for the cores. The children's exit after their report is counted in it, a few milliseconds.
    other = max(0.0, busy - sum(r["cpu_s"] for r in reports))
    for r in reports:
        r["other_cpu_s"] = other
        r["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    return reports


def wait_for_quiet(max_wait_s: float, quiet_cores: float) -> dict[str, Any]:
    """Sample the machine's busy CPU over 2 s windows until the rest of the machine uses at most
    `quiet_cores` cores, or `max_wait_s` has passed; say what was seen. Other engineers share this
    machine: a configuration measured while they build competes with them for the cores."""
    start, seen = time.monotonic(), []
    while True:
        before = busy_cpu_s()
        time.sleep(2.0)  # a sampling window, not a synchronisation
        seen.append((busy_cpu_s() - before) / 2.0)
        waited = time.monotonic() - start
        if seen[-1] <= quiet_cores or waited >= max_wait_s:
            return {"waited_s": waited, "busy_cores": seen[-1], "quiet": seen[-1] <= quiet_cores}


def spin_speedup(logdir: Path, pin: bool, timeout_s: float) -> dict[str, Any]:
    """The machine's own speed-up for two CPU-bound processes against one, measured just now."""
    one = run_together([("spin-1", child_args("spin", logdir, [0] if pin else None))], logdir, timeout_s)
    two = run_together(
        [(f"spin-2-{c}", child_args("spin", logdir, [c] if pin else None)) for c in (0, 1)], logdir, timeout_s
    )
    wall = max(r["ended_at"] for r in two) - min(r["started_at"] for r in two)
    return {
        "one_s": one[0]["seconds"],
        "two_s": wall,
        "speedup": 2 * one[0]["seconds"] / wall,
        # CPU time for the same work, two at once against one alone (1.0 on two free cores)
        "cpu_inflation": statistics.mean(r["cpu_s"] for r in two) / one[0]["cpu_s"],
    }


def child_args(kind: str, workdir: Path, cpus: list[int] | None, *extra: str) -> list[str]:
    args = ["--child", kind, "--workdir", str(workdir), *extra]
    return args + (["--cpus", ",".join(map(str, cpus))] if cpus else [])


def _files(directory: Path, pattern: str = "*") -> list[Path]:
    return [p for p in directory.rglob(pattern) if p.is_file()] if directory.exists() else []


def _bytes(directory: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in _files(directory, pattern))


def _settings(data_root: Path):
    from civicflow.settings import Settings

    return Settings(data_root=data_root)


def expected_shards(raw: Path, shards: int) -> list[dict[str, int]]:
    """Segments and readings (records) each shard should decode."""
    from civicflow.transforms.stage import shard_of
    from civicflow.warehouse.segment_columns import scan_columns
    from civicflow.warehouse.segments import CLOSED_SUFFIX, list_closed_segments

    out = [{"segments": 0, "readings": 0} for _ in range(shards)]
    for path in list_closed_segments(raw):
        seg = path.relative_to(raw).as_posix().removesuffix(CLOSED_SUFFIX)
        shard = out[shard_of(seg, shards)]
        shard["segments"] += 1
        shard["readings"] += len(scan_columns(path.read_bytes()))
    return out


def stage_with(workers: int, label: str, source: Path, generated: dict[str, Any], args) -> dict[str, Any]:
    """Stage a copy of `source`'s raw zone with `workers` decode processes, then merge; verify."""
    from civicflow.jobs import open_lake
    from civicflow.warehouse.lake import SHARD_KEY, snapshots_with_ledger

    workdir = args.workdir / label
    shutil.rmtree(workdir, ignore_errors=True)
    data = workdir / "data"
    shutil.copytree(source / "data" / "raw", data / "raw")
    lake = open_lake(_settings(data))
    lake.increments(), lake.ledger()  # created beforehand, as a running deployment has them
    cpus = [[i % (os.cpu_count() or 1)] for i in range(workers)] if args.pin else [None] * workers
    decoders = run_together(
        [
            (
                f"decode-{s}-of-{workers}",
                child_args("decode", workdir, cpus[s], "--shard", str(s), "--shards", str(workers)),
            )
            for s in range(workers)
        ],
        workdir,
        args.timeout,
    )
    run: dict[str, Any] = {"workers": workers, "decode": decoders}
    run["decode_wall_s"] = max(d["ended_at"] for d in decoders) - min(d["started_at"] for d in decoders)
    inc_dir = data / "warehouse" / "iceberg" / "staged" / "increments"
    table = lake.increments()
    increments = snapshots_with_ledger(table)
    live = [task.file for task in table.scan().plan_files()]
    on_disk = _bytes(inc_dir / "data", "*.parquet")
    run["after_decode"] = {
        "snapshots": len(increments),
        "snapshots_per_shard": {
            shard: sum(
                1
                for s in table.snapshots()
                if (s.summary.additional_properties or {}).get(SHARD_KEY) == shard
            )
            for shard in (f"{s}/{workers}" for s in range(workers))
        },
        "data_files": len(live),
        "data_bytes": sum(f.file_size_in_bytes for f in live),
        "rows": sum(f.record_count for f in live),
        # Data files of commits lost to the other worker: written, never referenced; the daily
        # upkeep removes them after three days (warehouse/lake.py remove_orphan_files).
        "orphan_bytes": on_disk - sum(f.file_size_in_bytes for f in live),
        "metadata_bytes": _bytes(inc_dir / "metadata"),
        "ledger_rows": sum(len(i.ledger) for i in increments),
    }
    mergers = run_together(
        [("merge", child_args("merge", workdir, sorted({c for cs in cpus if cs for c in cs}) or None))],
        workdir,
        args.timeout,
    )
    run["merge"] = mergers[0]
    run["end_to_end_s"] = run["decode_wall_s"] + run["merge"]["seconds"]
    run["verified"] = verify(workdir, workers, generated, run)
    run["sizes"] = {
        "raw_bytes": generated["segment_bytes"],
        "increments_bytes": run["after_decode"]["data_bytes"],
        "increments_metadata_bytes": run["after_decode"]["metadata_bytes"],
        "staged_parquet_bytes": _bytes(data / "staged", "*.parquet"),
        "staged_parquet_files": len(_files(data / "staged", "*.parquet")),
        "warehouse_bytes": (data / "warehouse" / "civicflow.duckdb").stat().st_size,
        "catalog_bytes": (data / "warehouse" / "catalog.db").stat().st_size,
        "iceberg_bytes_after_merge": _bytes(data / "warehouse" / "iceberg"),
    }
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"[{label}] decode {run['decode_wall_s']:.2f}s ("
        + ", ".join(f"{d['result']['readings']:,} in {d['seconds']:.2f}s" for d in decoders)
        + f"), merge {run['merge']['seconds']:.2f}s, {run['after_decode']['snapshots']} decode commits, "
        f"other CPU {decoders[0]['other_cpu_s']:.1f}+{run['merge']['other_cpu_s']:.1f}s",
        flush=True,
    )
    return run


def verify(workdir: Path, workers: int, generated: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Every reading staged once: fail loudly otherwise. Returns the ledger's digest and counts."""
    import duckdb

    from civicflow.jobs import open_lake
    from civicflow.warehouse.lake import snapshots_with_ledger

    n, problems = generated["messages"], []
    data = workdir / "data"
    shards = expected_shards(data / "raw", workers)
    for s, (d, want) in enumerate(zip(run["decode"], shards, strict=True)):
        got = {"segments": d["result"]["segments"], "readings": d["result"]["readings"]}
        if got != want or d["result"]["quarantined"]:
            problems.append(
                f"shard {s} decoded {got}, quarantined {d['result']['quarantined']}; expected {want}"
            )
    if run["after_decode"]["rows"] != n or run["after_decode"]["ledger_rows"] != generated["segments"]:
        problems.append(
            f"staged.increments held {run['after_decode']['rows']} readings of "
            f"{run['after_decode']['ledger_rows']} segments, expected {n} of {generated['segments']}"
        )
    merged = run["merge"]["result"]
    if (merged["readings"], merged["records"], merged["segments"]) != (n, n, generated["segments"]) or (
        merged["duplicates"] or merged["corrections"] or merged["quarantined"]
    ):
        problems.append(f"the merge did not take exactly the {n} readings once: {merged}")
    con = duckdb.connect(str(data / "warehouse" / "civicflow.duckdb"), read_only=True)
    try:
        per_domain = {
            d: con.execute(f"SELECT count(*) FROM staged.{d}").fetchone()[0] for d in generated["per_domain"]
        }
        ledger = con.execute(
            "SELECT segment_id, bytes, sha256, records, readings, rejected "
            "FROM raw.segments ORDER BY segment_id"
        ).fetchall()
        (quarantined,) = con.execute("SELECT count(*) FROM quarantine.readings").fetchone()
        (consumed,) = con.execute("SELECT count(*) FROM raw.increments").fetchone()
    finally:
        con.close()
    files = _files(data / "staged", "*.parquet")
    (in_files,) = (
        duckdb.connect().execute(f"SELECT count(*) FROM read_parquet({[str(f) for f in files]!r})").fetchone()
    )
    if per_domain != generated["per_domain"] or in_files != n or quarantined:
        problems.append(
            f"staged tables hold {per_domain}, Parquet {in_files} rows, quarantine {quarantined}; "
            f"expected {generated['per_domain']}, {n}, 0"
        )
    if len(ledger) != generated["segments"] or sum(r[3] for r in ledger) != n:
        problems.append(f"raw.segments has {len(ledger)} segments of {sum(r[3] for r in ledger)} records")
    if consumed != run["after_decode"]["snapshots"]:
        problems.append(
            f"raw.increments records {consumed} merged snapshots of {run['after_decode']['snapshots']}"
        )
    lake = open_lake(_settings(data))
    left = snapshots_with_ledger(lake.increments())
    live = lake.increments().scan().to_arrow().num_rows
    folded = lake.ledger().scan(selected_fields=("segment_id",)).to_arrow()["segment_id"].to_pylist()
    if left or live or sorted(folded) != [r[0] for r in ledger]:
        problems.append(
            f"after the fold staged.increments keeps {len(left)} unmerged snapshots and {live} readings; "
            f"the Iceberg ledger has {len(folded)} segments of {len(ledger)}"
        )
    if problems:
        raise RuntimeError(f"{workdir.name}: staging was not exactly once: " + "; ".join(problems))
    digest = hashlib.sha256(json.dumps(ledger).encode()).hexdigest()
    return {"staged_rows": sum(per_domain.values()), "parquet_rows": in_files, "ledger_sha256": digest}


def _median(values) -> float:
    return statistics.median(list(values))


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Medians over the repeats, and the ratios the targets are about (paired within a repeat)."""
    n = report["generated"]["messages"]
    reps = report["repeats"]
    one = [r["one"] for r in reps]
    two = [r["two"] for r in reps]
    s: dict[str, Any] = {"n": n}
    s["one_decode_s"] = _median(r["decode_wall_s"] for r in one)
    s["one_decode_rate"] = n / s["one_decode_s"]
    s["one_decode_cpu_us"] = _median(r["decode"][0]["cpu_s"] for r in one) / n * 1e6
    s["two_decode_s"] = _median(r["decode_wall_s"] for r in two)
    s["two_decode_rate"] = n / s["two_decode_s"]
    s["two_decode_cpu_us"] = _median(sum(d["cpu_s"] for d in r["decode"]) for r in two) / n * 1e6
    s["two_worker_rates"] = _median(
        statistics.mean(d["result"]["readings"] / d["seconds"] for d in r["decode"]) for r in two
    )
    readings = [d["result"]["readings"] for d in two[0]["decode"]]
    s["shard_readings"] = readings
    s["shard_segments"] = [d["result"]["segments"] for d in two[0]["decode"]]
    s["balance_ideal_speedup"] = n / max(readings)
    s["speedup"] = _median(a["decode_wall_s"] / b["decode_wall_s"] for a, b in zip(one, two, strict=True))
    s["efficiency"] = s["speedup"] / 2
    s["per_worker_efficiency"] = s["two_worker_rates"] / s["one_decode_rate"]
    for key, runs in (("one", one), ("two", two)):
        s[f"{key}_merge_s"] = _median(r["merge"]["seconds"] for r in runs)
        s[f"{key}_merge_rate"] = n / s[f"{key}_merge_s"]
        s[f"{key}_fold_s"] = _median(_part_s(r["merge"], "fold") for r in runs)
        s[f"{key}_end_to_end_s"] = _median(r["end_to_end_s"] for r in runs)
        s[f"{key}_end_to_end_rate"] = n / s[f"{key}_end_to_end_s"]
        s[f"{key}_decode_commits"] = _median(r["after_decode"]["snapshots"] for r in runs)
        s[f"{key}_merge_commits"] = _median(r["merge"]["commits"] for r in runs)
        s[f"{key}_other_cpu_s"] = _median(
            r["decode"][0]["other_cpu_s"] + r["merge"]["other_cpu_s"] for r in runs
        )
        s[f"{key}_decode_rss_mib"] = max(d["peak_rss_mib"] for r in runs for d in r["decode"])
        s[f"{key}_merge_rss_mib"] = max(r["merge"]["peak_rss_mib"] for r in runs)
        s[f"{key}_append_share"] = _median(
            sum(_part_s(d, "append") for d in r["decode"]) / sum(d["seconds"] for d in r["decode"])
            for r in runs
        )
    s["cpu_efficiency"] = s["one_decode_cpu_us"] / s["two_decode_cpu_us"]
    s["cpu_speedup"] = _median(
        a["decode"][0]["cpu_s"] / max(d["cpu_s"] for d in b["decode"]) for a, b in zip(one, two, strict=True)
    )
    s["breakdown"] = {
        "decode_s": s["one_decode_s"],
        "decode": {
            name: _median(_part_s(r["decode"][0], name) for r in one)
            for name in ("append", "write_files", "ledger_read")
        }
        | {"commits": _median(sum(r["decode"][0]["commit_s"]) for r in one)},
        "merge_s": s["one_merge_s"],
        "merge": {
            name: _median(_part_s(r["merge"], name) for r in one)
            for name in ("read_increments", "merge_domains", "corrections", "export", "fold")
        },
    }
    s["end_to_end_speedup"] = _median(
        a["end_to_end_s"] / b["end_to_end_s"] for a, b in zip(one, two, strict=True)
    )
    commit_times = [t for r in one + two for d in r["decode"] for t in d["commit_s"]]
    s["decode_commit_s_median"] = _median(commit_times)
    s["decode_commit_s_max"] = max(commit_times)
    s["commits_failed"] = sum(d["commits_failed"] for r in one + two for d in r["decode"])
    for threads in (1, 2):
        ceilings = [r[f"ceiling{threads}"]["seconds"] for r in reps]
        s[f"ceiling{threads}_s"] = _median(ceilings)
        s[f"ceiling{threads}_rate"] = n / s[f"ceiling{threads}_s"]
    s["one_ratio"] = _median(r["ceiling1"]["seconds"] / r["one"]["end_to_end_s"] for r in reps)
    s["two_ratio"] = _median(r["ceiling2"]["seconds"] / r["two"]["end_to_end_s"] for r in reps)
    s["one_decode_ratio"] = _median(r["ceiling1"]["seconds"] / r["one"]["decode_wall_s"] for r in reps)
    s["two_decode_ratio"] = _median(r["ceiling2"]["seconds"] / r["two"]["decode_wall_s"] for r in reps)
    sizes = reps[-1]["two"]["sizes"]
    s["bytes_per_reading"] = {
        "raw": sizes["raw_bytes"] / n,
        "increments": _median(r[k]["sizes"]["increments_bytes"] for r in reps for k in ("one", "two")) / n,
        "staged_parquet": sizes["staged_parquet_bytes"] / n,
        "warehouse": sizes["warehouse_bytes"] / n,
    }
    s["segments"] = report["generated"]["segments"]
    s["files_per_commit"] = _median(
        r[k]["after_decode"]["data_files"] / r[k]["after_decode"]["snapshots"]
        for r in reps
        for k in ("one", "two")
    )
    s["metadata_bytes_per_segment"] = (
        _median(r["two"]["sizes"]["increments_metadata_bytes"] for r in reps) / s["segments"]
    )
    s["machine_speedup"] = _median(r["spin"]["speedup"] for r in reps)
    s["machine_cpu_inflation"] = _median(r["spin"].get("cpu_inflation", math.nan) for r in reps)
    # Staging's speed-up as a share of what the machine gave two CPU-bound processes just before
    s["speedup_of_machine"] = _median(
        (r["one"]["decode_wall_s"] / r["two"]["decode_wall_s"]) / r["spin"]["speedup"] for r in reps
    )
    quiet = [r[k]["quiet_before"] for r in reps for k in ("one", "two")]
    s["quiet_starts"] = [sum(q["quiet"] for q in quiet), len(quiet)]
    s["ledger_identical"] = (
        len({r[k]["verified"]["ledger_sha256"] for r in reps for k in ("one", "two")}) == 1
    )
    return s


def project(national: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """The national case from what was measured (docs/scaling.md).

    Rates, data files per commit and the increments' bytes come from the run with the most
    councils (`national`: a commit fans out over every council's partitions, as a national one
    does); the staged zone's and the warehouse's bytes per reading from the run with the fewest
    (`local`), whose council-day partitions are the larger ones, nearer a national day's.
    """
    s, sl = national["summary"], local["summary"]
    commit_size = national["config"]["commit_readings"]
    per_worker = min(s["one_decode_rate"], s["two_worker_rates"])
    merge_rate = min(s["one_merge_rate"], s["two_merge_rate"])
    workers = math.ceil(NATIONAL_RATE * HEADROOM / per_worker)
    hour = NATIONAL_RATE * 3600
    bpr = {
        "raw": s["bytes_per_reading"]["raw"],
        "increments": s["bytes_per_reading"]["increments"],
        "staged_parquet": sl["bytes_per_reading"]["staged_parquet"],
        "warehouse": sl["bytes_per_reading"]["warehouse"],
    }
    # Commits: each decode task commits at most `commit_size` readings at a time, and at least once
    # an hour; each hourly merge folds with 3 commits (ledger append, increments delete, expiry).
    commits_per_hour = max(workers, math.ceil(hour / commit_size))

    # While a day is open, each hourly merge writes the readings it adds to a council-day as one more
    # file; once the day closes its files are compacted into one: every reading is written twice
    # (whole-day rewrites at every merge wrote the readings of hour h 24 - h + 1 times, 12.5 on average).
    rewrites = 2.0
    export_rate = local["config"]["readings"] / sl["breakdown"]["merge"]["export"]
    per_file_s = s["breakdown"]["decode"]["write_files"] / (s["files_per_commit"] * s["one_decode_commits"])

    def commits_per_s(size: int) -> float:
        return (max(workers, math.ceil(hour / size)) + 3) / 3600

    return {
        "councils": national["config"]["councils"],
        "local_councils": local["config"]["councils"],
        "per_worker_rate": per_worker,
        "local_per_worker_rate": min(sl["one_decode_rate"], sl["two_worker_rates"]),
        "merge_rate": merge_rate,
        "local_merge_rate": min(sl["one_merge_rate"], sl["two_merge_rate"]),
        "workers": workers,
        "decode_cores": NATIONAL_RATE / per_worker,
        "merge_minutes_per_hour": hour / merge_rate / 60,
        "merge_share": NATIONAL_RATE / merge_rate,
        "files_per_commit": s["files_per_commit"],
        "files_per_s": commits_per_hour * s["files_per_commit"] / 3600,
        "file_ms": per_file_s * 1000,
        "file_cores": commits_per_hour * s["files_per_commit"] * per_file_s / 3600,
        "export_rewrites": rewrites,
        "export_rate": export_rate,
        "export_cores": NATIONAL_PER_DAY * rewrites / export_rate / 86_400,
        "bytes_per_reading": bpr,
        "storage_per_day_gb": {k: v * NATIONAL_PER_DAY / 1e9 for k, v in bpr.items()},
        "increments_hour_gb": bpr["increments"] * hour / 1e9,
        "commit_size": commit_size,
        "commits_per_s": commits_per_s(commit_size),
        "commits_per_s_by_size": {size: commits_per_s(size) for size in (commit_size, 50_000, 5_000)},
        "commit_ms": s["decode_commit_s_median"] * 1000,
        "listeners": math.ceil(NATIONAL_RATE * HEADROOM / LISTENER_MSGS_PER_S),
        "broker_share": NATIONAL_RATE / BROKER_MSGS_PER_S,
    }


# -- the report -----------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "meets" if ok else "misses"


def markdown(report: dict[str, Any]) -> str:
    m, cfg, s, g = report["machine"], report["config"], report["summary"], report["generated"]
    code = report["code"]
    dirty = code["uncommitted"]
    days = (datetime.fromisoformat(g["last_day"]) - datetime.fromisoformat(g["first_day"])).days + 1
    lines = [
        f"Run {report['date']} with `{report['command']}`.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, DuckDB {m['duckdb']}, pyarrow {m['pyarrow']}, pyiceberg {m['pyiceberg']}; "
        f"data on {cfg['filesystem']}, Iceberg catalogue in SQLite. Load average before the run: "
        f"{' '.join(report['loadavg_before'])}, after: {' '.join(report['loadavg_after'])}.",
        f"- Code: commit {code['commit']}"
        + (f", with uncommitted changes in {', '.join(f'`{p}`' for p in dirty)}" if dirty else "")
        + ".",
        f"- Backlog: {g['messages']:,} readings of bench/stage.py's fleet ({cfg['councils']} councils, "
        f"{MESSAGES_PER_SLOT // len(COUNCILS) * cfg['councils']:,} messages per 5 min, {days} event dates; "
        f"{s['files_per_commit']:,.0f} data files, one per dataset, a decode commit) in "
        f"{g['segments']} raw segments of "
        f"{cfg['segment_max_bytes'] / 2**20:.3g} MiB ({g['segment_bytes'] / 2**20:,.0f} MiB). With 2 shards "
        f"`shard_of` split them {s['shard_segments'][0]}/{s['shard_segments'][1]} segments, "
        f"{s['shard_readings'][0]:,}/{s['shard_readings'][1]:,} readings: at best "
        f"{s['balance_ideal_speedup']:.2f}× with 2 workers.",
        f"- {cfg['repeat']} repeat(s), medians shown; configurations "
        + (
            "pinned to cores (1 worker: one core; 2 workers: one core each; merge: the same cores)"
            if cfg["pin"]
            else "not pinned to cores"
        )
        + "; decode commits at most "
        f"{cfg['commit_readings']:,} readings each.",
        "",
        "| | decode (s) | decode readings/s | per worker | CPU µs/reading | decode commits | merge (s) "
        "| merge readings/s | staging end to end (s) | end to end readings/s | ceiling (s) "
        "| ceiling readings/s | ratio | peak RSS decode / merge (MiB) | other CPU (s) |",
        "| --- " + "| ---: " * 14 + "|",
    ]
    for key, label, threads, rate in (
        ("one", "1 worker, 1 core", 1, s["one_decode_rate"]),
        ("two", "2 workers, 2 cores", 2, s["two_worker_rates"]),
    ):
        lines.append(
            f"| {label} | {s[f'{key}_decode_s']:.2f} | {s[f'{key}_decode_rate']:,.0f} | {rate:,.0f} | "
            f"{s[f'{key}_decode_cpu_us']:.1f} | {s[f'{key}_decode_commits']:g} | {s[f'{key}_merge_s']:.2f} | "
            f"{s[f'{key}_merge_rate']:,.0f} | {s[f'{key}_end_to_end_s']:.2f} | "
            f"{s[f'{key}_end_to_end_rate']:,.0f} | "
            f"{s[f'ceiling{threads}_s']:.2f} | {s[f'ceiling{threads}_rate']:,.0f} ({threads} thread"
            f"{'s' if threads > 1 else ''}) | {s[f'{key}_ratio']:.2f}× | "
            f"{s[f'{key}_decode_rss_mib']:,.0f} / {s[f'{key}_merge_rss_mib']:,.0f} | "
            f"{s[f'{key}_other_cpu_s']:.1f} |"
        )
    bpr = s["bytes_per_reading"]
    b = s["breakdown"]
    d, mg = b["decode"], b["merge"]
    lines += [
        "",
        f"- 2 workers against 1: decode **{s['speedup']:.2f}×** (parallel efficiency {s['efficiency']:.0%}; "
        f"each worker ran at {s['per_worker_efficiency']:.0%} of the lone worker's rate): "
        f"{_verdict(s['speedup'] >= TARGET_SPEEDUP)} the {TARGET_SPEEDUP}× target. Staging end to end "
        f"(decode, then the one merge) {s['end_to_end_speedup']:.2f}×. The machine itself, measured just "
        f"before each 2-worker run: two CPU-bound pure-Python processes ran {s['machine_speedup']:.2f}× one "
        f"(2.00× on two free cores), and each used {s['machine_cpu_inflation']:.2f}× the CPU time it used "
        f"alone; staging's speed-up was {s['speedup_of_machine']:.0%} of the machine's in the same repeat. "
        f"{s['quiet_starts'][0]} of {s['quiet_starts'][1]} configurations "
        f"started on a quiet machine (the rest of it using at most {cfg['quiet_cores']:g} cores; waited at "
        f"most {cfg['quiet_wait_s']:.0f} s).",
        f"- By CPU time (less sensitive to the rest of the machine): the two workers used "
        f"{s['two_decode_cpu_us']:.1f} µs per reading together, the lone worker {s['one_decode_cpu_us']:.1f} "
        f"({s['cpu_efficiency']:.0%}); with a free core each, the busier worker's CPU time gives "
        f"{s['cpu_speedup']:.2f}×.",
        f"- Where the lone worker's time goes (median s): decode {b['decode_s']:.2f}, of which appending to "
        f"`staged.increments` {d['append']:.2f} (writing its Parquet files {d['write_files']:.2f}, reading "
        f"the ledger {d['ledger_read']:.2f}, catalogue commits {d['commits']:.2f}) and decoding the "
        f"segments the rest; merge {b['merge_s']:.2f}, of which reading the increments "
        f"{mg['read_increments']:.2f}, loading `staged.*` {mg['merge_domains']:.2f}, corrections "
        f"{mg['corrections']:.2f}, exporting the Parquet partitions {mg['export']:.2f} and the fold "
        f"{mg['fold']:.2f}.",
        f"- Staging end to end against DuckDB's `read_json` → Parquet on the same cores: "
        f"**{s['one_ratio']:.2f}×** with 1 worker, **{s['two_ratio']:.2f}×** with 2: "
        f"{_verdict(min(s['one_ratio'], s['two_ratio']) >= TARGET_RATIO)} the {TARGET_RATIO}× target "
        f"(decode alone {s['one_decode_ratio']:.2f}× and {s['two_decode_ratio']:.2f}×).",
        f"- Appending to `staged.increments` (Parquet files, ledger check, catalogue commit) took "
        f"{s['one_append_share']:.0%} of a lone worker's decode time, {s['two_append_share']:.0%} with 2; "
        f"a catalogue commit {s['decode_commit_s_median'] * 1000:.0f} ms (median; at most "
        f"{s['decode_commit_s_max'] * 1000:.0f}), {s['commits_failed']} lost to the other worker. The merge "
        f"made {s['two_merge_commits']:g} commits (the fold) and spent {s['two_fold_s']:.2f} s folding.",
        f"- Bytes per reading: raw segments {bpr['raw']:.0f}, increments (Snappy Parquet, until merged) "
        f"{bpr['increments']:.1f}, staged Parquet {bpr['staged_parquet']:.1f}, DuckDB warehouse "
        f"{bpr['warehouse']:.1f}; Iceberg metadata {s['metadata_bytes_per_segment']:,.0f} bytes per segment "
        f"awaiting its merge.",
        "- Verified in every run: each shard decoded exactly the segments `shard_of` gives it, "
        "`staged.increments` held every reading once, the merge took all of them with no duplicate, "
        "correction or quarantine, "
        "`staged.*` and the Parquet files hold exactly the generated readings, and the ledger "
        + ("is identical in every run." if s["ledger_identical"] else "DIFFERS between runs."),
        "",
        "Times are each process's own (imports excluded). The 2-worker decode time runs from the first "
        "worker's start to the last one's end; *per worker* is each worker's readings over its own time "
        "(mean of the two). The ratio is the ceiling's time over staging's (decode + merge) in the same "
        "repeat. *Other CPU* is what the rest of the machine used during decode and merge (near 0 on an "
        "idle machine).",
    ]
    return "\n".join(lines)


def projection_markdown(national: dict[str, Any], local: dict[str, Any], p: dict[str, Any]) -> str:
    st, bpr = p["storage_per_day_gb"], p["bytes_per_reading"]
    n, nl = p["councils"], p["local_councils"]
    merge = (
        f"**{p['merge_minutes_per_hour']:.0f} min**: one merge cannot keep up ({p['merge_share']:.1f}× "
        "what one writer does)"
        if p["merge_share"] > 1
        else f"**{p['merge_minutes_per_hour']:.1f} min** ({p['merge_share']:.0%} of the hour)"
    )
    return "\n".join(
        [
            f"Projected by `{national['command']}` from its runs of {national['date']} (docs/benchmarks.md, "
            f'"Staging on many workers": {national["config"]["readings"]:,} readings, {n} and {nl} councils, '
            f"{national['config']['repeat']} repeat(s), medians) for {NATIONAL_SENSORS:,} sensors once a "
            f"minute: {NATIONAL_RATE:,} readings/s, {NATIONAL_PER_DAY / 1e9:.2f} billion a day. *Measured* "
            "is on this 2-core machine; everything else is arithmetic on it.",
            "",
            "| quantity | national case | from |",
            "| --- | ---: | --- |",
            f"| decode rate of one worker (one core), commits spanning {n} councils' partitions "
            f"| {p['per_worker_rate']:,.0f} readings/s "
            f"| measured ({nl} councils: {p['local_per_worker_rate']:,.0f}) |",
            f"| decode workers busy at the national rate | {p['decode_cores']:.1f} | projected |",
            f"| decode workers, with {HEADROOM:g}× headroom | **{p['workers']}** | projected |",
            f"| merge rate (one writer) | {p['merge_rate']:,.0f} readings/s | measured ({nl} councils: "
            f"{p['local_merge_rate']:,.0f}) |",
            f"| merge time for an hour of readings | {merge} | projected, linearly |",
            f"| data files a decode commit writes | {p['files_per_commit']:,.0f} "
            f"({p['file_ms']:.1f} ms each, its readings included); {p['files_per_s']:.0f} a second "
            f"nationally, {p['file_cores']:.1f} of the decode cores | measured; projected |",
            f"| staged Parquet written by hourly merges (a reading once by its merge while its day is open, "
            f"once more when the day is compacted: {p['export_rewrites']:.0f} times) | "
            f"{p['export_cores']:.2f} cores for the export "
            f"alone, in the one merge | projected from the measured export rate "
            f"({p['export_rate']:,.0f} rows/s, {nl} councils) |",
            f"| raw segments | **{st['raw'] / 1000:,.2f} TB/day** "
            f"(the issue: {NATIONAL_RAW_BYTES_PER_DAY / 1e12:.2f}) "
            f"| measured {bpr['raw']:.0f} B/reading |",
            f"| staged Parquet, stored | **{st['staged_parquet']:,.0f} GB/day** | measured "
            f"{bpr['staged_parquet']:.1f} B/reading ({nl} councils) |",
            f"| DuckDB warehouse | {st['warehouse']:,.0f} GB/day | measured {bpr['warehouse']:.1f} B/reading "
            f"({nl} councils) |",
            f"| `staged.increments`, an hour's awaiting the merge | {p['increments_hour_gb']:,.0f} GB "
            f"({st['increments']:,.0f} GB written a day) | measured {bpr['increments']:.1f} B/reading "
            f"({n} councils) |",
            f"| catalogue commits | **{p['commits_per_s']:.2f}/s** at {p['commit_size']:,} readings a commit "
            f"({p['commits_per_s_by_size'][50_000]:.1f}/s at 50,000; "
            f"{p['commits_per_s_by_size'][5_000]:.0f}/s at 5,000) | projected from the commit size |",
            f"| one catalogue commit (SQLite, local disk) | {p['commit_ms']:.0f} ms | measured |",
            f"| listener processes, with {HEADROOM:g}× headroom | {p['listeners']} | projected from the "
            f"backlog drain benchmark ({LISTENER_MSGS_PER_S:,} msg/s a listener) |",
            f"| broker delivery | {p['broker_share']:.0%} of one Mosquitto core | projected from the "
            f"drain benchmark ({BROKER_MSGS_PER_S:,} msg/s to `mosquitto_sub`) |",
        ]
    )


# -- main -----------------------------------------------------------------------------------


def profile(source: Path, generated: dict[str, Any], args) -> int:
    """The lone worker's decode and merge under cProfile; print where their time goes."""
    from civicflow.jobs import open_lake

    workdir = args.workdir / "profile"
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.copytree(source / "data" / "raw", workdir / "data" / "raw")
    lake = open_lake(_settings(workdir / "data"))
    lake.increments(), lake.ledger()
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    cpus = [0] if args.pin else None
    for kind, extra in (("decode", ["--shard", "0", "--shards", "1"]), ("merge", [])):
        out = (args.results / f"scale-profile-{kind}-{stamp}.pstats").resolve()
        (r,) = run_together(
            [(kind, child_args(kind, workdir, cpus, *extra, "--profile-to", str(out)))], workdir, args.timeout
        )
        print(
            f"\n{kind}: {r['seconds']:.2f}s under cProfile, {r['result']['readings']:,} readings; "
            f"stats in {out}"
        )
        stats = pstats.Stats(str(out))
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description="Staging with 1 and 2 workers on one backlog, against DuckDB read_json -> Parquet.",
    )
    parser.add_argument(
        "--readings", type=int, default=1_000_000, help="readings in the backlog (default 1,000,000)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="repeats of every configuration, medians reported (default 3, or 1 under 100,000 readings)",
    )
    parser.add_argument(
        "--segment-mib",
        type=float,
        default=SEGMENT_MIB,
        help=f"raw segment size (default {SEGMENT_MIB:g}; smaller when that gives under "
        f"{MIN_SEGMENTS} segments)",
    )
    parser.add_argument(
        "--councils",
        default=str(len(COUNCILS)),
        help=f"councils in the fleet, comma-separated for several runs (default {len(COUNCILS)}, as "
        f"bench/stage.py; {NATIONAL_FANOUT} or more: a national commit's partition fan-out, needed for "
        "the projection of docs/scaling.md: --councils 5,400)",
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to cores")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait, before each configuration, for the rest of the machine to go quiet "
        "(default 120, or 0 under 100,000 readings, a smoke check; 0: do not wait)",
    )
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.3,
        help="quiet: the rest of the machine uses at most this many cores (default 0.3)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "bench" / "out" / "scale", help="throwaway data"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="JSON results dir")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run is stopped")
    parser.add_argument("--keep", action="store_true", help="keep the data roots")
    parser.add_argument(
        "--profile", action="store_true", help="profile the lone worker's decode and merge instead"
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the results block of docs/benchmarks.md and the projection in docs/scaling.md",
    )
    parser.add_argument("--child", choices=("decode", "merge", "ceiling", "spin"), help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpus", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.readings < 1000:
        parser.error(f"--readings must be at least 1000, got {args.readings}")
    smoke = args.readings < 100_000  # a check that the benchmark runs, not a measurement
    if args.repeat is None:
        args.repeat = 1 if smoke else 3
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    try:
        args.councils = sorted({int(c) for c in args.councils.split(",") if c.strip()})
    except ValueError:
        parser.error(
            f"--councils takes numbers of councils separated by commas, e.g. 5,400; got {args.councils!r}"
        )
    if not args.councils or not all(1 <= c <= 999 for c in args.councils):
        parser.error(f"--councils must each be in 1..999, got {args.councils}")
    if not 0 < args.segment_mib <= 1024:
        parser.error(f"--segment-mib must be in (0, 1024], got {args.segment_mib:g}")
    cores = os.cpu_count() or 1
    if args.pin and cores < 2:
        parser.error("2 workers on 2 cores needs a machine with 2 cores; add --no-pin to run on one")
    for key in [k for k in os.environ if k.startswith("CIVICFLOW_")]:  # throwaway roots, default catalogue
        del os.environ[key]
    args.workdir = args.workdir.resolve()
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if smoke else 120.0
    cli_args = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    if os.environ.get("MAKELEVEL"):
        command = f'make bench-scale BENCH_SCALE_ARGS="{cli_args}"' if cli_args else "make bench-scale"
    else:
        command = f"python -m bench.scale {cli_args}".strip()
    reports = []
    for councils in args.councils:
        report = run_fleet(councils, args, command)
        if report is None:  # --profile
            return 0
        reports.append(report)
    national = max(reports, key=lambda r: r["config"]["councils"])
    local = min(reports, key=lambda r: r["config"]["councils"])
    projection = project(national, local)
    text = projection_markdown(national, local, projection)
    print(f"\n{text}")
    if args.update_docs:
        for report in reports:
            update_docs(
                ROOT / "docs" / "benchmarks.md",
                report["markdown"],
                *docs_markers(report["config"]["councils"]),
            )
        print("updated docs/benchmarks.md")
        if national["config"]["councils"] >= NATIONAL_FANOUT:
            update_docs(
                ROOT / "docs" / "scaling.md", text, PROJECTION_BEGIN, PROJECTION_END, "# Scaling Civicflow"
            )
            print("updated the projection in docs/scaling.md")
        else:
            print(
                f"docs/scaling.md's projection needs a run of {NATIONAL_FANOUT} councils or more "
                "(--councils 5,400)"
            )
    return 0


def run_fleet(councils: int, args: argparse.Namespace, command: str) -> dict[str, Any] | None:
    """Generate the backlog of `councils` councils' fleets and run every repeat on it."""
    import pyiceberg

    cores = os.cpu_count() or 1
    segment_max = min(
        int(args.segment_mib * 2**20), max(64 * 1024, args.readings * BYTES_PER_READING_GUESS // MIN_SEGMENTS)
    )
    source = args.workdir / f"source-{councils}"
    shutil.rmtree(source, ignore_errors=True)
    t0 = time.perf_counter()
    generated = write_backlog(
        args.readings, source / "data", source / "ndjson", segment_max, fleet_councils(councils)
    )
    generated["seconds"] = time.perf_counter() - t0
    print(
        f"[{councils} councils] generated {args.readings:,} readings in {generated['seconds']:.0f}s: "
        f"{generated['segments']} segments of {segment_max / 2**20:.3g} MiB, "
        f"{generated['segment_bytes'] / 2**20:,.0f} MiB raw, "
        f"{generated['ndjson_bytes'] / 2**20:,.0f} MiB NDJSON",
        flush=True,
    )
    if args.profile:
        profile(source, generated, args)
        return None
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(**versions(), pyiceberg=pyiceberg.__version__),
        "code": code_version("transforms", "warehouse", "jobs", "civicflow"),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "config": {
            "readings": args.readings,
            "repeat": args.repeat,
            "segment_max_bytes": segment_max,
            "councils": councils,
            "pin": args.pin,
            "quiet_wait_s": args.quiet_wait,
            "quiet_cores": args.quiet_cores,
            "commit_readings": commit_readings(),
            "filesystem": filesystem(args.workdir),
            "timeout_s": args.timeout,
        },
        "generated": generated,
        "repeats": [],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"scale-{councils}-councils-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    all_cores = None if not args.pin else list(range(min(cores, 2)))
    for rep in range(args.repeat):
        # Alternate the order, so that neither configuration always runs first on a warmer cache.
        order = ("one", "two") if rep % 2 == 0 else ("two", "one")
        runs: dict[str, Any] = {}
        for key in order:
            workers = 1 if key == "one" else 2
            threads = workers
            quiet = wait_for_quiet(args.quiet_wait, args.quiet_cores)
            if workers == 2:
                runs["spin"] = spin_speedup(source, args.pin, args.timeout)
                print(
                    f"[repeat {rep + 1}] the machine: two CPU-bound processes ran "
                    f"{runs['spin']['speedup']:.2f}× one",
                    flush=True,
                )
            (ceiling,) = run_together(
                [
                    (
                        f"ceiling-{threads}",
                        child_args(
                            "ceiling",
                            source,
                            [0] if threads == 1 and args.pin else all_cores if threads == 2 else None,
                            "--threads",
                            str(threads),
                        ),
                    )
                ],
                source,
                args.timeout,
            )
            if ceiling["result"]["rows"] != args.readings:
                raise RuntimeError(
                    f"the ceiling wrote {ceiling['result']['rows']} rows, expected {args.readings}"
                )
            runs[f"ceiling{threads}"] = ceiling
            print(
                f"[repeat {rep + 1}] ceiling, {threads} thread(s): {ceiling['seconds']:.2f}s, "
                f"other CPU {ceiling['other_cpu_s']:.1f}s",
                flush=True,
            )
            runs[key] = stage_with(workers, f"r{rep + 1}-{workers}w", source, generated, args)
            runs[key]["quiet_before"] = quiet
        report["repeats"].append(runs)
        out.write_text(json.dumps(report, indent=2, default=str))  # after every repeat: partial results
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    report["summary"] = summarise(report)
    if not report["summary"]["ledger_identical"]:
        raise RuntimeError(f"the runs' ledgers differ; see {out}")
    report["markdown"] = markdown(report)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\n{report['markdown']}")
    print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}", flush=True)
    if not args.keep:
        shutil.rmtree(source, ignore_errors=True)
    return report


if __name__ == "__main__":
    sys.exit(main())
