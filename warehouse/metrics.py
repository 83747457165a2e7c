"""The batch side's Prometheus metrics, read from the warehouse when they are scraped.

The listener counts what it does as it does it (`civicflow.ingest.metrics`); staging, the quality gate and
publication run as Airflow tasks that come and go, so their state is read where they leave it: the
warehouse's ledgers. `BatchCollector` opens the DuckDB file read-only on a scrape, runs a few
aggregate queries and closes it again, so it never holds the file while a task wants to write it.
The portal serves it at `/metrics` (`civicflow.portal.metrics`), and `civicflow metrics` writes it for
node_exporter's textfile collector.

While a task holds the warehouse for writing (DuckDB allows one writer and no reader beside it),
a scrape serves the values of the last read with `civicflow_batch_warehouse_up` 0; the time of
that read is `civicflow_batch_warehouse_read_timestamp_seconds`. Reads are at least
`min_interval_s` apart, however often and by however many servers the metrics are scraped.

Labels are bounded: `domain` is one of the contract's datasets, `council` one that staging has
staged a partition of, `reason` a quarantine reason of the contract or a rule of the quality gate.
Anything else (a council or domain a bad topic made up, a topic with none) is counted as `other`.
No label names a device.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import duckdb
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from civicflow.contract import Domain, Reason
from civicflow.errors import CivicflowError, TransientError
from civicflow.health import closed_backlog
from civicflow.warehouse.db import connect
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import held_back

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 15.0
"""Least time between two reads of the warehouse; a scrape in between is served the last read."""
OTHER = "other"
"""The label value of a council, domain or reason outside the bounded sets (see the docstring)."""
GRAINS = ("partition", "device")

# name: (type, help, labels). The type's suffix is added on exposition: a counter `x` is `x_total`.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "civicflow_batch_warehouse_up": (
        "gauge",
        "1 when the last scrape read the warehouse; 0 when it could not (a task holds it for writing, "
        "or it is missing or unreadable): the other civicflow_ batch values are then those of the "
        "last read",
        (),
    ),
    "civicflow_batch_warehouse_read_timestamp_seconds": (
        "gauge",
        "When the warehouse was last read, in Unix time: the time of the values served",
        (),
    ),
    "civicflow_stage_last_success_timestamp_seconds": (
        "gauge",
        "When staging last recorded raw segments in the warehouse (the newest raw.segments.staged_at "
        "or merge of raw.increments), in Unix time",
        (),
    ),
    "civicflow_stage_segments": (
        "counter",
        "Raw segments staged: rows of the raw.segments ledger",
        (),
    ),
    "civicflow_stage_readings": (
        "counter",
        "Readings staged from the raw segments (raw.segments.readings)",
        (),
    ),
    "civicflow_stage_rejected": (
        "counter",
        "Messages or readings of the staged raw segments refused into quarantine (raw.segments.rejected)",
        (),
    ),
    "civicflow_raw_segments_awaiting_staging": (
        "gauge",
        "Closed raw segments in the local raw zone that staging has not recorded yet, by listener "
        "(none when the raw zone is in an object store)",
        ("listener",),
    ),
    "civicflow_publish_last_release_timestamp_seconds": (
        "gauge",
        "When the newest release holding a publication was cut (the time in its id), in Unix time",
        (),
    ),
    "civicflow_publish_pending_partitions": (
        "gauge",
        "Partitions published but held by no release yet (the next publish run releases them)",
        (),
    ),
    "civicflow_published_partitions": (
        "gauge",
        "Partitions (a council's day of a dataset) that a release holds",
        ("domain", "council"),
    ),
    "civicflow_dataset_newest_reading_timestamp_seconds": (
        "gauge",
        "observed_at of the newest released reading of a dataset and council, in Unix time",
        ("domain", "council"),
    ),
    "civicflow_dataset_freshness_seconds": (
        "gauge",
        "Age of the newest released reading of a dataset and council at the scrape",
        ("domain", "council"),
    ),
    "civicflow_gate_held_back_partitions": (
        "gauge",
        "What the quality gate holds back on current versions and no approval lifted: whole "
        "partitions (grain=partition) or one device's day of a partition (grain=device)",
        ("domain", "council", "grain"),
    ),
    "civicflow_gate_held_back_reasons": (
        "gauge",
        "Holds (whole partitions and devices' days) by the gate's rule that failed; a hold that "
        "failed two rules counts under each",
        ("domain", "council", "reason"),
    ),
    "civicflow_quarantine_readings": (
        "gauge",
        "Rows of quarantine.readings (messages or readings refused at staging) by reason; "
        "retention deletes old rows, so it can fall",
        ("domain", "council", "reason"),
    ),
}


@dataclass(frozen=True)
class BatchState:
    """What one read of the warehouse found: the values behind every metric but `up` and ages."""

    read_at: float
    last_staged: float | None = None
    segments: int = 0
    readings: int = 0
    rejected: int = 0
    awaiting: dict[str, int] = field(default_factory=dict)
    last_release: float | None = None
    pending: int = 0
    partitions: dict[tuple[str, str], int] = field(default_factory=dict)
    newest_reading: dict[tuple[str, str], float] = field(default_factory=dict)
    held: dict[tuple[str, str, str], int] = field(default_factory=dict)
    held_reasons: dict[tuple[str, str, str], int] = field(default_factory=dict)
    quarantine: dict[tuple[str, str, str], int] = field(default_factory=dict)


def _seconds(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _release_time(release_id: str | None) -> float | None:
    """`000042-20261123T120000Z` -> the Unix time of 2026-11-23 12:00:00 UTC."""
    if release_id is None:
        return None
    try:
        stamp = datetime.strptime(release_id.split("-", 1)[1], "%Y%m%dT%H%M%SZ")
    except (IndexError, ValueError):
        return None
    return stamp.replace(tzinfo=UTC).timestamp()


def read_state(layout: Layout, con: duckdb.DuckDBPyConnection, now: float) -> BatchState:
    """Read every batch metric's value from an open warehouse connection (and the local raw zone)."""
    councils = {c for (c,) in con.execute("SELECT DISTINCT council FROM staged.partitions").fetchall()}
    domains = {d.value for d in Domain}
    reasons = {r.value for r in Reason}

    [(segments, readings, rejected, staged_at)] = con.execute(
        "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(rejected), 0), max(staged_at) "
        "FROM raw.segments"
    ).fetchall()
    [(merged_at,)] = con.execute("SELECT max(consumed_at) FROM raw.increments").fetchall()
    stages = [t for t in (_seconds(staged_at), _seconds(merged_at)) if t is not None]

    [(newest_release, pending)] = con.execute(
        "SELECT max(release_id), count(*) FILTER (WHERE release_id IS NULL) FROM published.releases"
    ).fetchall()
    released = con.execute(
        """SELECT domain, council, count(*), max(event_date) FROM published.releases
           WHERE release_id IS NOT NULL GROUP BY ALL"""
    ).fetchall()
    newest_reading: dict[tuple[str, str], float] = {}
    newest_day: dict[str, date] = {}
    for domain, _council, _n, day in released:
        newest_day[domain] = min(day, newest_day.get(domain, day))
    for domain, floor in sorted(newest_day.items()):
        if domain not in domains:
            continue
        # Only the days from the stalest council's newest one on: DuckDB skips the older row groups.
        # A partition is a council's UTC date of observed_at (the session speaks UTC).
        rows = con.execute(
            f"""SELECT council, max(observed_at) FROM published.{domain}
                WHERE observed_at >= $floor
                  AND (council, CAST(observed_at AS DATE)) IN (
                      SELECT (council, event_date) FROM published.releases
                      WHERE domain = $domain AND release_id IS NOT NULL AND event_date >= $day)
                GROUP BY ALL""",
            {
                "floor": datetime.combine(floor, datetime.min.time(), tzinfo=UTC),
                "day": floor,
                "domain": domain,
            },
        ).fetchall()
        newest_reading.update(((domain, council), at.timestamp()) for council, at in rows if at is not None)

    held: Counter[tuple[str, str, str]] = Counter()
    held_reasons: Counter[tuple[str, str, str]] = Counter()
    for hold in held_back(con):
        held[(hold.domain, hold.council, hold.grain)] += 1
        for rule in hold.rules or ["unknown"]:
            held_reasons[(hold.domain, hold.council, rule)] += 1
    staged = con.execute("SELECT DISTINCT domain, council FROM staged.partitions").fetchall()
    for domain, council in staged:
        for grain in GRAINS:
            held[(domain, council, grain)] += 0

    quarantine: Counter[tuple[str, str, str]] = Counter()
    for domain, council, reason, n in con.execute(
        "SELECT domain, council, reason, count(*) FROM quarantine.readings GROUP BY ALL"
    ).fetchall():
        key = (
            domain if domain in domains else OTHER,
            council if council in councils else OTHER,
            reason if reason in reasons else OTHER,
        )
        quarantine[key] += n

    return BatchState(
        read_at=now,
        last_staged=max(stages) if stages else None,
        segments=segments,
        readings=int(readings),
        rejected=int(rejected),
        awaiting=awaiting_staging(layout),
        last_release=_release_time(newest_release),
        pending=pending,
        partitions={(d, c): n for d, c, n, _day in released},
        newest_reading=newest_reading,
        held=dict(held),
        held_reasons=dict(held_reasons),
        quarantine=dict(quarantine),
    )


