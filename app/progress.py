"""Progress displays for the CLI's long operations: replays, DAG runs, the demo's gateways.

Each is a context manager that yields the callback the operation takes. On a terminal they draw
rich progress bars; elsewhere (a log file, CI) rich draws nothing and only the final lines remain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PHASES = {
    "replay": "re-staging the segments in the range",
    "context": "reading the staged segments that feed the same partitions",
}


def _bar(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@contextmanager
def segment_progress(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """A bar per phase of a replay, fed `(phase, done, total)` in segments."""
    with _bar(console) as bar:
        tasks: dict[str, int] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(PHASES.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


@contextmanager
def dag_progress(console: Console) -> Iterator[Callable[[str, float], None]]:
    """A spinner naming the DAG Airflow is running and for how long, fed `(dag_id, seconds)`."""
    with console.status("starting Airflow (migrating its metadata database)...") as status:

        def update(dag_id: str, seconds: float) -> None:
            status.update(f"Airflow is running {dag_id} ({seconds:.0f} s)")

        yield update


@contextmanager
def message_progress(console: Console, total: int) -> Iterator[Callable[[int, int], None]]:
    """Two bars for a replay of gateway messages, fed `(published, acknowledged)`."""
    with _bar(console) as bar:
        published = bar.add_task("published by the gateways", total=total)
        landed = bar.add_task("landed and acknowledged by the listener", total=total)

        def update(sent: int, acked: int) -> None:
            bar.update(published, completed=sent)
            bar.update(landed, completed=min(acked, total))

        yield update
