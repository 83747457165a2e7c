"""What the pipeline holds, read from the warehouse: the numbers `batch` and `demo` report."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from civicflow.settings import Settings


@dataclass
class WarehouseSummary:
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
    published_path: str = ""
    held_back: list[tuple[str, str, str]] = field(default_factory=list)


def warehouse_summary(settings: Settings) -> WarehouseSummary:
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
        (s.staged_rows,) = con.execute("SELECT count(*) FROM staged.parking").fetchone()
        s.duplicates = s.readings_staged - s.staged_rows
        s.quarantined = dict(
            con.execute(
                "SELECT reason, count(*) FROM quarantine.readings GROUP BY reason ORDER BY 2 DESC, 1"
            ).fetchall()
        )
        s.validated, s.passed, s.failed = con.execute(
            "SELECT count(*), count(*) FILTER (success), count(*) FILTER (NOT success) "
            "FROM published.validations"
        ).fetchone()
        s.published_partitions, s.published_rows = con.execute(
            "SELECT count(*), coalesce(sum(rows), 0) FROM published.releases"
        ).fetchone()
        s.held_back = [
            (d, c, day.isoformat())
            for d, c, day in con.execute(
                "SELECT domain, council, event_date FROM published.validations v WHERE NOT success "
                "AND partition_version = (SELECT version FROM staged.partitions p WHERE "
                "p.domain = v.domain AND p.council = v.council AND p.event_date = v.event_date) "
                "ORDER BY ALL"
            ).fetchall()
        ]
    finally:
        con.close()
    s.published_path = str((layout.published_dataset("parking") / "datapackage.json").resolve())
    return s


def print_summary(console: Console, s: WarehouseSummary, outcome=None) -> None:
    table = Table(title="Civicflow: what the pipeline did", show_header=True)
    table.add_column("step")
    table.add_column("count", justify="right")
    table.add_row("messages received (raw zone)", f"{s.messages:,}")
    table.add_row("raw segments staged", f"{s.segments:,}")
    table.add_row("readings decoded", f"{s.readings_staged:,}")
    table.add_row("  duplicates collapsed", f"{s.duplicates:,}")
    table.add_row("readings in staged.parking", f"{s.staged_rows:,}")
    quarantined = sum(s.quarantined.values())
    table.add_row("quarantined", f"{quarantined:,}")
    for reason, n in s.quarantined.items():
        table.add_row(f"  {reason}", f"{n:,}")
    table.add_row("partitions validated", f"{s.validated:,}")
    table.add_row("  passed", f"{s.passed:,}")
    table.add_row("  failed (held back)", f"{s.failed:,}")
    table.add_row("partitions published", f"{s.published_partitions:,}")
    table.add_row("rows published", f"{s.published_rows:,}")
    console.print(table)
    if outcome is not None:
        for run in outcome.runs:
            console.print(
                f"Airflow DAG [bold]{run.dag_id}[/]: {run.state} in {run.seconds:.1f}s (log: {run.log_path})"
            )
    for domain, council, day in s.held_back:
        console.print(f"[yellow]held back[/] {domain} {council} {day}: see data/validations/")
    console.print(f"Published dataset: [bold]{s.published_path}[/]")
