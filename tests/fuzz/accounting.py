"""Every reading of every landed message, accounted for in the warehouse.

The reference decoder (`civicflow.transforms.decode.decode_message`) is run again on every record of every
closed raw segment, with the record's receive time and the run's limits and registry: it says how
many readings and which rejections each record yields, whichever path staging took (the DuckDB fast
path or the reference). The warehouse must then hold, for each record:

- one `quarantine.readings` row per rejection, with the same reason;
- each reading either staged with the record's lineage (segment, offset, reading index) and the
  reference's values, or *collapsed*: its natural key is staged from another record (an identical
  re-send, or a correction that replaced it), so it is in the warehouse once, not lost;
- each staged reading either published (`published.<domain>`) or held back by the quality gate (a
  hold on its partition or on its device's day), never both and never neither.

So per message: readings landed (the reference's readings and rejections) = published + held back +
quarantined + collapsed. Anything else is a problem, described with the record it concerns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import orjson

from civicflow.contract import DATASETS, Domain
from civicflow.registry import Registry
from civicflow.transforms.decode import Decoded, Limits, decode_message
from civicflow.transforms.stage import segment_id
from civicflow.warehouse.layout import Layout
from civicflow.warehouse.partitions import held_back
from civicflow.warehouse.segments import RawRecord, list_closed_segments, read_segment
from fuzz.corpus import Outcome

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Lineage = tuple[str, int, int]  # segment id, record offset, reading index


_US = timedelta(microseconds=1)


def epoch_us(at: datetime) -> int:
    return (at - EPOCH) // _US


@dataclass
class RecordOutcome:
    """What became of one landed message, counted from the warehouse."""

    topic: bytes
    payload: bytes
    received_at: datetime
    readings: int = 0  # by the reference decoder
    published: int = 0
    held: int = 0
    collapsed: int = 0
    quarantined: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        """Readings that were not quarantined: staged (published or held) or collapsed."""
        return self.published + self.held + self.collapsed

    @property
    def outcome(self) -> Outcome:
        return Outcome.of(self.accepted, self.quarantined.elements())


@dataclass
class Ledger:
    """The whole run's account: totals, and the outcome of every landed record."""

    records: dict[tuple[str, int], RecordOutcome] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    corrections: int = 0
    partitions: int = 0
    holds: int = 0

    def total(self, name: str) -> int:
        return sum(getattr(r, name) for r in self.records.values())

    @property
    def quarantined(self) -> Counter:
        out: Counter = Counter()
        for r in self.records.values():
            out.update(r.quarantined)
        return out

    @property
    def landed_readings(self) -> int:
        """Readings and rejections the reference decoder makes of every landed message."""
        return self.total("readings") + sum(self.quarantined.values())

    def failed_records(self) -> Iterator[RecordOutcome]:
        return (r for r in self.records.values() if r.problems)

    def all_problems(self) -> list[str]:
        return [*self.problems, *(p for r in self.failed_records() for p in r.problems)]


def landed_records(layout: Layout) -> Iterator[tuple[str, RawRecord]]:
    for path in list_closed_segments(layout.raw):
        seg = segment_id(layout, path)
        for record in read_segment(path):
            yield seg, record


def _key(domain: Domain, reading: dict[str, Any]) -> tuple:
    return (
        domain.value,
        reading["council"],
        reading["device_id"],
        epoch_us(reading["observed_at"]),
        reading.get("lane_id"),
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, datetime) and isinstance(b, datetime):
        return a == b
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and float(a) == float(b)
    return a == b


def _staged(
    con: duckdb.DuckDBPyConnection, problems: list[str]
) -> dict[tuple, tuple[Lineage, dict[str, Any], date]]:
    """Every staged reading by natural key: its lineage, values and partition date."""
    out = {}
    for domain, dataset in DATASETS.items():
        values = [c.name for c in dataset.value_columns] + ["lat", "lon"]
        lane = "lane_id" if "lane_id" in dataset.natural_key else "NULL"
        rows = con.execute(
            f"SELECT segment_id, record_offset, reading_index, council, device_id, epoch_us(observed_at), "
            f"{lane}, event_date, {', '.join(values)} FROM staged.{domain}"
        ).fetchall()
        for seg, off, idx, council, device, us, lane_id, day, *vals in rows:
            key = (domain.value, council, device, us, lane_id)
            if key in out:
                problems.append(f"natural key {key} is staged twice: {out[key][0]} and {(seg, off, idx)}")
            out[key] = ((seg, off, idx), dict(zip(values, vals, strict=True)), day)
    return out


def _published(con: duckdb.DuckDBPyConnection) -> set[tuple]:
    keys = set()
    for domain, dataset in DATASETS.items():
        lane = "lane_id" if "lane_id" in dataset.natural_key else "NULL"
        rows = con.execute(
            f"SELECT council, device_id, epoch_us(observed_at), {lane} FROM published.{domain}"
        ).fetchall()
        keys.update((domain.value, *row) for row in rows)
    return keys


