"""`civicflow release`: the partitions the quality gate held back, and a data engineer's override.

A typer sub-app, registered in app/cli.py. An entry point like the CLI: it reads the
settings and imports the stage packages inside each command.

    civicflow release list
    civicflow release approve parking birmingham 2016-10-04 --reason "car park closed for works"
"""

from __future__ import annotations

import getpass
import os
from datetime import UTC, date, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from civicflow.app.progress import output_console
from civicflow.contract import Domain
from civicflow.settings import Settings

release_app = typer.Typer(
    help="Partitions the quality gate held back: list them, or approve one with a reason.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@release_app.command("list")
def list_held_back(
    domain: Annotated[Domain | None, typer.Option(help="Only this dataset.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array, one object per hold, instead of a table.")
    ] = False,
) -> None:
    """Show what is held back: whole days, and devices' days, with the rules they failed.

    Example: civicflow release list --domain traffic
    """
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.partitions import held_back

    console = output_console()
    settings = Settings()
    con = connect(settings.warehouse_path, read_only=True)
    try:
        held = held_back(con, domain.value if domain else None)
    finally:
        con.close()
    if as_json:
        import json

        from civicflow.app.summary import held_back_document

        typer.echo(json.dumps([held_back_document(h, settings.data_root) for h in held], indent=2))
        return
    if not held:
        console.print("No partition is held back.")
        return
    table = Table(
        "dataset", "council", "date", "version", "device", "rows", "held at", "failed (blocking)", "data docs"
    )
    for h in held:
        docs = str(settings.data_root / h.data_docs) if h.data_docs else ""
        table.add_row(
            *map(
                Text,
                (
                    h.domain,
                    h.council,
                    h.event_date.isoformat(),
                    str(h.version),
                    h.device_id or "(whole day)",
                    f"{h.rows:,}",
                    h.held_at.isoformat(timespec="seconds"),
                    h.reasons(),
                    docs,
                ),
            )
        )
    console.print(table)


@release_app.command("approve")
def approve(
    domain: Annotated[Domain, typer.Argument(help="Dataset, e.g. parking.")],
    council: Annotated[str, typer.Argument(help="Council, e.g. birmingham.")],
    day: Annotated[datetime, typer.Argument(metavar="DATE", formats=["%Y-%m-%d"], help="UTC event date.")],
    reason: Annotated[str, typer.Option("--reason", help="Why it may be published; recorded.")],
    device: Annotated[
        str | None, typer.Option("--device", help="Approve only this device's readings that day.")
    ] = None,
) -> None:
    """Publish what the gate held back of a day (or of one device's day), recording who, when and why.

    The day is judged again and published through the same path as every other, and a release is
    cut, so consumers see it in `published/latest` when the command returns.

    Example: civicflow release approve parking birmingham 2016-10-04 --reason "car park closed for works"
    """
    from civicflow.errors import CivicflowError
    from civicflow.jobs.publication import approve as approve_held
    from civicflow.registry import DEFAULT_REGISTRY_DIR, load_registry
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.layout import Layout

    console = output_console()
    settings = Settings()
    layout = Layout(settings.data_root)
    who = os.environ.get("USER") or getpass.getuser()
    try:
        registry = load_registry(settings.registry_dir or DEFAULT_REGISTRY_DIR)
        con = connect(layout.warehouse)
        try:
            done = approve_held(
                layout,
                con,
                domain,
                council,
                date(day.year, day.month, day.day),
                reason=reason,
                who=who,
                now=datetime.now(tz=UTC),
                device=device,
                quality=settings.quality,
                registry=registry,
                licences=registry.licences(),
                publication=settings.publish,
            )
        finally:
            con.close()
    except CivicflowError as exc:
        output_console(stderr=True).print(f"[red]cannot approve:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    what = f"{done['domain']} {done['council']} {done['date']} v{done['version']}"
    if done["device_id"]:
        what += f" device {done['device_id']}"
    if not done["published"]:
        output_console(stderr=True).print(
            f"[red]approved {escape(what)}, but it could not be published:[/] see `civicflow release list`"
        )
        raise typer.Exit(1)
    console.print(escape(f"approved and published {what} as {done['approved_by']}: {done['reason']}"))
    console.print(escape(f"  overridden: {', '.join(done['failed'])}"))
    console.print(escape(f"  in release {done['release']} (published/latest)"))
