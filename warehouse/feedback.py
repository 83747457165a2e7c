"""Per-device summaries of what the quarantine refused, for the feedback published to gateways.

`pending_summaries` reads `quarantine.readings` and returns the summary of every device whose last
rejection is newer than the one its previous summary reported; `record_published` remembers the
summaries the broker took, in `quarantine.feedback`, so a second run finds nothing to publish.
`device_summary` is the same summary for one device, for `civicflow status --device`.

A summary never holds payload bytes (they may hold personal data), and each detail is masked as
retention masks an expired row's (`civicflow.warehouse.privacy.mask_detail`): the values it quotes become
`'…'`. Rows without a council, domain or device id (bad topics, unknown LoRaWAN devices) name no
feedback topic; they are only counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb

FEEDBACK_DDL = [
    """CREATE TABLE IF NOT EXISTS quarantine.feedback (
    council VARCHAR NOT NULL,
    domain VARCHAR NOT NULL,
    device_id VARCHAR NOT NULL,
    last_quarantined_at TIMESTAMPTZ NOT NULL,
    last_segment_id VARCHAR NOT NULL,
    last_record_offset BIGINT NOT NULL,
    last_reading_index BIGINT,
    made_at TIMESTAMPTZ NOT NULL,
    summary JSON NOT NULL,
    PRIMARY KEY (council, domain, device_id)
)""",
]
"""The table this module owns; `civicflow.warehouse.schema` runs it on every writable connect."""

_ADDRESSABLE = "council IS NOT NULL AND domain IS NOT NULL AND device_id IS NOT NULL"
_ORDER = (
    "quarantined_at DESC, received_at DESC, segment_id DESC, record_offset DESC, "
    "reading_index DESC NULLS LAST"
)


@dataclass(frozen=True)
class Device:
    council: str
    domain: str
    device_id: str


@dataclass
class Pending:
    """What a feedback run would publish: summaries, and rows no topic can name."""

    summaries: list[dict] = field(default_factory=list)
    unaddressable: int = 0
    unaddressable_by_reason: dict[str, int] = field(default_factory=dict)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _counts(con: duckdb.DuckDBPyConnection, where: str, params: list) -> dict[tuple[str, str, str], dict]:
    rows = con.execute(
        f"SELECT council, domain, device_id, reason, count(*) FROM quarantine.readings "
        f"WHERE {_ADDRESSABLE} AND {where} GROUP BY ALL ORDER BY ALL",
        params,
    ).fetchall()
    out: dict[tuple[str, str, str], dict] = {}
    for council, domain, device_id, reason, n in rows:
        out.setdefault((council, domain, device_id), {})[reason] = n
    return out


def _has_table(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = 'quarantine' AND table_name = 'feedback'"
        ).fetchall()[0][0]
    )


def _summaries(
    con: duckdb.DuckDBPyConnection, now: datetime, window: timedelta, device: Device | None, only_new: bool
) -> list[dict]:
    from civicflow.warehouse.privacy import mask_detail

    since = now - window
    one = "AND council = ? AND domain = ? AND device_id = ?" if device else ""
    one_params = [device.council, device.domain, device.device_id] if device else []
    previous = _has_table(con)
    join = (
        "LEFT JOIN quarantine.feedback f USING (council, domain, device_id)"
        if previous
        else "LEFT JOIN (SELECT NULL::VARCHAR AS council, NULL::VARCHAR AS domain, "
        "NULL::VARCHAR AS device_id, NULL::TIMESTAMPTZ AS last_quarantined_at, "
        "NULL::VARCHAR AS last_segment_id, NULL::BIGINT AS last_record_offset, "
        "NULL::BIGINT AS last_reading_index, NULL::TIMESTAMPTZ AS made_at) f "
        "USING (council, domain, device_id)"
    )
    changed = (
        "AND (f.last_segment_id IS NULL OR (l.segment_id, l.record_offset, coalesce(l.reading_index, -1), "
        "l.quarantined_at) <> (f.last_segment_id, f.last_record_offset, coalesce(f.last_reading_index, -1), "
        "f.last_quarantined_at)) AND l.received_at >= ?"
        if only_new
        else ""
    )
    latest = con.execute(
        f"""
        WITH l AS (
            SELECT council, domain, device_id, reason, detail, received_at, quarantined_at,
                   segment_id, record_offset, reading_index
            FROM quarantine.readings WHERE {_ADDRESSABLE} {one}
            QUALIFY row_number() OVER (PARTITION BY council, domain, device_id ORDER BY {_ORDER}) = 1
        )
        SELECT l.*, f.last_quarantined_at, f.made_at FROM l {join} WHERE true {changed}
        ORDER BY l.council, l.domain, l.device_id""",
        [*one_params, *([since] if only_new else [])],
    ).fetchall()
    if not latest:
        return []
    in_window = _counts(con, f"received_at >= ? {one}", [since, *one_params])
    ever = _counts(con, f"true {one}", one_params)
    out = []
    for (
        council,
        domain,
        device_id,
        reason,
        detail,
        received_at,
        quarantined_at,
        segment_id,
        record_offset,
        reading_index,
        previous_high,
        previous_made,
    ) in latest:
        key = (council, domain, device_id)
        if previous_high is None:
            since_previous = dict(ever.get(key, {}))
        else:
            since_previous = dict(
                con.execute(
                    "SELECT reason, count(*) FROM quarantine.readings WHERE council = ? AND domain = ? "
                    "AND device_id = ? AND quarantined_at > ? GROUP BY reason ORDER BY reason",
                    [council, domain, device_id, previous_high],
                ).fetchall()
            )
        by_reason = in_window.get(key, {})
        out.append(
            {
                "council": council,
                "domain": domain,
                "device_id": device_id,
                "made_at": _iso(now),
                "window": {
                    "hours": window.total_seconds() / 3600,
                    "from": _iso(since),
                    "rejected": sum(by_reason.values()),
                    "by_reason": by_reason,
                },
                "since_previous": {
                    "previous_made_at": _iso(previous_made),
                    "rejected": sum(since_previous.values()),
                    "by_reason": since_previous,
                },
                "last": {
                    "reason": reason,
                    "detail": mask_detail(detail),
                    "received_at": _iso(received_at),
                    "quarantined_at": _iso(quarantined_at),
                    "segment_id": segment_id,
                    "record_offset": record_offset,
                    "reading_index": reading_index,
                },
            }
        )
    return out


def pending_summaries(con: duckdb.DuckDBPyConnection, now: datetime, window: timedelta) -> Pending:
    """The summary of every device with a rejection received in `window` before `now` that its
    previous summary (if any) did not report yet, and the window's rows that name no device."""
    pending = Pending(summaries=_summaries(con, now, window, None, only_new=True))
    rows = con.execute(
        f"SELECT reason, count(*) FROM quarantine.readings WHERE NOT ({_ADDRESSABLE}) AND received_at >= ? "
        "GROUP BY reason ORDER BY reason",
        [now - window],
    ).fetchall()
    pending.unaddressable_by_reason = dict(rows)
    pending.unaddressable = sum(pending.unaddressable_by_reason.values())
    return pending


