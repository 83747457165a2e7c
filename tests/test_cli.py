"""The `civicflow` command for operators: output in logs and pipes, --json, --version, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest


@pytest.fixture
def root_logger():
    """The root logger as `civicflow.logs.configure` leaves it, restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.unit
def test_log_json_has_separate_fields_extras_and_the_exception(root_logger):
    from civicflow.logs import configure

    out = io.StringIO()
    configure(json=True, stream=out)
    log = logging.getLogger("civicflow.ingest.listener")
    log.info("landed %d messages in %s", 3, "a.seg", extra={"segment": "a.seg", "messages": 3, "level": "x"})
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.exception("flush failed\nsecond line")
    log.debug("not at INFO")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    landed, failed = map(json.loads, lines)
    assert list(landed) == ["time", "level", "logger", "message", "segment", "messages", "extra_level"]
    assert landed["time"].endswith("Z") and landed["time"][:4].isdigit()
    assert (landed["level"], landed["logger"], landed["message"]) == (
        "info",
        "civicflow.ingest.listener",
        "landed 3 messages in a.seg",
    )
    assert (landed["segment"], landed["messages"], landed["extra_level"]) == ("a.seg", 3, "x")
    assert (failed["level"], failed["message"]) == ("error", "flush failed\nsecond line")
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert failed["exception"].endswith("ZeroDivisionError: division by zero")


@pytest.mark.unit
def test_text_logs_show_extras_and_a_plain_traceback(root_logger):
    from civicflow.logs import configure

    out = io.StringIO()
    configure(stream=out)
    secret = "hunter2"  # a local variable a rich traceback would show
    try:
        raise ValueError(f"bad value {len(secret)}")
    except ValueError:
        logging.getLogger("civicflow.ingest.listener").exception("cannot land", extra={"segment": "a.seg"})
    text = out.getvalue()
    assert "[error" in text and "cannot land" in text and "segment=a.seg" in text
    assert "ValueError: bad value 7" in text and secret not in text


# --- output outside a terminal: full width, plain progress lines ------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    "environ",
    [
        {"COLUMNS": "80", "LINES": "24"},  # what a parent that loaded readline exports (CI, pytest -n)
        {"COLUMNS": None, "TERM": None, "FORCE_COLOR": "1", "CI": "true"},  # colours in a CI log
        {"COLUMNS": "100", "TERM": "dumb"},
    ],
    ids=["inherited-80-columns", "ci-force-color-no-term", "dumb-100-columns"],
)
def test_a_console_outside_a_terminal_neither_crops_nor_wraps(environ, monkeypatch, capsys):
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from civicflow.app.progress import UNBOUNDED_WIDTH, output_console

    for name, value in environ.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    message = "X_ROOT is not a setting: " + "a word " * 40 + "[bold] stays literal"
    for stderr in (False, True):  # pytest's captured stdout and stderr are not terminals
        console = output_console(stderr=stderr)
        assert console.width == UNBOUNDED_WIDTH
        table = Table("device", "detail", "data docs")
        table.add_row(Text("p9"), Text("quarantine_share " * 12), Text("/srv/civicflow/" + "v" * 150))
        console.print(table)
        console.print("a line of " + "x" * 300)
        console.print(f"[red]error:[/] {escape(message)}")
    for printed in capsys.readouterr():
        lines = re.sub(r"\x1b\[[0-9;]*m", "", printed).splitlines()  # as a terminal shows the colours
        [row] = [line for line in lines if "p9" in line]
        assert "quarantine_share " * 11 in row and "/srv/civicflow/" + "v" * 150 in row
        assert "a line of " + "x" * 300 in lines
        assert f"error: {message}" in lines


@pytest.mark.unit
def test_progress_outside_a_terminal_is_a_few_plain_lines():
    from rich.console import Console

    from civicflow.app.progress import dag_progress, message_progress, segment_progress

    console = Console(file=io.StringIO(), width=1000, force_terminal=True, color_system=None)  # FORCE_COLOR
    with segment_progress(console) as progress:
        for done in range(0, 201):
            progress("replay", done, 200)
        progress("context", 0, 0)
    with dag_progress(console) as progress:
        for seconds in range(5):
            progress("civicflow_stage", seconds)
        progress("civicflow_publish", 5.0)
    with message_progress(console, 1000) as progress:
        for acked in range(0, 1001, 50):
            progress(1000, acked)
    lines = console.file.getvalue().splitlines()
    assert lines[:11] == [
        f"re-staging the segments in the range: {n}/200 segments" for n in range(0, 201, 20)
    ]
    assert lines[11:15] == [
        "reading the staged segments that feed the same partitions: 0/0 segments",
        "starting Airflow (migrating its metadata database)...",
        "Airflow is running civicflow_stage",
        "Airflow is running civicflow_publish",
    ]
    messages = lines[15:]
    assert len(messages) == 11 and "\x1b[" not in console.file.getvalue()  # no cursor movement
    assert messages[0] == (
        "published by the gateways 1,000/1,000, landed and acknowledged by the listener 0/1,000"
    )
    assert messages[-1].endswith("landed and acknowledged by the listener 1,000/1,000")


