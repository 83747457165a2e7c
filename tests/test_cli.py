"""The `civicflow` command for operators: output in logs and pipes, --json, --version, JSON logs."""

from __future__ import annotations

import io
import json
import logging

import pytest

pytestmark = pytest.mark.unit


@pytest.fixture
def root_logger():
    """The root logger as `civicflow.logs.configure` leaves it, restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_json_has_separate_fields_extras_and_the_exception(root_logger):
    from civicflow.logs import configure

    out = io.StringIO()
    configure(json=True, stream=out)
    log = logging.getLogger("ingest.listener")
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
        "ingest.listener",
        "landed 3 messages in a.seg",
    )
    assert (landed["segment"], landed["messages"], landed["extra_level"]) == ("a.seg", 3, "x")
    assert (failed["level"], failed["message"]) == ("error", "flush failed\nsecond line")
    assert failed["exception"].startswith("Traceback (most recent call last):")
    assert failed["exception"].endswith("ZeroDivisionError: division by zero")


def test_text_logs_show_extras_and_a_plain_traceback(root_logger):
    from civicflow.logs import configure

    out = io.StringIO()
    configure(stream=out)
    secret = "hunter2"  # a local variable a rich traceback would show
    try:
        raise ValueError(f"bad value {len(secret)}")
    except ValueError:
        logging.getLogger("ingest.listener").exception("cannot land", extra={"segment": "a.seg"})
    text = out.getvalue()
    assert "[error" in text and "cannot land" in text and "segment=a.seg" in text
    assert "ValueError: bad value 7" in text and secret not in text
