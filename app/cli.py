"""The `civicflow` command: listen, status, batch, replay, erase, airflow, demo, sql, metrics.

An entry point: it reads the settings and imports stage packages inside each command, so
`civicflow --help` stays fast and a command only loads what it runs. Each command prints through
`civicflow.app.progress.output_console()`: a terminal's width on a terminal, full-width lines elsewhere.
Data (values, paths, messages) is printed literally, never read as rich markup.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from civicflow.app.progress import output_console
from civicflow.settings import Settings

app = typer.Typer(
    help="Civicflow: smart-city sensor readings from MQTT to quality-checked open data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # a traceback must never print a password
)


def installed_version(distribution: str = "civicflow") -> str:
    """The installed distribution's version; in a checkout that is not installed, the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        import civicflow

        checkout = Path(civicflow.__file__).resolve().parent.parent
        return f"{civicflow.__version__} (not installed: the source checkout at {checkout})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"civicflow {installed_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the installed version and exit."
        ),
    ] = False,
) -> None:
    pass


def _logging(verbose: bool, json: bool = False) -> None:
    from civicflow.logs import configure

    configure(verbose=verbose, json=json)


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages too.")]
LogJson = Annotated[
    bool,
    typer.Option(
        "--log-json",
        envvar="CIVICFLOW_LOG_JSON",
        help="Log one JSON object per line (time, level, logger, message, fields; docs/operations.md).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]


@app.command()
def listen(verbose: Verbose = False, log_json: LogJson = False) -> None:
    """Subscribe to the broker and land every message in the raw zone (runs until SIGTERM).

    Example: CIVICFLOW_MQTT__HOST=127.0.0.1 CIVICFLOW_MQTT__PORT=1883 civicflow listen --log-json
    """
    from civicflow.ingest.listener import Listener

    _logging(verbose, log_json)
    try:
        settings = Settings()
        listener = Listener.from_settings(settings)
    except (ValueError, RuntimeError, OSError) as exc:  # ssl.SSLError is an OSError
        output_console(stderr=True).print(f"[red]cannot start the listener:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if settings.metrics.port:
        listener.serve_metrics(settings.metrics.host, settings.metrics.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    listener.run(stop)


@app.command()
def status(
    as_json: AsJson = False,
    probe: Annotated[
        bool, typer.Option(help="Connect to the broker (CIVICFLOW_MQTT__HOST) to check it answers.")
    ] = True,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            metavar="COUNCIL/DEVICE",
            help="Only this device's rejections: counts by reason, the last reason, its detail and time "
            "(what its gateway's feedback topic says).",
        ),
    ] = None,
) -> None:
    """The pipeline on one screen: broker, listeners, backlog, last DAG runs, each dataset's gate.

    Exits 1 when something is broken (broker, a listener, a failed DAG run), so it also serves
    as a cron or CI check. Partitions the gate held back are listed for review but are not a fault.

    Example: CIVICFLOW_DATA_ROOT=data/demo civicflow status
             civicflow status --device birmingham/bhmbccmkt01 --json
    """
    from civicflow.app.status import pipeline_status

    settings = Settings()
    if device is not None:
        from civicflow.app.status import device_feedback

        try:
            found = device_feedback(settings, device)
        except (ValueError, FileNotFoundError) as exc:
            output_console(stderr=True).print(f"[red]civicflow status:[/] {escape(str(exc))}")
            raise typer.Exit(2) from exc
        if as_json:
            import json

            typer.echo(json.dumps(found, indent=2, default=str))
        else:
            from civicflow.app.status_view import print_device

            print_device(output_console(), found)
        return
    report = pipeline_status(settings, probe=probe)
    if as_json:
        import json

        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        from civicflow.app.status_view import print_status

        print_status(output_console(), report, settings)
    if not report.healthy:
        raise typer.Exit(1)


@app.command()
def batch(verbose: Verbose = False, log_json: LogJson = False, as_json: AsJson = False) -> None:
    """Run the batch DAGs once through Airflow on whatever has landed, then summarise.

    Stages every closed raw segment (civicflow_stage), then validates and publishes what changed
    (civicflow_publish), with dag.test() in the Airflow home <data root>/airflow, which
    `civicflow airflow` shares: its UI shows these runs. With --json the summary is one JSON
    document on stdout and the progress lines go to stderr.

    Example: CIVICFLOW_DATA_ROOT=/srv/civicflow civicflow batch
    """
    _logging(verbose, log_json)
    settings = Settings()
    outcome = _run_dags(settings, as_json)
    if as_json:
        _echo_json(_summary(settings, outcome))
    else:
        _print_summary(settings, outcome)
    if not outcome.ok:
        raise typer.Exit(1)


def _echo_json(doc: object) -> None:
    import json

    typer.echo(json.dumps(doc, indent=2, default=str))


def _run_dags(settings: Settings, as_json: bool, dag_ids: tuple[str, ...] | None = None):
    """Run DAGs through Airflow with a progress display, on stderr when stdout carries JSON."""
    from civicflow.app.batch import BATCH_DAGS, run_batch
    from civicflow.app.progress import dag_progress

    with dag_progress(output_console(stderr=as_json)) as on_progress:
        return run_batch(settings, dag_ids=dag_ids or BATCH_DAGS, on_progress=on_progress)


def _summary(settings: Settings, outcome) -> dict:
    from civicflow.app.summary import summary_document, warehouse_summary

    return summary_document(warehouse_summary(settings), outcome)


def _print_summary(settings: Settings, outcome) -> None:
    from civicflow.app.summary import print_summary, warehouse_summary

    print_summary(output_console(), warehouse_summary(settings), outcome)


@app.command()
def replay(
    start: Annotated[
        str, typer.Option("--from", help="UTC date (2026-03-01) or date-time (2026-03-01T08:00:00Z).")
    ],
    end: Annotated[str, typer.Option("--to", help="UTC date or date-time; a date means its end.")],
    publish: Annotated[
        bool, typer.Option(help="Then re-validate and publish what changed, through Airflow.")
    ] = True,
    verbose: Verbose = False,
    log_json: LogJson = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print one JSON document, {"replay": ..., "publish": <the summary>}, instead of tables.',
        ),
    ] = False,
) -> None:
    """Re-stage the raw segments opened in a time range, then publish the partitions that changed.

    Example: civicflow replay --from 2026-03-01 --to 2026-03-07
    """
    from civicflow.app.progress import segment_progress
    from civicflow.errors import CivicflowError
    from civicflow.jobs import replay_job

    _logging(verbose, log_json)
    settings = Settings()
    try:
        with segment_progress(output_console(stderr=as_json)) as progress:
            result = replay_job(start, end, settings, progress=progress)
    except CivicflowError as exc:
        output_console(stderr=True).print(f"[red]replay failed:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if not as_json:
        _echo_json(result)
    if not publish:
        if as_json:
            _echo_json({"replay": result})
        return
    outcome = _run_dags(settings, as_json, dag_ids=("civicflow_publish",))
    if as_json:
        _echo_json({"replay": result, "publish": _summary(settings, outcome)})
    else:
        _print_summary(settings, outcome)
    if not outcome.ok:
        raise typer.Exit(1)


@app.command()
def erase(
    council: Annotated[str, typer.Option("--council", help="The device's council, e.g. birmingham.")],
    device: Annotated[str, typer.Option("--device", help="The device id, as in its topic or registry.")],
    start: Annotated[
        str | None,
        typer.Option("--from", help="Received on or after: UTC date or date-time. Unset: from the start."),
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Received before: UTC date (its end) or date-time. Unset: now.")
    ] = None,
    reference: Annotated[
        str,
        typer.Option(
            "--reference", help="The request's reference (a case number), recorded; never personal data."
        ),
    ] = "",
    keep_old_releases: Annotated[
        bool,
        typer.Option(
            "--keep-old-releases",
            help="Keep the releases cut before the erasure (they may hold the device's published readings).",
        ),
    ] = False,
    verbose: Verbose = False,
    log_json: LogJson = False,
) -> None:
    """Erase a device's data received in a window: raw bytes, quarantine, staged rows; republish.

    The raw records become tombstones (every other record keeps its place, so replay is unchanged
    for everything else); the device's quarantine rows and files, staged rows and corrections are
    deleted; the days that changed are judged and published again and a release is cut; older
    releases are deleted; the erasure is recorded in published.erasures without the values.
    Prints what was erased as JSON on stdout; warnings go to stderr.

    Example: civicflow erase --council leeds --device anpr-7 --from 2026-03-01 --reference DSAR-0042
    """
    import getpass
    import os

    from civicflow.errors import CivicflowError
    from civicflow.jobs import erase_job

    _logging(verbose, log_json)
    who = os.environ.get("USER") or getpass.getuser()
    errors = output_console(stderr=True)
    try:
        result = erase_job(
            council,
            device,
            start=start,
            end=end,
            who=who,
            reference=reference,
            keep_old_releases=keep_old_releases,
            settings=Settings(),
        )
    except CivicflowError as exc:
        errors.print(f"[red]erase failed:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    _echo_json(result)
    if result["open_segments"]:
        errors.print(
            "[yellow]segments still being written were not erased:[/] "
            + escape(", ".join(result["open_segments"]))
            + "; run the same command again once the listener has closed them "
            "(within CIVICFLOW_LANDING__SEGMENT_MAX_AGE_S)"
        )


@app.command()
def airflow(
    airflow_home: Annotated[
        Path | None,
        typer.Option(
            help="Airflow's home (config, SQLite database, logs); default <data root>/airflow, "
            "the home `civicflow batch`, `replay` and `demo` run in."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address the UI and API server listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port of the Airflow UI and API server (8080).")] = None,
) -> None:
    """Run Airflow with Civicflow's DAGs until Ctrl-C: UI, scheduler, DAG processor, triggerer.

    Listens on 127.0.0.1 only unless --host says otherwise; shares its home with `civicflow batch`,
    so the UI shows the runs of `batch`, `replay` and `demo` too.

    Example: civicflow airflow --port 8081
    """
    import os

    from civicflow.app.batch import client_host, default_airflow_home, run_standalone

    settings = Settings()
    port = port or int(os.environ.get("AIRFLOW__API__PORT", "8080"))
    home = (airflow_home or default_airflow_home(settings)).resolve()
    output_console().print(
        escape(
            f"Airflow home {home}; UI on http://{client_host(host)}:{port}/ as user admin, password "
            f"in {home / 'simple_auth_manager_passwords.json.generated'} (docs/airflow.md)"
        )
    )
    raise typer.Exit(run_standalone(settings, airflow_home=home, port=port, host=host))


@app.command()
def demo(
    data_root: Annotated[Path, typer.Option(help="Where the demo writes (emptied first).")] = Path(
        "data/demo"
    ),
    verbose: Verbose = False,
) -> None:
    """Replay car-park, bin, air-quality and traffic readings through MQTT, Airflow and the gate.

    Example: civicflow demo --data-root data/demo   (what `make demo` runs)
    """
    from civicflow.app.demo import run_demo

    _logging(verbose)
    raise typer.Exit(run_demo(output_console(), data_root))


@app.command()
def sql(
    query: str,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print a JSON array, one object per row, instead of a table."),
    ] = False,
) -> None:
    """Query the warehouse read-only (DuckDB SQL over the raw, staged, published and quarantine schemas).

    Values print literally, square brackets included. With --json: one object per row, dates and
    times in ISO 8601, NaN and infinities as null.

    Example: civicflow sql "SELECT device_id, avg(occupancy) FROM published.parking GROUP BY 1"
    """
    import duckdb

    from civicflow.warehouse.db import connect

    settings = Settings()
    con = connect(settings.warehouse_path, read_only=True)
    errors = output_console(stderr=True)
    try:
        rel = con.sql(query)
        columns, rows = (rel.columns, rel.fetchall()) if rel is not None else ([], [])
    except duckdb.Error as exc:
        errors.print(f"[red]query failed:[/] {escape(str(exc))}")
        errors.print("The schemas are raw, staged, published and quarantine; docs/queries.md has examples.")
        raise typer.Exit(2) from exc
    finally:
        con.close()
    if as_json:
        if len(set(columns)) < len(columns):
            twice = sorted({c for c in columns if columns.count(c) > 1})
            errors.print(
                f"[red]cannot print JSON:[/] {escape(', '.join(twice))} name more than one column; "
                "give each a name of its own with AS (SELECT a.id AS a_id, b.id AS b_id ...)"
            )
            raise typer.Exit(2)
        typer.echo(_json_rows(columns, rows))
        return
    if rel is None:
        return
    from rich.table import Table
    from rich.text import Text

    table = Table()
    for column in columns:
        table.add_column(Text(column))
    for row in rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in row))
    output_console().print(table)


@app.command()
def metrics(
    textfile: Annotated[
        Path | None,
        typer.Option(
            "--textfile",
            help="Write the metrics to this .prom file (replaced atomically) for node_exporter's "
            "textfile collector, instead of printing them.",
        ),
    ] = None,
) -> None:
    """Print the batch side's Prometheus metrics, read from the warehouse (read-only).

    Staging and publication progress, each dataset's and council's freshness, what the quality gate
    holds back and what is quarantined (docs/operations.md, "Metrics"); `civicflow serve` serves the
    same at /metrics. When a task is writing the warehouse it exits 2 and leaves the file as it was.

    Example: civicflow metrics --textfile /var/lib/prometheus/node-exporter/civicflow.prom
    """
    from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile

    from civicflow.warehouse.layout import Layout
    from civicflow.warehouse.metrics import BatchCollector

    if textfile is not None and textfile.suffix != ".prom":
        output_console(stderr=True).print(
            f"[red]cannot write {escape(str(textfile))}:[/] node_exporter's textfile collector reads only "
            "files ending in .prom; name it civicflow.prom in its --collector.textfile.directory"
        )
        raise typer.Exit(2)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(BatchCollector(Layout(Settings().data_root), min_interval_s=0, raise_errors=True))
    if textfile is None:
        typer.echo(generate_latest(registry).decode(), nl=False)
        return
    write_to_textfile(str(textfile), registry)


def _json_value(value: object) -> object:
    """A DuckDB value as JSON holds it (the standard's numbers, strings, arrays and objects)."""
    import datetime
    import decimal
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # UUID, timedelta, ...


def _json_rows(columns: list[str], rows: list[tuple]) -> str:
    """A JSON array with one row object per line."""
    import json

    lines = [json.dumps(dict(zip(columns, map(_json_value, row), strict=True))) for row in rows]
    return "[" + ",\n ".join(lines) + "]"


def _register_subcommands() -> None:
    from civicflow.app.release_cli import release_app
    from civicflow.app.serve_cli import serve

    app.add_typer(release_app, name="release")
    app.command()(serve)


_register_subcommands()


def main() -> None:
    """The `civicflow` executable: a failure the user can fix prints its message, not a traceback.

    Civicflow's own errors, a missing file and a setting that does not validate say what to do
    next, on stderr, exit code 2; anything else is a bug and keeps its traceback.
    """
    from pydantic import ValidationError

    from civicflow.errors import CivicflowError

    try:
        app()
    except (CivicflowError, FileNotFoundError, PermissionError) as exc:
        output_console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}")
        raise SystemExit(2) from None
    except ValidationError as exc:
        errors = output_console(stderr=True)
        errors.print(f"[red]a CIVICFLOW_ setting is not valid:[/] {escape(str(exc))}")
        errors.print("Settings are listed in docs/operations.md; fix or unset the variable named above.")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
