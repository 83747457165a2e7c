"""Opening the DuckDB warehouse. One writing process per file: Airflow tasks own it."""

from __future__ import annotations

from pathlib import Path

import duckdb

from civicflow.errors import TerminalError, TransientError
from warehouse.schema import all_ddl


def connect(path: Path | str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse (creating its schema when writable); every session speaks UTC."""
    if path != ":memory:" and not read_only:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    if read_only and not Path(path).exists():
        raise FileNotFoundError(
            f"no warehouse at {path}: run `civicflow batch` first, or set CIVICFLOW_DATA_ROOT"
        )
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise TransientError(
                f"warehouse {path} is open for writing by another process (DuckDB allows one "
                f"writer); retry when it has finished: {exc}"
            ) from exc
        raise TerminalError(
            f"cannot open warehouse {path}: {exc}. Restore it from a backup, or move it away and "
            "rebuild it from the raw zone with `civicflow batch`"
        ) from exc
    con.execute("SET TimeZone = 'UTC'")
    if not read_only:
        for statement in all_ddl():
            con.execute(statement)
    return con
