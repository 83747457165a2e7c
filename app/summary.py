"""What the pipeline holds, read from the warehouse: the numbers `batch` and `demo` report.

One column per domain of the contract, plus a total. Messages are counted per domain from the
topics of the raw zone only when asked (`count_topics=True`, as the demo does): that reads every
raw segment, which is cheap for a demo and wasteful for a production raw zone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from civicflow.contract import DATASETS
from civicflow.settings import Settings

if TYPE_CHECKING:
    from civicflow.warehouse.partitions import HeldBack

DOMAINS: tuple[str, ...] = tuple(d.value for d in DATASETS)


@dataclass
class DomainSummary:
    """One domain's numbers. `received` is None when the raw zone's topics were not counted."""

    received: int | None = None
    staged_rows: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    validated: int = 0
    passed: int = 0
    failed: int = 0
    published_partitions: int = 0
    published_rows: int = 0
    warned_partitions: int = 0
    flagged_rows: int = 0
    days_held: int = 0
    device_days_held: int = 0
    published_path: str = ""
    quality_path: str = ""


@dataclass
class WarehouseSummary:
    """Totals over every domain, and `domains` for each one.

    Totals include what belongs to no domain: a message on a topic that names none is quarantined
    (`bad_topic`) without one, and a LoRaWAN topic names no domain until the registry is read.
    """

    segments: int = 0
    messages: int = 0
    readings_staged: int = 0
    staged_rows: int = 0
    duplicates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    validated: int = 0
    passed: int = 0
    failed: int = 0
    published_partitions: int = 0
    published_rows: int = 0
    held_back: list[HeldBack] = field(default_factory=list)
    """What the gate holds back and nobody approved: whole days (`device_id` None) and devices' days,
    by domain, council and date (`civicflow.warehouse.partitions.held_back`)."""
    data_docs: str = ""
    catalog: str = ""
    data_root: Path = Path()
    """What a Data Docs page's path in `held_back` is relative to."""
    domains: dict[str, DomainSummary] = field(default_factory=lambda: {d: DomainSummary() for d in DOMAINS})


def count_messages_by_domain(raw_root: Path, prefix: str) -> dict[str, int]:
    """Messages in the closed raw segments, per domain their `<prefix>/<council>/<domain>` topic names."""
    from civicflow.warehouse.segments import list_closed_segments, read_segment_lenient

    counts = dict.fromkeys(DOMAINS, 0)
    for path in list_closed_segments(raw_root):
        records, _, _ = read_segment_lenient(path)
        for record in records:
            parts = record.topic.split(b"/", 3)
            if (
                len(parts) >= 3
                and parts[0] == prefix.encode()
                and parts[2].decode(errors="replace") in counts
            ):
                counts[parts[2].decode()] += 1
    return counts