def awaiting_staging(layout: Layout) -> dict[str, int]:
    """Closed segments past each listener's `.staged-through` marker, in the local raw zone."""
    if not layout.raw.is_dir():
        return {}
    return {d.name: closed_backlog(d) for d in sorted(layout.raw.iterdir()) if d.is_dir()}


def read_warehouse(layout: Layout, now: float) -> BatchState:
    """Open the warehouse read-only, read the batch state, close it (TransientError while a task
    writes it, FileNotFoundError before the first `civicflow batch`)."""
    con = connect(layout.warehouse, read_only=True)
    try:
        return read_state(layout, con, now)
    finally:
        con.close()


def _empty(name: str) -> Metric:
    kind, text, labels = METRICS[name]
    family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return family(name, text, labels=labels)


def families(state: BatchState | None, up: bool, now: float) -> Iterator[Metric]:
    """The metric families of a read (None: the warehouse was never read), as of `now`."""
    out = {name: _empty(name) for name in METRICS}

    def put(name: str, value: float | None, labels: Iterable[str] = ()) -> None:
        if value is not None:
            out[name].add_metric(list(labels), value)

    put("civicflow_batch_warehouse_up", 1.0 if up else 0.0)
    if state is not None:
        put("civicflow_batch_warehouse_read_timestamp_seconds", state.read_at)
        put("civicflow_stage_last_success_timestamp_seconds", state.last_staged)
        put("civicflow_stage_segments", state.segments)
        put("civicflow_stage_readings", state.readings)
        put("civicflow_stage_rejected", state.rejected)
        for listener, n in sorted(state.awaiting.items()):
            put("civicflow_raw_segments_awaiting_staging", n, [listener])
        put("civicflow_publish_last_release_timestamp_seconds", state.last_release)
        put("civicflow_publish_pending_partitions", state.pending)
        for key, n in sorted(state.partitions.items()):
            put("civicflow_published_partitions", n, key)
        for key, at in sorted(state.newest_reading.items()):
            put("civicflow_dataset_newest_reading_timestamp_seconds", at, key)
            put("civicflow_dataset_freshness_seconds", max(0.0, now - at), key)
        for key, n in sorted(state.held.items()):
            put("civicflow_gate_held_back_partitions", n, key)
        for key, n in sorted(state.held_reasons.items()):
            put("civicflow_gate_held_back_reasons", n, key)
        for key, n in sorted(state.quarantine.items()):
            put("civicflow_quarantine_readings", n, key)
    yield from out.values()


