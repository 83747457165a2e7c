"""What the pipeline holds, read from the warehouse: the numbers `batch` and `demo` report.

One column per domain of the contract, plus a total. Messages are counted per domain from the
topics of the raw zone only when asked (`count_topics=True`, as the demo does): that reads every
raw segment, which is cheap for a demo and wasteful for a production raw zone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from civicflow.contract import DATASETS
from civicflow.settings import Settings

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
    held_back: list[tuple[str, str, str]] = field(default_factory=list)
    held_back_reasons: dict[tuple[str, str, str], tuple[str, str]] = field(default_factory=dict)
    """(domain, council, date) -> (failed blocking rules, Data Docs page) of each held-back partition."""
    data_docs: str = ""
    catalog: str = ""
    domains: dict[str, DomainSummary] = field(default_factory=lambda: {d: DomainSummary() for d in DOMAINS})


def count_messages_by_domain(raw_root: Path, prefix: str) -> dict[str, int]:
    """Messages in the closed raw segments, per domain their `<prefix>/<council>/<domain>` topic names."""
    from warehouse.segments import list_closed_segments, read_segment_lenient

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
    from warehouse.db import connect
    from warehouse.layout import Layout

    layout = Layout(settings.data_root)
    s = WarehouseSummary()
    if not layout.warehouse.exists():
        return s
    con = connect(layout.warehouse, read_only=True)
    try:
        s.segments, s.messages, s.readings_staged = con.execute(
            "SELECT count(*), coalesce(sum(records), 0), coalesce(sum(readings), 0) FROM raw.segments"
        ).fetchone()
        for domain, d in s.domains.items():
            (d.staged_rows,) = con.execute(f"SELECT count(*) FROM staged.{domain}").fetchone()
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
                (d.flagged_rows,) = con.execute(f"SELECT count(qc_flag) FROM published.{domain}").fetchone()
        # Partitions published with warnings: the validation of each current release records them.
        for domain, n in con.execute(
            "SELECT r.domain, count(*) FROM published.releases r WHERE EXISTS ("
            "SELECT 1 FROM published.validations v WHERE v.domain = r.domain AND v.council = r.council "
            "AND v.event_date = r.event_date AND v.partition_version = r.partition_version AND v.published "
            "AND json_array_length(coalesce(v.report->'$.warnings', '[]')) > 0) GROUP BY r.domain"
        ).fetchall():
            if domain in s.domains:
                s.domains[domain].warned_partitions = n
        # Held back: the current staged version was validated, failed, and is not published (the
        # gate validates it again on every run; `civicflow release approve` can override it).
        for d, c, day, report in con.execute(
            "SELECT p.domain, p.council, p.event_date, any_value(v.report ORDER BY v.validated_at DESC) "
            "FROM staged.partitions p JOIN published.validations v ON v.domain = p.domain "
            "AND v.council = p.council AND v.event_date = p.event_date AND v.partition_version = p.version "
            "WHERE NOT EXISTS (SELECT 1 FROM published.releases r WHERE r.domain = p.domain "
            "AND r.council = p.council AND r.event_date = p.event_date AND r.partition_version = p.version) "
            "GROUP BY ALL HAVING NOT bool_or(v.published) ORDER BY ALL"
        ).fetchall():
            key = (d, c, day.isoformat())
            doc = json.loads(report)
            s.held_back.append(key)
            failed = ", ".join(f.get("rule", f.get("expectation", "?")) for f in doc.get("failed", []))
            docs = str(layout.root / doc["data_docs"]) if doc.get("data_docs") else ""
            s.held_back_reasons[key] = (failed, docs)
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
        table.add_row(label, *cells, f"{total:,}", end_section=end_section)

    if sources:
        table.add_row("data", *(sources.get(d, ("", ""))[0] for d in DOMAINS), "", end_section=True)
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
    row("  failed (held back)", [d.failed for d in domains], s.failed)
    row("partitions published", [d.published_partitions for d in domains], s.published_partitions)
    warned = [d.warned_partitions for d in domains]
    row("  with warnings", warned, sum(warned))
    row("rows published", [d.published_rows for d in domains], s.published_rows)
    flagged = [d.flagged_rows for d in domains]
    row("  flagged (qc_flag)", flagged, sum(flagged))
    console.print(table)
    for domain, (kind, description) in (sources or {}).items():
        console.print(f"{domain} data ({kind}): {description}")
    if outcome is not None:
        for run in outcome.runs:
            console.print(
                f"Airflow DAG [bold]{run.dag_id}[/]: {run.state} in {run.seconds:.1f}s (log: {run.log_path})"
            )
    for key in s.held_back:
        failed, docs = s.held_back_reasons.get(key, ("", ""))
        domain, council, day = key
        console.print(f"[yellow]held back[/] {domain} {council} {day}: failed {failed or '?'}")
        if docs:
            console.print(f"  Data Docs: {docs}")
        console.print(f'  override with: civicflow release approve {domain} {council} {day} --reason "..."')
    if s.catalog:
        console.print(f"DCAT-AP catalogue of the current release: [bold]{s.catalog}[/] (and .ttl)")
    if s.data_docs:
        console.print(
            f"Great Expectations Data Docs of every validation: [bold]{s.data_docs}[/]"
            "/<domain>/council=<c>/date=<d>/v<version>/index.html"
        )
    console.print("Published data packages:")
    for domain in DOMAINS:
        path = s.domains[domain].published_path
        console.print(f"  {domain}: [bold]{path}[/]" if path else f"  {domain}: none published")
        if s.domains[domain].quality_path:
            console.print(f"    quality summary: {s.domains[domain].quality_path}")
