"""A device's feedback on its portal page: the rejection summary last published to its gateway.

Feedback is not part of a release (it is about readings Civicflow refused, not data it published),
so, as for `/metrics` (civicflow.portal.metrics), the device page reads it from the warehouse beside the
releases, read-only: `quarantine.feedback` holds each summary the broker took, which is what the
device's retained `<prefix>/<council>/<domain>/<device>/feedback` message holds
(docs/mqtt-contract.md, "Feedback"). A summary carries no payload bytes and its detail is masked.

Where the portal runs without the warehouse, or while a task holds it for writing, the page says
the feedback cannot be read now instead of showing none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import duckdb

from civicflow.errors import CivicflowError
from civicflow.warehouse.db import connect
from civicflow.warehouse.feedback import published_summary
from civicflow.warehouse.layout import Layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceFeedback:
    """`summary` is the published summary, None when none was; `readable` is False when the
    warehouse could not be read (then `summary` is None and says nothing)."""

    readable: bool
    summary: dict | None = None


def device_feedback(layout: Layout, council: str, domain: str, device_id: str) -> DeviceFeedback:
    try:
        con = connect(layout.warehouse, read_only=True)
    except (CivicflowError, OSError, duckdb.Error) as exc:
        log.info("device feedback not read: %s", exc)
        return DeviceFeedback(readable=False)
    try:
        return DeviceFeedback(readable=True, summary=published_summary(con, council, domain, device_id))
    except duckdb.Error as exc:
        log.warning("device feedback not read from %s: %s", layout.warehouse, exc)
        return DeviceFeedback(readable=False)
    finally:
        con.close()
