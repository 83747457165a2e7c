"""How the CLI writes: its consoles, and progress displays for replays, DAG runs and the demo.

On a terminal, rich as usual: tables as wide as the terminal, progress bars and spinners. Anywhere
else (a log file, a pipe, CI, cron) tables are printed at their full width, never cut or wrapped
at 80 columns, and progress is a few plain lines (each phase's start, every tenth of the way, its
end) instead of bars redrawn in place. The same holds for stderr, where errors go: a message is one
line however long it is. `COLUMNS` sets a terminal's width only: outside a terminal it is ignored,
as it is seldom the user's choice there but inherited (a Python process that loaded GNU readline,
pytest's for one, exports LINES and COLUMNS to its children: 24 by 80 when it has no terminal).

Each progress display is a context manager that yields the callback the operation takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

UNBOUNDED_WIDTH = 1_000_000
"""The width of a console that is not a terminal: wider than any line a command prints."""

PHASES = {
    "replay": "re-staging the segments in the range",
    "context": "reading the staged segments that feed the same partitions",
}


def on_a_terminal(console: Console) -> bool:
    """Whether the console's stream is a terminal, whatever FORCE_COLOR says about colours."""
    isatty = getattr(console.file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def output_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) as it is now: a terminal's width, or no width limit at all.

    Not a terminal, whatever `COLUMNS`, `TERM` or FORCE_COLOR say: lines, messages and table cells
    are never cropped or wrapped (a table is as wide as its widest row); colours as rich decides
    (off, unless FORCE_COLOR), and then only where a command asks for them: rich does not pick out
    numbers and paths, so a coloured log still reads `1/10 segments`, not escape codes around each
    number. Make one per command: it reads what the stream is when it is made.
    """
    console = Console(stderr=stderr)
    if on_a_terminal(console):
        return console
    return Console(stderr=stderr, width=UNBOUNDED_WIDTH, soft_wrap=True, highlight=False)


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


def _tenths(done: int, total: int) -> int:
    """How many tenths of the way `done` is: 0 to 10 (10 only when finished)."""
    return 10 if total <= 0 or done >= total else done * 10 // total


@contextmanager
def segment_progress(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """A bar per phase of a replay, fed `(phase, done, total)` in segments."""
    if not on_a_terminal(console):
        shown: dict[str, int] = {}

        def line(phase: str, done: int, total: int) -> None:
            step = _tenths(done, total)
            if shown.get(phase, -1) < step:
                shown[phase] = step
                console.print(f"{escape(PHASES.get(phase, phase))}: {done:,}/{total:,} segments")

        yield line
        return
    with _bar(console) as bar:
        tasks: dict[str, int] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(PHASES.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


@contextmanager
def dag_progress(console: Console) -> Iterator[Callable[[str, float], None]]:
    """A spinner naming the DAG Airflow is running and for how long, fed `(dag_id, seconds)`.

    Not on a terminal: a line when Airflow starts and one when it starts each DAG.
    """
    starting = "starting Airflow (migrating its metadata database)..."
    if not on_a_terminal(console):
        console.print(starting)
        running: list[str] = []

        def line(dag_id: str, seconds: float) -> None:
            if running[-1:] != [dag_id]:
                running.append(dag_id)
                console.print(f"Airflow is running {escape(dag_id)}")

        yield line
        return
    with console.status(starting) as status:

        def update(dag_id: str, seconds: float) -> None:
            status.update(f"Airflow is running {escape(dag_id)} ({seconds:.0f} s)")

        yield update


@contextmanager
def message_progress(console: Console, total: int) -> Iterator[Callable[[int, int], None]]:
    """Two bars for a replay of gateway messages, fed `(published, acknowledged)`."""
    if not on_a_terminal(console):
        shown: list[tuple[int, int]] = []

        def line(sent: int, acked: int) -> None:
            acked = min(acked, total)
            step = (_tenths(sent, total), _tenths(acked, total))
            if shown[-1:] != [step]:
                shown.append(step)
                console.print(
                    f"published by the gateways {sent:,}/{total:,}, "
                    f"landed and acknowledged by the listener {acked:,}/{total:,}"
                )

        yield line
        return
    with _bar(console) as bar:
        published = bar.add_task("published by the gateways", total=total)
        landed = bar.add_task("landed and acknowledged by the listener", total=total)

        def update(sent: int, acked: int) -> None:
            bar.update(published, completed=sent)
            bar.update(landed, completed=min(acked, total))

        yield update
