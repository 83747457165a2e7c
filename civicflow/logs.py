"""Logging for Civicflow's commands: readable lines on a terminal, JSON lines for log shippers."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

STANDARD_FIELDS = ("time", "level", "logger", "message", "exception", "stack")
"""The fields of every JSON log line (`exception` and `stack` only when the record has them)."""

_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",  # set on the record by any formatter that saw it first
    "asctime",
}


def _record_fields(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The record's own time, its `extra={...}` fields and its stack, beside the message.

    An extra field that would overwrite a standard one keeps its value as `extra_<name>`.
    """
    record: logging.LogRecord | None = event_dict.get("_record")
    if record is None:
        return event_dict
    made = datetime.fromtimestamp(record.created, tz=UTC)
    event_dict["time"] = made.isoformat(timespec="microseconds").replace("+00:00", "Z")
    for key, value in record.__dict__.items():
        if key in _RECORD_ATTRIBUTES or key.startswith("_"):
            continue
        event_dict[f"extra_{key}" if key in STANDARD_FIELDS or key == "event" else key] = value
    return event_dict


def _json_fields(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The standard fields first, in their order, then the extra fields; the stack as `stack`."""
    if "stack_info" in event_dict:
        event_dict["stack"] = event_dict.pop("stack_info")
    first = {key: event_dict.pop(key) for key in STANDARD_FIELDS if key in event_dict}
    return first | event_dict


def formatter(*, json: bool) -> logging.Formatter:
    """The formatter of `configure`: JSON objects, or `<time> [<level>] <message> key=value...`.

    A JSON line holds `time` (UTC, ISO 8601, when the record was made), `level` (lower case),
    `logger`, `message` (the formatted message), each field the call passed in `extra={...}`, and
    `exception` (the formatted traceback) when the record carries one. A value JSON cannot hold is
    written as its `str()`.
    """
    pre_chain = [structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, _record_fields]
    processors: list[Any] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.processors.format_exc_info,  # a plain traceback: never one that shows local variables
    ]
    if json:
        processors += [
            structlog.processors.EventRenamer("message"),
            _json_fields,
            structlog.processors.JSONRenderer(default=str),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0, timestamp_key="time"))
    return structlog.stdlib.ProcessorFormatter(processors=processors, foreign_pre_chain=pre_chain)


def configure(*, verbose: bool = False, json: bool = False, stream: TextIO | None = None) -> None:
    """Route every stdlib log record through one handler on `stream` (stderr), as text or JSON lines.

    JSON lines are one object per line with separate fields (see `formatter`), so Loki,
    Elasticsearch or CloudWatch index them without parsing free text.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(json=json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
