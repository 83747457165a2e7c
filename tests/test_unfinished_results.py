"""No code leaves a DuckDB query's result half read on a connection.

DuckDB 2 refuses a registered table or a relation (`con.register`, `con.sql(...)` run) on a
connection whose last `execute()` of a query has rows left: one `fetchone()`, or a query nobody
fetches, and the caller's next publish fails. Every query run with `execute()` is read to the end
(`fetchall()`, `df()`, `fetchnumpy()`, ...), a single row included: `[(n,)] = ....fetchall()`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(
    p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in {"bench", "tests"}
)
READ_TO_THE_END = {
    "fetchall",
    "df",
    "fetchdf",
    "fetch_df",
    "fetchnumpy",
    "to_arrow_table",
    "complete",
    "abort",
}
PARTIAL = {"fetchone", "fetchmany"}
QUERY = re.compile(r"\s*\(?\s*(SELECT|WITH|FROM|VALUES|SHOW|SUMMARIZE|TABLE|DESCRIBE)\b", re.IGNORECASE)
NO_ROWS = re.compile(r"\bLIMIT 0\s*$", re.IGNORECASE)  # no rows: nothing is left unread


def _text(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "?" for v in node.values)
    return None


def half_read(source: str) -> list[tuple[int, str]]:
    """(line, what) of each partial fetch, and of each query `execute()`d but not read to the end."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr in PARTIAL:
            found.append((node.lineno, f".{node.func.attr}()"))
        elif node.func.attr == "execute" and node.args:
            sql = _text(node.args[0])
            parent = parents.get(node)
            read = isinstance(parent, ast.Attribute) and parent.attr in READ_TO_THE_END | PARTIAL
            if sql is not None and QUERY.match(sql) and not NO_ROWS.search(sql) and not read:
                found.append((node.lineno, f"execute({sql.strip()[:40]!r}) not read to the end"))
    return sorted(found)


def test_a_partial_read_leaves_the_connection_refusing_a_registered_table():
    """What the rule guards against, and that reading to the end (one row included) avoids it."""
    con = duckdb.connect()
    rows = pa.table({"a": [1]})
    con.execute("SELECT 42").fetchone()
    with pytest.raises(duckdb.Error, match="unfinished result"):
        con.register("rows", rows)
    assert con.execute("SELECT 42").fetchall() == [(42,)]
    con.register("rows", rows)
    assert con.sql("SELECT a FROM rows").fetchall() == [(1,)]


def test_the_check_finds_partial_reads():
    source = """
con.execute("SELECT 1")
(n,) = con.execute(f"SELECT count(*) FROM {t}").fetchone()
con.execute("WITH a AS (SELECT 1) SELECT * FROM a").fetchmany(2)
rows = con.execute("SELECT 1").fetchall()
con.execute("INSERT INTO t SELECT 1")
con.execute("CREATE TEMP TABLE t AS SELECT 1")
columns = con.execute("SELECT * FROM t LIMIT 0").description
"""
    assert [line for line, _ in half_read(source)] == [2, 3, 4]


def test_no_query_result_is_left_half_read():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, what in half_read(path.read_text())
    ]
    assert found == [], "read each query's result to the end, e.g. `[(n,)] = con.execute(...).fetchall()`"