def device_summary(
    con: duckdb.DuckDBPyConnection, council: str, device_id: str, now: datetime, window: timedelta
) -> list[dict]:
    """The summary of one device (one per domain it was quarantined under), as published to it,
    whether or not it was published yet; empty when the quarantine holds nothing of it."""
    domains = [
        d
        for (d,) in con.execute(
            "SELECT DISTINCT domain FROM quarantine.readings WHERE council = ? AND device_id = ? "
            "AND domain IS NOT NULL ORDER BY domain",
            [council, device_id],
        ).fetchall()
    ]
    out = []
    for domain in domains:
        out += _summaries(con, now, window, Device(council, domain, device_id), only_new=False)
    if out and _has_table(con):
        for summary in out:
            made = con.execute(
                "SELECT made_at FROM quarantine.feedback WHERE council = ? AND domain = ? AND device_id = ?",
                [council, summary["domain"], device_id],
            ).fetchall()
            summary["published_at"] = _iso(made[0][0]) if made else None
    return out


def record_published(con: duckdb.DuckDBPyConnection, summaries: list[dict]) -> None:
    """Remember the summaries the broker took: their devices' last rejection is reported."""
    if not summaries:
        return
    con.executemany(
        "INSERT OR REPLACE INTO quarantine.feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            [
                s["council"],
                s["domain"],
                s["device_id"],
                s["last"]["quarantined_at"],
                s["last"]["segment_id"],
                s["last"]["record_offset"],
                s["last"]["reading_index"],
                s["made_at"],
                json.dumps(s, sort_keys=True),
            ]
            for s in summaries
        ],
    )


def published_summary(
    con: duckdb.DuckDBPyConnection, council: str, domain: str, device_id: str
) -> dict | None:
    """The last summary the broker took for one device (what its retained feedback message holds),
    with `published_at`; None when none was published (or the warehouse predates feedback)."""
    if not _has_table(con):
        return None
    rows = con.execute(
        "SELECT summary, made_at FROM quarantine.feedback WHERE council = ? AND domain = ? AND device_id = ?",
        [council, domain, device_id],
    ).fetchall()
    if not rows:
        return None
    summary = json.loads(rows[0][0])
    summary["published_at"] = _iso(rows[0][1])
    return summary
