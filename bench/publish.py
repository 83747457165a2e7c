"""Publication benchmark (issue 11): the quality gate and publish run for 1, 10 and 50 councils.

For each council count, in a throwaway data root, synthetic car parks: every council has 20
devices (domain `parking`) reporting once an hour, each at its own minute, for `--days` days; the
last day is today and runs to 11:xx (the readings of a live day). Then, each step in its own fresh
interpreter (so each peak resident set is that step's alone):

1. **stage (full)**: `civicflow.transforms.stage.stage_segments` on the landed raw segments: the reference
   ("ceiling") for the same readings;
2. **publish (full)**: `civicflow.jobs.publication.gate_and_publish` at today 12:30, the first publication
   of every partition (judge with Great Expectations, publish files/aggregates/ledger, release);
3. one more hour of readings arrives for every council (today 12:xx), and is landed as a segment;
4. **stage (increment)**: staging that hour (a new version of today's partition in each council);
5. **publish (increment)**: `gate_and_publish` at today 13:30: the hourly publish run.

Inside each publish run, `civicflow.expectations.judge.judge_partitions` (the gate),
`civicflow.publish.partition.publish_decisions` (publish) and `civicflow.jobs.publication.release_step`
(the release) are wrapped with timers, so one run gives the split. Importing Great Expectations
(about 10 s, once per process) is measured on its own before the clock starts and is not in any
timed figure. Peak memory is the child's `ru_maxrss` (VmHWM), which includes DuckDB's allocations.

Run with `make bench-publish`, or `python -m bench.publish --help`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.machine import code_version, filesystem, machine

ROOT = Path(__file__).resolve().parent.parent
DEVICES = 20  # per council; --devices changes it (rows per partition)
TOTAL_SPOTS = 200
TODAY = date(2026, 3, 20)
FULL_HOURS_TODAY = 12  # today's readings at the first publication: 00:xx .. 11:xx
TARGET_INCREMENT_S = 120.0
TARGET_GATE_SHARE = 0.25
DOCS_BEGIN = "<!-- bench:publish:begin -->"
DOCS_END = "<!-- bench:publish:end -->"


def council_name(i: int) -> str:
    return f"council{i:03d}"


def _occupied(council: int, device: int, hour_index: int) -> int:
    hour = hour_index % 24
    base = 0.2 + 0.6 * max(0.0, 1 - abs(hour - 13) / 7)
    jitter = ((council * 7919 + device * 104729 + hour_index * 1299709) % 21 - 10) / 100
    return max(0, min(TOTAL_SPOTS, int(TOTAL_SPOTS * (base + jitter))))


def hours_of(days: int, increment: bool) -> list[datetime]:
    """The hours of readings: `days` days ending today at 11:xx, or today's 12:xx alone."""
    start = datetime.combine(TODAY - timedelta(days=days - 1), datetime.min.time(), tzinfo=UTC)
    if increment:
        return [start + timedelta(days=days - 1, hours=FULL_HOURS_TODAY)]
    n = (days - 1) * 24 + FULL_HOURS_TODAY
    return [start + timedelta(hours=h) for h in range(n)]


def land(data_root: Path, councils: int, hours: list[datetime], listener: str) -> dict[str, Any]:
    """Write the readings of `hours` for every council and device into closed raw segments."""
    from civicflow.warehouse.segments import SegmentWriter

    writer = SegmentWriter(
        data_root / "raw" / listener, max_bytes=64 << 20, max_age_s=1e12, fsync=False, clock=time.time
    )
    t0 = time.perf_counter()
    n = 0
    for hour in hours:
        hour_index = int(hour.timestamp()) // 3600
        for c in range(councils):
            council = council_name(c)
            for d in range(DEVICES):
                observed = hour + timedelta(minutes=(d * 3) % 60, seconds=c % 60)
                payload = {
                    "observed_at": observed.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "occupied_spots": _occupied(c, d, hour_index),
                    "total_spots": TOTAL_SPOTS,
                }
                ns = int(observed.timestamp() + 2) * 1_000_000_000 + n % 1_000_000
                writer.append(f"city/{council}/parking/cp{d:02d}".encode(), orjson.dumps(payload), ns)
                n += 1
    writer.close()
    return {"readings": n, "seconds": time.perf_counter() - t0}


