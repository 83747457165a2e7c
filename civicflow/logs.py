"""Logging for Civicflow's commands: readable lines on a terminal, JSON lines for log shippers."""

from __future__ import annotations

import logging

import structlog


def configure(*, verbose: bool = False, json: bool = False) -> None:
    """Route every stdlib log record through one handler, as text or as one JSON object per line.

    JSON lines carry `timestamp` (UTC, ISO 8601), `level`, `logger` and `event` (the message), so
    Loki, Elasticsearch or CloudWatch can index them without parsing free text.
    """
    pre_chain = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=pre_chain,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
