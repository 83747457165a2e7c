"""How `civicflow status` looks in a terminal: one screen, the broken things first."""

from __future__ import annotations

from datetime import UTC, datetime

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from civicflow.app.status import PipelineStatus
from civicflow.settings import Settings


def _ago(when: datetime | None) -> str:
    if when is None:
        return ""
    seconds = (datetime.now(tz=UTC) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{when:%Y-%m-%d %H:%M:%S}Z ({seconds / size:.0f} {unit} ago)"
    return f"{when:%Y-%m-%d %H:%M:%S}Z ({seconds:.0f} s ago)"


def _yes(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


def print_status(console: Console, report: PipelineStatus, settings: Settings) -> None:
    root = settings.data_root.resolve()
    verdict = "[green]healthy[/]" if report.healthy else f"[red]{len(report.problems)} problem(s)[/]"
    console.print(f"[bold]Civicflow[/] data root {escape(str(root))}: {verdict}")

    if report.broker is None:
        console.print("broker: not checked (CIVICFLOW_MQTT__HOST is unset, or --no-probe)")
    elif report.broker["accepted"]:
        console.print(
            f"broker: {escape(str(report.broker['broker']))} [green]accepts connections[/] "
            f"({report.broker['latency_ms']} ms)"
        )
    else:
        broker, problem = (escape(str(report.broker[k])) for k in ("broker", "problem"))
        console.print(f"broker: {broker} [red]{problem}[/]")

    listeners = Table(
        "listener",
        "healthy",
        "state",
        "received",
        "acked",
        "closed backlog",
        "open segment",
        "source",
        title="Listeners",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for r in report.listeners:
        listeners.add_row(
            Text(str(r["client_id"])),
            _yes(r["healthy"]),
            Text(str(r.get("state", "?"))),
            f"{r.get('received', 0):,}",
            f"{r.get('acked', 0):,}",
            f"{r.get('closed_backlog', '?')} segment(s)",
            f"{r.get('open_segment_age_s', 0):.0f} s old",
            Text(str(r["source"])),
        )
    if report.listeners:
        console.print(listeners)

    runs = Table(
        "DAG",
        "last run",
        "state",
        "started",
        "took",
        "last success",
        title="Airflow DAG runs",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for run in sorted(report.airflow, key=lambda r: r["dag_id"]):
        colour = {"success": "green", "failed": "red"}.get(run["state"], "yellow")
        state = f"[{colour}]{escape(str(run['state']))}[/]"
        if run["failed_tasks"]:
            state += escape(f" ({', '.join(run['failed_tasks'])})")
        runs.add_row(
            Text(run["dag_id"]),
            Text(f"{run['run_type']}"),
            state,
            _ago(run["started"]),
            "" if run["seconds"] is None else f"{run['seconds']:.0f} s",
            _ago(run["last_success"]),
        )
    if report.airflow:
        console.print(runs)
    else:
        console.print(
            "Airflow: no Civicflow DAG run found (set AIRFLOW__DATABASE__SQL_ALCHEMY_CONN to "
            "the scheduler's metadata database, or run civicflow batch)"
        )

    if report.release:
        console.print(
            escape(f"release: {report.release['release']} published {report.release['published_at']}")
        )
    gate = Table(
        "dataset",
        "council",
        "gate",
        "days published",
        "with warnings",
        "rows",
        "completeness",
        "flagged",
        "held back",
        title="Datasets (quality gate)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for d in report.datasets:
        colour = {"passed": "green", "warnings": "yellow"}.get(d["gate"], "red")
        gate.add_row(
            Text(d["dataset"]),
            Text(d["council"]),
            f"[{colour}]{escape(d['gate'])}[/]",
            str(d["partitions_published"]),
            str(d["partitions_with_warnings"]),
            f"{d['rows_published']:,}",
            "" if d["completeness_pct"] is None else f"{d['completeness_pct']:.1f} %",
            "" if d["flagged_pct"] is None else f"{d['flagged_pct']:.1f} %",
            Text("\n".join(d["held_back"])),
        )
    if report.datasets:
        console.print(gate)
    else:
        console.print("datasets: nothing judged by the quality gate yet")

    for line in report.problems:
        console.print(f"[red]problem:[/] {escape(line)}")
    for line in report.review:
        console.print(f"[yellow]review:[/] {escape(line)}")


def print_device(console: Console, report: dict) -> None:
    """`civicflow status --device`: a device's rejections, as its gateway's feedback reads them."""
    name = f"{report['council']}/{report['device_id']}"
    if not report["summaries"]:
        console.print(Text(f"device {name}: nothing in quarantine"))
        return
    for s in report["summaries"]:
        window, last = s["window"], s["last"]
        published = s.get("published_at")
        told = f"published {published}" if published else "not published yet"
        console.print(
            Text(
                f"device {name} ({s['domain']}): {window['rejected']} rejected in the last "
                f"{window['hours']:g} h; feedback {told}"
            )
        )
        counts = Table("reason", f"last {window['hours']:g} h", "since previous summary", box=box.SIMPLE_HEAD)
        for reason in sorted({*window["by_reason"], *s["since_previous"]["by_reason"]}):
            counts.add_row(
                Text(reason),
                str(window["by_reason"].get(reason, 0)),
                str(s["since_previous"]["by_reason"].get(reason, 0)),
            )
        console.print(counts)
        console.print(Text(f"last: {last['reason']} at {last['received_at']}: {last['detail']}"))
        console.print(Text(f"      segment {last['segment_id']} offset {last['record_offset']}"))