# -- the timed children ---------------------------------------------------------------------


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_stage(data_root: Path) -> dict[str, Any]:
    import pandas  # noqa: F401 - as in bench.stage: DuckDB's first Arrow register imports it

    from civicflow.transforms.decode import Limits
    from civicflow.transforms.stage import stage_segments
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.layout import Layout

    layout = Layout(data_root)
    con = connect(layout.warehouse)
    peak_before = _peak_mib()
    cpu0, t0 = _cpu(), time.perf_counter()
    result = stage_segments(layout, con, Limits())
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    con.close()
    out = result.to_dict()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "peak_rss_mib": _peak_mib(),
        "rss_before_mib": peak_before,
        "readings": out["readings"],
        "quarantined": sum(out["quarantined"].values()) if isinstance(out["quarantined"], dict) else 0,
        "partitions": len(result.changed_partitions),
    }


def child_publish(data_root: Path, now: datetime) -> dict[str, Any]:
    t0 = time.perf_counter()
    import civicflow.expectations.gate  # noqa: F401 - Great Expectations itself, ~10 s

    gx_import_s = time.perf_counter() - t0
    import pandas  # noqa: F401

    import civicflow.expectations.judge
    import civicflow.jobs.publication
    import civicflow.publish.partition
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.layout import Layout
    from civicflow.warehouse.partitions import partition_files, to_validate

    import_s = time.perf_counter() - t0
    timers = {"gate_s": 0.0, "publish_s": 0.0, "release_s": 0.0}

    def timed(key: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers[key] += time.perf_counter() - start

        return wrapper

    civicflow.expectations.judge.judge_partitions = timed(
        "gate_s", civicflow.expectations.judge.judge_partitions
    )
    civicflow.publish.partition.publish_decisions = timed(
        "publish_s", civicflow.publish.partition.publish_decisions
    )
    civicflow.jobs.publication.release_step = timed("release_s", civicflow.jobs.publication.release_step)

    layout = Layout(data_root)
    con = connect(layout.warehouse)
    refs = to_validate(con)
    rows = 0
    for ref in refs:
        for name in partition_files(con, ref):
            staged = layout.staged_file(ref.domain, ref.council, ref.event_date, name)
            [(count,)] = con.execute(f"SELECT count(*) FROM read_parquet('{staged}')").fetchall()
            rows += count
    peak_before = _peak_mib()
    cpu0, t1 = _cpu(), time.perf_counter()
    result = civicflow.jobs.publication.gate_and_publish(layout, con, now=now, refs=refs)
    seconds, cpu = time.perf_counter() - t1, _cpu() - cpu0
    con.close()
    r = result.to_dict()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "gx_import_s": gx_import_s,
        "import_s": import_s,
        **timers,
        "other_s": seconds - sum(timers.values()),
        "partitions": len(refs),
        "rows": rows,
        "peak_rss_mib": _peak_mib(),
        "rss_before_mib": peak_before,
        "validated": r["validated"],
        "passed": r["passed"],
        "published": r["published"],
        "held_back": len(r["held_back"]),
        "devices_held": len(r["devices_held"]),
        "warned": len(r["warned"]),
        "gate_errors": r["gate_errors"][:3],
        "release": r["release"],
    }


# -- the parent -----------------------------------------------------------------------------


def run_child(kind: str, data_root: Path, timeout_s: float, now: datetime | None = None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIVICFLOW_")}
    cmd = [sys.executable, "-m", "bench.publish", "--child", kind, "--data-root", str(data_root)]
    if now is not None:
        cmd += ["--now", now.isoformat()]
    log = data_root.parent / f"{kind}.log"
    spawned = time.time()
    with log.open("ab") as log_file:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log_file, timeout=timeout_s
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child exited {proc.returncode}; see {log}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1]) | {
        "wall_from_spawn_s": time.time() - spawned,
        # other work competing for the cores: the 1-minute load average as the step ended
        "loadavg_after": float(Path("/proc/loadavg").read_text().split()[0]),
    }