# --- civicflow sql and replay: literal values, --json -------------------------------------------------


@pytest.fixture
def staged(tmp_path, monkeypatch):
    """A data root with one raw segment staged, as CIVICFLOW_DATA_ROOT; output not a terminal."""
    from factories import LIMITS, car_park, land

    from civicflow.transforms.stage import stage_segments
    from civicflow.warehouse.db import connect
    from civicflow.warehouse.layout import Layout

    layout = Layout(tmp_path / "data")
    con = connect(layout.warehouse)
    land(layout, [car_park("p1", "2016-10-04T08:00:00Z", 10), car_park("p2", "2016-10-04T08:00:00Z", 20)])
    stage_segments(layout, con, LIMITS)
    con.close()
    monkeypatch.setenv("CIVICFLOW_DATA_ROOT", str(layout.root))
    monkeypatch.delenv("COLUMNS", raising=False)
    return layout


@pytest.mark.integration
def test_sql_prints_values_literally_and_whole(staged):
    from typer.testing import CliRunner

    from civicflow.app.cli import app

    query = (
        "SELECT device_id, '[a-z0-9]+' AS \"[pattern]\", '[bold]x[/bold] \\' AS markup, "
        "repeat('w', 300) AS wide, NULL AS missing FROM staged.parking ORDER BY 1"
    )
    done = CliRunner().invoke(app, ["sql", query])
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    [header] = [line for line in lines if "device_id" in line]
    assert "[pattern]" in header and "missing" in header
    rows = [line for line in lines if "p1" in line or "p2" in line]
    assert len(rows) == 2
    for row in rows:
        assert "[a-z0-9]+" in row and "[bold]x[/bold] \\" in row and "w" * 300 in row


@pytest.mark.integration
def test_sql_json_is_one_object_per_row(staged):
    from typer.testing import CliRunner

    from civicflow.app.cli import app

    query = (
        "SELECT device_id, occupied_spots, 1.25::DECIMAL(5, 2) AS d, DATE '2026-03-01' AS day, "
        "'nan'::DOUBLE AS nan, '[x]' AS s, [1, 2] AS l, NULL AS missing FROM staged.parking ORDER BY 1"
    )
    done = CliRunner().invoke(app, ["sql", "--json", query])
    assert done.exit_code == 0, done.output
    assert len(done.stdout.splitlines()) == 2  # a row a line
    common = {"d": 1.25, "day": "2026-03-01", "nan": None, "s": "[x]", "l": [1, 2], "missing": None}
    assert json.loads(done.stdout) == [
        {"device_id": "p1", "occupied_spots": 10, **common},
        {"device_id": "p2", "occupied_spots": 20, **common},
    ]
    empty = CliRunner().invoke(app, ["sql", "--json", "SELECT 1 AS n WHERE false"])
    assert (empty.exit_code, json.loads(empty.stdout)) == (0, [])
    twice = CliRunner().invoke(app, ["sql", "--json", "SELECT 1 AS n, 2 AS n"])
    assert twice.exit_code == 2 and twice.stdout == ""
    assert "n name more than one column" in twice.stderr and "AS" in twice.stderr


@pytest.mark.integration
def test_replay_json_is_one_document_and_its_progress_goes_to_stderr(staged):
    from datetime import UTC, datetime

    from typer.testing import CliRunner

    from civicflow.app.cli import app

    today = datetime.now(tz=UTC).date().isoformat()
    done = CliRunner().invoke(app, ["replay", "--from", today, "--to", today, "--no-publish", "--json"])
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert list(doc) == ["replay"] and doc["replay"]["segments"] == 1, doc
    assert "re-staging the segments in the range: 1/1 segments" in done.stderr.splitlines()


# --- civicflow --version --------------------------------------------------------------------------------


@pytest.mark.unit
def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    from typer.testing import CliRunner

    import civicflow
    from civicflow.app.cli import app, installed_version

    done = CliRunner().invoke(app, ["--version"])
    assert (done.exit_code, done.stdout) == (0, f"civicflow {version('civicflow')}\n")
    checkout = installed_version("civicflow-never-installed")
    assert checkout.startswith(f"{civicflow.__version__} (not installed: the source checkout at /")
