"""Opening the DuckDB warehouse. One writing process per file: Airflow tasks own it."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from civicflow.errors import TerminalError, TransientError
from civicflow.warehouse.schema import all_ddl

WRITER_LOCK_WAIT_S = 30.0
"""How long a writer waits for the file's lock: readers (a metrics scrape, the portal opening a
release's warehouse, a judge) hold it for moments, and a task should not fail for one of them."""


def connect(
    path: Path | str, *, read_only: bool = False, lock_wait: float | None = None
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse (creating its schema when writable); every session speaks UTC.

    While another process has the file open, a writer retries for up to `lock_wait` seconds
    (WRITER_LOCK_WAIT_S by default) before giving up with a TransientError; a reader does not wait
    unless asked to.
    """
    if path != ":memory:" and not read_only:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    if read_only and not Path(path).exists():
        raise FileNotFoundError(
            f"no warehouse at {path}: run `civicflow batch` first, or set CIVICFLOW_DATA_ROOT"
        )
    wait = (0.0 if read_only else WRITER_LOCK_WAIT_S) if lock_wait is None else lock_wait
    deadline, pause = time.monotonic() + wait, 0.02
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise TerminalError(
                    f"cannot open warehouse {path}: {exc}. Restore it from a backup, or move it away "
                    "and rebuild it from the raw zone with `civicflow batch`"
                ) from exc
            if time.monotonic() >= deadline:
                holder = "for writing " if read_only else ""
                raise TransientError(
                    f"warehouse {path} is open {holder}by another process (DuckDB allows one writer, "
                    f"and no reader beside it); retry when it has finished: {exc}"
                ) from exc
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 1.0)
    con.execute("SET TimeZone = 'UTC'")
    if not read_only:
        for statement in all_ddl():
            con.execute(statement)
    return con