def warehouse_summary(settings: Settings, *, count_topics: bool = False) -> WarehouseSummary:
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.layout import Layout

    layout = Layout(settings.data_root)
    s = WarehouseSummary(data_root=layout.root)
    if not layout.warehouse.exists():
        return s
    con = connect(layout.warehouse, read_only=True)
    try:
        [(s.segments, s.messages, s.readings_staged)] = con.execute(
            "SELECT count(*), coalesce(sum(records), 0), coalesce(sum(readings), 0) FROM raw.segments"
        ).fetchall()
        for domain, d in s.domains.items():
            [(d.staged_rows,)] = con.execute(f"SELECT count(*) FROM staged.{domain}").fetchall()
        s.staged_rows = sum(d.staged_rows for d in s.domains.values())
        s.duplicates = s.readings_staged - s.staged_rows
        for domain, reason, n in con.execute(
            "SELECT domain, reason, count(*) FROM quarantine.readings GROUP BY ALL ORDER BY 3 DESC, 2, 1"
        ).fetchall():
            s.quarantined[reason] = s.quarantined.get(reason, 0) + n
            if domain in s.domains:
                s.domains[domain].quarantined[reason] = n
        for domain, validated, passed, failed in con.execute(
            "SELECT domain, count(*), count(*) FILTER (success), count(*) FILTER (NOT success) "
            "FROM published.validations GROUP BY domain"
        ).fetchall():
            if domain in s.domains:
                d = s.domains[domain]
                d.validated, d.passed, d.failed = validated, passed, failed
            s.validated, s.passed, s.failed = s.validated + validated, s.passed + passed, s.failed + failed
        for domain, partitions, rows in con.execute(
            "SELECT domain, count(*), coalesce(sum(rows), 0) FROM published.releases GROUP BY domain"
        ).fetchall():
            if domain in s.domains:
                s.domains[domain].published_partitions, s.domains[domain].published_rows = partitions, rows
            s.published_partitions += partitions
            s.published_rows += rows
        for domain, d in s.domains.items():
            columns = {r[0] for r in con.execute(f"DESCRIBE published.{domain}").fetchall()}
            if "qc_flag" in columns:
                [(d.flagged_rows,)] = con.execute(f"SELECT count(qc_flag) FROM published.{domain}").fetchall()
        # Partitions published with warnings: the validation of each current release records them.
        for domain, n in con.execute(
            "SELECT r.domain, count(*) FROM published.releases r WHERE EXISTS ("
            "SELECT 1 FROM published.validations v WHERE v.domain = r.domain AND v.council = r.council "
            "AND v.event_date = r.event_date AND v.partition_version = r.partition_version AND v.published "
            "AND json_array_length(coalesce(v.report->'$.warnings', '[]')) > 0) GROUP BY r.domain"
        ).fetchall():
            if domain in s.domains:
                s.domains[domain].warned_partitions = n
        # Held back: holds on current staged versions that no approval lifted, whole days and
        # devices' days (`civicflow release approve [--device]` overrides them).
        from civicflow.warehouse.partitions import held_back

        s.held_back = held_back(con)
        for h in s.held_back:
            if h.domain in s.domains:
                d = s.domains[h.domain]
                if h.device_id is None:
                    d.days_held += 1
                else:
                    d.device_days_held += 1
    finally:
        con.close()
    for domain, d in s.domains.items():
        # Consumers' stable paths: under `latest`, the current immutable release.
        package = layout.latest / domain / "datapackage.json"
        d.published_path = str(package.absolute()) if package.exists() else ""
        quality = layout.latest / domain / "quality.json"
        d.quality_path = str(quality.absolute()) if quality.exists() else ""
    if layout.catalog().exists():
        s.catalog = str(layout.catalog().absolute())
    if layout.validations.exists():
        s.data_docs = str(layout.validations.resolve())
    if count_topics:
        for domain, n in count_messages_by_domain(layout.raw, settings.mqtt.topic_prefix).items():
            s.domains[domain].received = n
    return s


MAX_HELD_DAYS = 10
"""Held-back days `print_summary` lists one by one; `civicflow release list` shows them all."""
MAX_HELD_DEVICES = 5
"""Devices named on a held-back day's line; the rest are counted."""


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


def print_held_back(console: Console, held: list[HeldBack], *, data_root: Path) -> None:
    """One line per held-back day: the whole day, or each held device, with the rules it failed.

    Then the first of their Data Docs pages (one per partition version; `civicflow release list`
    names each) and how to override a hold.
    """
    from civicflow.warehouse.partitions import GATE_ERROR

    days = [
        (key, list(holds))
        for key, holds in groupby(held, key=lambda h: (h.domain, h.council, h.event_date, h.version))
    ]
    pages: dict[str, None] = {}
    for (domain, council, day, version), holds in days[:MAX_HELD_DAYS]:
        whole = next((h for h in holds if h.device_id is None), None)
        if whole is not None:
            what = f"whole day ({', '.join(whole.rules)}, {_rows(whole.rows)})"
            if GATE_ERROR in whole.rules:
                what += f": {whole.detail[:120]}"
        else:
            shown = [f"{h.device_id} ({', '.join(h.rules)}, {_rows(h.rows)})" for h in holds]
            more = len(shown) - MAX_HELD_DEVICES
            what = "devices " + "; ".join(shown[:MAX_HELD_DEVICES]) + (f"; {more} more" if more > 0 else "")
        console.print(
            f"[yellow]held back[/] {escape(f'{domain} {council} {day.isoformat()} v{version}: {what}')}"
        )
        pages.update((str(data_root / h.data_docs), None) for h in holds if h.data_docs)
    if len(days) > MAX_HELD_DAYS:
        console.print(f"[yellow]held back[/] {len(days) - MAX_HELD_DAYS} more days: civicflow release list")
    for page in list(pages)[:1]:  # one to open; `civicflow release list` names every day's page
        more = f" (and {len(pages) - 1} more: civicflow release list)" if len(pages) > 1 else ""
        console.print(f"  Data Docs: {escape(page)}{more}")
    if days:
        console.print(
            escape(
                "  override with: civicflow release approve <dataset> <council> <date> [--device ID] "
                '--reason "..."'
            )
        )