class BatchCollector(Collector):
    """The batch metrics, read from `layout`'s warehouse when scraped (at most every `min_interval_s`).

    `clock` gives Unix time (freshness is measured against it). With `raise_errors`, a warehouse
    that cannot be read raises instead of being reported as `civicflow_batch_warehouse_up 0`: for
    a one-off read (`civicflow metrics`) that must not replace good values with none.
    """

    def __init__(
        self,
        layout: Layout,
        *,
        min_interval_s: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.time,
        raise_errors: bool = False,
    ) -> None:
        self.layout = layout
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.raise_errors = raise_errors
        self._lock = threading.Lock()
        self._state: BatchState | None = None
        self._up = False
        self._tried_at: float | None = None
        self._error: str | None = None  # the last failure logged: each is logged once, not per scrape

    def describe(self) -> Iterable[Metric]:
        """The families without values: registering the collector does not read the warehouse."""
        return [_empty(name) for name in METRICS]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = self.clock()
            if self._tried_at is None or now - self._tried_at >= self.min_interval_s:
                self._tried_at = now
                try:
                    self._state, self._up, self._error = read_warehouse(self.layout, now), True, None
                except (CivicflowError, OSError, duckdb.Error) as exc:
                    if self.raise_errors:
                        raise
                    self._up = False
                    if str(exc) != self._error:
                        self._error = str(exc)
                        log.log(
                            logging.INFO if isinstance(exc, TransientError) else logging.WARNING,
                            "batch metrics: cannot read the warehouse (%s); serving the last values read, "
                            "with civicflow_batch_warehouse_up 0",
                            exc,
                        )
            state, up = self._state, self._up
        return list(families(state, up, now))