def account(layout: Layout, con: duckdb.DuckDBPyConnection, limits: Limits, registry: Registry) -> Ledger:
    """Account for every reading of every landed record (see the module's docstring)."""
    ledger = Ledger()
    staged = _staged(con, ledger.problems)
    published = _published(con)
    holds = held_back(con)
    whole = {(h.domain, h.council, h.event_date) for h in holds if h.device_id is None}
    device_holds = {
        (h.domain, h.council, h.event_date, h.device_id) for h in holds if h.device_id is not None
    }
    ledger.holds = len(holds)
    quarantine: dict[tuple[str, int], Counter] = {}
    for seg, off, reason in con.execute(
        "SELECT segment_id, record_offset, reason FROM quarantine.readings"
    ).fetchall():
        quarantine.setdefault((seg, off), Counter())[reason] += 1
    claimed: set[Lineage] = set()
    published_kept = 0
    for seg, record in landed_records(layout):
        out = RecordOutcome(record.topic, record.payload, record.received_at)
        ledger.records[(seg, record.offset)] = out
        where = f"{seg}@{record.offset} topic={record.topic[:80]!r} payload={record.payload[:120]!r}"
        try:
            decoded = decode_message(
                record.topic, record.payload, limits, received_at=record.received_at, registry=registry
            )
        except Exception as exc:  # the property under test: the decoder never raises
            out.problems.append(f"{where}: decode_message raised {exc!r}")
            continue
        out.readings = len(decoded.readings)
        out.quarantined = quarantine.pop((seg, record.offset), Counter())
        expected = Counter(r.reason.value for r in decoded.rejections)
        if out.quarantined != expected:
            out.problems.append(
                f"{where}: quarantined {dict(out.quarantined)}, "
                f"the reference decoder rejects {dict(expected)}"
            )
        if not decoded.readings and not decoded.rejections:
            out.problems.append(f"{where}: the decoder neither accepts nor rejects it (dropped silently)")
        published_kept += _account_readings(
            out, decoded, seg, record, staged, published, whole, device_holds, claimed, where
        )
    for (seg, off), reasons in quarantine.items():
        ledger.problems.append(f"quarantine rows {dict(reasons)} at {seg}@{off} belong to no landed record")
    unclaimed = [(key, lineage) for key, (lineage, _, _) in staged.items() if lineage not in claimed]
    for key, lineage in unclaimed[:20]:
        ledger.problems.append(
            f"staged reading {key} from {lineage} comes from no reading of a landed record"
        )
    if published_kept != len(published):
        ledger.problems.append(
            f"{len(published)} readings are published, but only {published_kept} staged readings of "
            "landed records are"
        )
    ledger.corrections = con.execute("SELECT count(*) FROM staged.corrections").fetchone()[0]
    ledger.partitions = con.execute("SELECT count(*) FROM staged.partitions").fetchone()[0]
    ledger.problems.extend(_ledger_problems(layout, con))
    return ledger


def _account_readings(
    out: RecordOutcome,
    decoded: Decoded,
    seg: str,
    record: RawRecord,
    staged: dict,
    published: set,
    whole: set,
    device_holds: set,
    claimed: set,
    where: str,
) -> int:
    """Sort one record's readings into published, held and collapsed; return how many published."""
    assert decoded.domain is not None or not decoded.readings
    for reading in decoded.readings:
        key = _key(decoded.domain, reading)
        hit = staged.get(key)
        if hit is None:
            out.problems.append(f"{where}: reading {reading['reading_index']} {key} is not staged (lost)")
            continue
        lineage, values, day = hit
        if lineage != (seg, record.offset, reading["reading_index"]):
            out.collapsed += 1
            continue
        claimed.add(lineage)
        wrong = {k: (v, reading.get(k)) for k, v in values.items() if not _same(v, reading.get(k))}
        if wrong:
            out.problems.append(
                f"{where}: staged values differ from the reference's (staged, reference): {wrong}"
            )
        is_published = key in published
        is_held = (key[0], key[1], day) in whole or (key[0], key[1], day, key[2]) in device_holds
        if is_published and is_held:
            out.problems.append(f"{where}: reading {key} is both published and held back")
        elif not is_published and not is_held:
            out.problems.append(f"{where}: reading {key} is staged but neither published nor held back")
        elif is_published:
            out.published += 1
        else:
            out.held += 1
    return out.published


def _ledger_problems(layout: Layout, con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every closed segment is in the raw ledger once, with its record count."""
    problems = []
    ledger = dict(con.execute("SELECT segment_id, records FROM raw.segments").fetchall())
    for path in list_closed_segments(layout.raw):
        seg = segment_id(layout, path)
        if seg not in ledger:
            problems.append(f"segment {seg} was never staged")
        elif ledger[seg] != len(read_segment(path)):
            problems.append(f"segment {seg}: the ledger says {ledger[seg]} records")
    return problems


def check_control(
    con: duckdb.DuckDBPyConnection, council: str, messages: list[tuple[bytes, bytes]]
) -> list[str]:
    """The control council's readings are published exactly as sent, none held back."""
    expected = set()
    for topic, payload in messages:
        device = topic.decode().rsplit("/", 1)[1]
        doc = orjson.loads(payload)
        at = datetime.fromisoformat(doc["observed_at"].replace("Z", "+00:00"))
        expected.add((device, epoch_us(at), doc["occupied_spots"], doc["total_spots"]))
    rows = set(
        con.execute(
            "SELECT device_id, epoch_us(observed_at), occupied_spots, total_spots FROM published.parking "
            "WHERE council = ?",
            [council],
        ).fetchall()
    )
    problems = []
    if rows != expected:
        problems.append(
            f"control council {council}: {len(expected - rows)} readings not published, "
            f"{len(rows - expected)} published that were not sent (e.g. {sorted(expected ^ rows)[:3]})"
        )
    held = [h for h in held_back(con) if h.council == council]
    if held:
        problems.append(f"control council {council} is held back: {held}")
    unreleased = con.execute(
        "SELECT count(*) FROM published.releases WHERE council = ? AND release_id IS NULL", [council]
    ).fetchone()[0]
    released = con.execute(
        "SELECT coalesce(sum(rows), 0) FROM published.releases WHERE council = ? AND release_id IS NOT NULL",
        [council],
    ).fetchone()[0]
    if unreleased or released != len(expected):
        problems.append(f"control council {council}: {released} rows in a release, {unreleased} pending")
    return problems


__all__ = ["Ledger", "RecordOutcome", "account", "check_control", "landed_records"]