def print_summary(
    console: Console, s: WarehouseSummary, outcome=None, sources: dict[str, tuple[str, str]] | None = None
) -> None:
    """Print the table.

    Args:
        sources: where each domain's data came from, as (kind, description), e.g.
            `("synthetic", "generated traffic counters")`; the demo passes what it replayed.
    """
    table = Table(
        title="Civicflow: what the pipeline did", show_header=True, box=box.SIMPLE_HEAVY, pad_edge=False
    )
    table.add_column("step", min_width=26)
    for domain in DOMAINS:
        table.add_column(domain, justify="right", no_wrap=True)
    table.add_column("total", justify="right", no_wrap=True)
    domains = [s.domains[d] for d in DOMAINS]

    def row(label: str, values: list[int | None] | None, total: int, end_section: bool = False) -> None:
        cells = ["" if v is None else f"{v:,}" for v in (values or [None] * len(DOMAINS))]
        table.add_row(Text(label), *cells, f"{total:,}", end_section=end_section)

    if sources:
        kinds = (Text(sources.get(d, ("", ""))[0]) for d in DOMAINS)
        table.add_row("data", *kinds, "", end_section=True)
    received = [d.received for d in domains]
    row("messages received", received if any(v is not None for v in received) else None, s.messages)
    row("raw segments staged", None, s.segments)
    row("readings decoded", None, s.readings_staged)
    row("  duplicates collapsed", None, s.duplicates)
    row("readings staged", [d.staged_rows for d in domains], s.staged_rows, end_section=True)
    row("quarantined", [sum(d.quarantined.values()) for d in domains], sum(s.quarantined.values()))
    for reason, n in s.quarantined.items():
        row(f"  {reason}", [d.quarantined.get(reason, 0) for d in domains], n)
    table.rows[-1].end_section = True
    row("partitions validated", [d.validated for d in domains], s.validated)
    row("  passed", [d.passed for d in domains], s.passed)
    row("  failed a blocking rule", [d.failed for d in domains], s.failed)
    days_held, device_days_held = [d.days_held for d in domains], [d.device_days_held for d in domains]
    row("  days held back", days_held, sum(days_held))
    row("  devices' days held back", device_days_held, sum(device_days_held))
    row("partitions published", [d.published_partitions for d in domains], s.published_partitions)
    warned = [d.warned_partitions for d in domains]
    row("  with warnings", warned, sum(warned))
    row("rows published", [d.published_rows for d in domains], s.published_rows)
    flagged = [d.flagged_rows for d in domains]
    row("  flagged (qc_flag)", flagged, sum(flagged))
    console.print(table)
    for domain, (kind, description) in (sources or {}).items():
        console.print(escape(f"{domain} data ({kind}): {description}"))
    if outcome is not None:
        for run in outcome.runs:
            console.print(
                f"Airflow DAG [bold]{escape(run.dag_id)}[/]: "
                + escape(f"{run.state} in {run.seconds:.1f}s (log: {run.log_path})")
            )
    print_held_back(console, s.held_back, data_root=s.data_root)
    if s.catalog:
        console.print(f"DCAT-AP catalogue of the current release: [bold]{escape(s.catalog)}[/] (and .ttl)")
    if s.data_docs:
        console.print(
            f"Data Docs of every partition a release holds: [bold]{escape(s.data_docs)}[/]"
            + escape("/<domain>/council=<c>/date=<d>/v<version>.html (and in each release)")
        )
    console.print("Published data packages:")
    for domain in DOMAINS:
        path = s.domains[domain].published_path
        console.print(f"  {domain}: [bold]{escape(path)}[/]" if path else f"  {domain}: none published")
        if s.domains[domain].quality_path:
            console.print(f"    quality summary: {escape(s.domains[domain].quality_path)}")


def _plain(value: Any) -> Any:
    """`value` as JSON holds it: dates and times in ISO 8601, paths as strings, containers walked."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def held_back_document(h: HeldBack, data_root: Path) -> dict[str, Any]:
    """One hold as `civicflow release list --json` and `batch --json` print it."""
    doc = _plain(asdict(h))
    doc["data_docs"] = str(data_root / h.data_docs) if h.data_docs else None
    return doc


def summary_document(s: WarehouseSummary, outcome=None) -> dict[str, Any]:
    """What `print_summary` prints, as `civicflow batch --json` and `replay --json` print it.

    The totals and `domains` (each domain's numbers) of `WarehouseSummary`, `held_back` as
    `civicflow release list --json` lists it, and with an outcome `ok` and the DAG runs.
    """
    doc = _plain({k: v for k, v in asdict(s).items() if k != "held_back"})
    doc["held_back"] = [held_back_document(h, s.data_root) for h in s.held_back]
    if outcome is not None:
        doc["ok"] = outcome.ok
        doc["dag_runs"] = [_plain(asdict(run)) for run in outcome.runs]
    return doc