def measure(councils: int, args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir.resolve() / f"c{councils}-d{args.days}"
    shutil.rmtree(workdir, ignore_errors=True)
    data_root = workdir / "data"
    data_root.mkdir(parents=True)
    full_now = datetime.combine(TODAY, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12, minutes=30)
    run: dict[str, Any] = {"councils": councils, "days": args.days, "devices": DEVICES}
    run["landed_full"] = land(data_root, councils, hours_of(args.days, False), "bench-full")
    tag = f"[{councils} councils x {args.days} days]"
    print(f"{tag} landed {run['landed_full']['readings']:,} readings", flush=True)
    for phase, listener, now in (
        ("full", None, full_now),
        ("increment", "bench-hour", full_now + timedelta(hours=1)),
    ):
        if listener:
            run["landed_increment"] = land(data_root, councils, hours_of(args.days, True), listener)
        stage = run_child("stage", data_root, args.timeout)
        pub = run_child("publish", data_root, args.timeout, now)
        run[f"stage_{phase}"], run[f"publish_{phase}"] = stage, pub
        print(
            f"{tag} {phase}: stage {stage['readings']:,} readings {stage['seconds']:.1f}s "
            f"(peak {stage['peak_rss_mib']:.0f} MiB); publish {pub['partitions']} partitions "
            f"{pub['rows']:,} rows {pub['seconds']:.1f}s = gate {pub['gate_s']:.1f} + publish "
            f"{pub['publish_s']:.1f} + release {pub['release_s']:.1f} + other {pub['other_s']:.1f} "
            f"(peak {pub['peak_rss_mib']:.0f} MiB; GX import {pub['gx_import_s']:.1f}s; "
            f"published {pub['published']}, held {pub['held_back']}, warned {pub['warned']})",
            flush=True,
        )
        if pub["published"] != pub["partitions"]:
            print(f"{tag} WARNING: not every partition was published: {pub}", flush=True)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return run


def fit(runs: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    """Least squares of seconds = c + a * partitions + b * rows over every publish run."""
    import numpy as np

    points = [
        (r[f"publish_{p}"]["partitions"], r[f"publish_{p}"]["rows"], r[f"publish_{p}"][key])
        for r in runs
        for p in ("full", "increment")
    ]
    if len(points) < 3:
        return None
    x = np.array([[1.0, p, rows] for p, rows, _ in points])
    y = np.array([s for *_, s in points])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    predicted = x @ coef
    per_partition, *_ = np.linalg.lstsq(x[:, :2], y, rcond=None)
    return {
        "partition_only_run_s": float(per_partition[0]),
        "partition_only_per_partition_s": float(per_partition[1]),
        "run_s": float(coef[0]),
        "per_partition_s": float(coef[1]),
        "per_row_ms": float(coef[2]) * 1000,
        "max_abs_residual_s": float(np.max(np.abs(predicted - y))),
    }


def stage_fit(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    import numpy as np

    points = [
        (r[f"stage_{p}"]["readings"], r[f"stage_{p}"]["seconds"]) for r in runs for p in ("full", "increment")
    ]
    if len(points) < 2:
        return None
    x = np.array([[1.0, n] for n, _ in points])
    coef, *_ = np.linalg.lstsq(x, np.array([s for _, s in points]), rcond=None)
    return {"run_s": float(coef[0]), "per_row_ms": float(coef[1]) * 1000}


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Run {report['started']} on {m['cpu']} ({m['cores']} cores, {m['ram_gib']} GiB RAM, "
        f"{report['filesystem']}), Python {m['python']}, DuckDB {m.get('duckdb')}, "
        f"Great Expectations {m.get('great_expectations')}, commit {report['code']['commit']}"
        + (" (with uncommitted changes)" if report["code"]["uncommitted"] else "")
        + f". `{report['command']}`: {DEVICES} car parks per council, hourly, {report['days']} days "
        f"(the last one to 11:xx), then one more hour.",
        "",
        "| councils | phase | partitions | rows | stage s | publish run s (CPU s) | gate s | publish s "
        "| release s | gate / stage | stage peak MiB | publish peak MiB (before run) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["runs"]:
        for phase in ("full", "increment"):
            s, p = r[f"stage_{phase}"], r[f"publish_{phase}"]
            lines.append(
                f"| {r['councils']} | {phase} | {p['partitions']:,} | {p['rows']:,} | {s['seconds']:.1f} "
                f"| {p['seconds']:.1f} ({p['cpu_s']:.1f}) | {p['gate_s']:.1f} | {p['publish_s']:.1f} "
                f"| {p['release_s']:.1f} | {p['gate_s'] / s['seconds']:.1f} | {s['peak_rss_mib']:,.0f} "
                f"| {p['peak_rss_mib']:,.0f} ({p['rss_before_mib']:,.0f}) |"
            )
    gx = [r[f"publish_{p}"]["gx_import_s"] for r in report["runs"] for p in ("full", "increment")]
    lines += [
        "",
        f"Great Expectations import, once per process, not in the table: {min(gx):.1f}–{max(gx):.1f} s.",
    ]
    loads = [
        r[f"{k}_{p}"].get("loadavg_after")
        for r in report["runs"]
        for k in ("stage", "publish")
        for p in ("full", "increment")
    ]
    if all(x is not None for x in loads):
        lines.append(f"Load average (1 min) as each step ended: {min(loads):.1f}–{max(loads):.1f}.")
    for key, label in (("seconds", "whole publish run"), ("gate_s", "gate"), ("publish_s", "publish")):
        f = report["fits"].get(key)
        if f:
            lines.append(
                f"Fit, {label}, on partitions alone: {f['partition_only_run_s']:.2f} s per run + "
                f"{f['partition_only_per_partition_s'] * 1000:.0f} ms per partition."
            )
            lines.append(
                f"Fit, {label}: {f['run_s']:.2f} s per run + {f['per_partition_s'] * 1000:.0f} ms per "
                f"partition + {f['per_row_ms']:.3f} ms per row "
                f"(largest residual {f['max_abs_residual_s']:.1f} s)."
            )
    sf = report["fits"].get("stage")
    if sf:
        lines.append(f"Fit, staging: {sf['run_s']:.2f} s per run + {sf['per_row_ms']:.3f} ms per row.")
    return "\n".join(lines)


def update_docs(path: Path, block: str) -> None:
    text = path.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        text = text.rstrip("\n") + f"\n\n{DOCS_BEGIN}\n{DOCS_END}\n"
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    path.write_text(f"{head}{DOCS_BEGIN}\n{block}\n{DOCS_END}{tail}")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("duckdb", "great_expectations", "pyarrow")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.publish",
        description="Gate and publish for growing council counts: full first publication and one hour more.",
    )
    parser.add_argument("--councils", type=int, nargs="+", default=[1, 10, 50], help="council counts")
    parser.add_argument("--devices", type=int, default=DEVICES, help="car parks per council (default 20)")
    parser.add_argument("--days", type=int, default=7, help="days of hourly readings per council (default 7)")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "bench" / "out" / "publish", help="throwaway data"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="JSON results dir")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a child is stopped")
    parser.add_argument("--keep", action="store_true", help="keep each run's data root")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the block in docs/benchmarks.md")
    parser.add_argument("--child", choices=("stage", "publish"), help=argparse.SUPPRESS)
    parser.add_argument("--data-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--now", type=datetime.fromisoformat, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    globals()["DEVICES"] = args.devices
    if args.child:
        out = (
            child_stage(args.data_root) if args.child == "stage" else child_publish(args.data_root, args.now)
        )
        print(json.dumps(out, default=str))
        return 0

    started = datetime.now(UTC)
    runs = [measure(c, args) for c in args.councils]
    report = {
        "started": f"{started:%Y-%m-%d %H:%M} UTC",
        "command": "python -m bench.publish " + " ".join(argv if argv is not None else sys.argv[1:]),
        "days": args.days,
        "machine": machine(**versions()),
        "filesystem": filesystem(args.workdir.resolve().parent),
        "code": code_version("bench", "expectations", "publish", "jobs", "transforms", "warehouse"),
        "runs": runs,
    }
    report["fits"] = {k: fit(runs, k) for k in ("seconds", "gate_s", "publish_s")} | {
        "stage": stage_fit(runs)
    }
    inc = [r for r in runs if r["councils"] == max(args.councils)][0]
    report["targets"] = {
        "increment_councils": inc["councils"],
        "increment_publish_s": inc["publish_increment"]["seconds"],
        "increment_under_2_min": inc["publish_increment"]["seconds"] < TARGET_INCREMENT_S,
        "gate_over_stage": {
            f"{r['councils']}/{p}": r[f"publish_{p}"]["gate_s"] / r[f"stage_{p}"]["seconds"]
            for r in runs
            for p in ("full", "increment")
        },
        "publish_peak_mib": {r["councils"]: r["publish_full"]["peak_rss_mib"] for r in runs},
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"publish-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    block = markdown(report)
    print(block)
    print(f"results: {path}")
    if args.update_docs:
        update_docs(ROOT / "docs" / "benchmarks.md", block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
