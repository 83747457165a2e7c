"""The `civicflow` command: listen, batch, demo, sql.

An entry point: it reads the settings and imports stage packages inside each command, so
`civicflow --help` stays fast and a command only loads what it runs.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from civicflow.settings import Settings

app = typer.Typer(
    help="Civicflow: smart-city sensor readings from MQTT to quality-checked open data.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def listen(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Subscribe to the broker and land every message in the raw zone (runs until SIGTERM)."""
    from ingest.listener import BrokerAddress, Listener
    from warehouse.layout import Layout
    from warehouse.segments import SegmentWriter

    _logging(verbose)
    settings = Settings()
    if settings.mqtt.host is None:
        raise typer.BadParameter(
            "set CIVICFLOW_MQTT__HOST (and CIVICFLOW_MQTT__PORT) to the broker to listen to",
            param_hint="CIVICFLOW_MQTT__HOST",
        )
    layout = Layout(settings.data_root)
    writer = SegmentWriter(
        layout.raw / settings.mqtt.client_id,
        max_bytes=settings.landing.segment_max_bytes,
        max_age_s=settings.landing.segment_max_age_s,
        fsync=settings.landing.fsync,
    )
    password = settings.mqtt.password.get_secret_value() if settings.mqtt.password else None
    listener = Listener(
        BrokerAddress(
            settings.mqtt.host,
            settings.mqtt.port,
            settings.mqtt.username,
            password,
            settings.mqtt.keepalive_s,
        ),
        client_id=settings.mqtt.client_id,
        topic_filter=f"{settings.mqtt.topic_prefix}/#",
        writer=writer,
        qos=settings.mqtt.qos,
        flush_max_messages=settings.landing.flush_max_messages,
        flush_max_delay_s=settings.landing.flush_max_delay_s,
        status_path=layout.raw / settings.mqtt.client_id / "status.json",
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    listener.run(stop)


@app.command()
def batch(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run the batch DAGs once through Airflow on whatever has landed, then summarise."""
    from civicflow.batch import run_batch
    from civicflow.summary import print_summary, warehouse_summary

    _logging(verbose)
    settings = Settings()
    outcome = run_batch(settings)
    print_summary(console, warehouse_summary(settings), outcome)
    if not outcome.ok:
        raise typer.Exit(1)


@app.command()
def demo(
    data_root: Annotated[Path, typer.Option(help="Where the demo writes (emptied first).")] = Path(
        "data/demo"
    ),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Replay real Birmingham car-park data through MQTT, Airflow and the quality gate."""
    from civicflow.demo import run_demo

    _logging(verbose)
    raise typer.Exit(run_demo(console, data_root))


@app.command()
def sql(query: str) -> None:
    """Query the warehouse read-only, e.g. civicflow sql "FROM published.parking LIMIT 5"."""
    from warehouse.db import connect

    settings = Settings()
    con = connect(settings.warehouse_path, read_only=True)
    rel = con.sql(query)
    if rel is None:
        return
    from rich.table import Table

    table = Table(*rel.columns)
    for row in rel.fetchall():
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


if __name__ == "__main__":
    app()
