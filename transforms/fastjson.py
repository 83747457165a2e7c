"""What the fast path accepts of a native payload, and the values it gives: grammar, types, checks.

The reference decoder (transforms/decode.py) is the definition; this module only ever *accepts*
payloads it can prove the reference turns into one reading with the same values, and says
nothing about the others (they go to the reference, which explains why it refuses them).

Why it is built this way: a DuckDB string or JSON function costs about half a microsecond per
row here whatever it does, so a payload gets exactly two of them and everything else is numpy
over the typed columns they return:

1. `regexp_full_match` against a *typed grammar*: the whole payload is one flat JSON object
   whose keys come in one of the key orders a sample of the chunk showed (`learn_orders`), each
   value written as its column's type allows. Fixing the order of the keys is what proves there
   is no key twice and no key outside the contract without counting them; the grammar also rules
   out what DuckDB's lenient JSON reader would let through and orjson refuses (trailing commas,
   `NaN`, comments), `null`, `true`/`false`, nesting, escapes and non-ASCII text. A payload in a
   key order the sample did not show is simply not accepted.
2. `json_transform` to the domain's columns (numbers as DOUBLE, strings as VARCHAR): one parse.

`check` then applies the rest of `decode_reading` with numpy: ranges, defaults, `lat` with
`lon`, at least one measurement, the dataset's rules (car-park counts and occupancy), `msg_id`
length, RFC 3339 times converted to microseconds with the reference's truncation (`rfc3339_us`)
inside the contract's window, and the clock-skew allowance against each record's receive time.
Every limit is read from civicflow/contract.py, as the reference reads it: there is no copy here
to drift.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from civicflow.contract import (
    CLOCK_SKEW_MAX_S,
    COMMON_FIELDS,
    EPOCH_MAX,
    LOCATION_COLUMNS,
    MSG_ID_MAX,
    Column,
    Dataset,
    Rule,
)

WS = r"[ \t\n\r]*"
# At most 15 integer digits: every such number is exact in a double, so an integer literal read as
# DOUBLE is the reference's int (or float(int)); no exponents, so no rounding question at all.
INTEGER_RE = r"-?(?:0|[1-9][0-9]{0,14})(?:\.0+)?"  # 2.0 is the integer 2 for the reference too
NUMBER_RE = r"-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]+)?"
TEXT_RE = r'"[\x20\x21\x23-\x5b\x5d-\x7f]*"'  # ASCII without control characters, quote or backslash
MSG_ID_RE = rf"{TEXT_RE}|(?:0|-?[1-9][0-9]{{0,17}})"  # an integer msg_id fits 64 bits; not -0
# RFC 3339 with Z or an offset (fixed positions, so `rfc3339_us` reads digits by index), or integer
# epoch seconds of at most 11 digits (below EPOCH_MAX is checked on the value)
OBSERVED_AT_RE = (
    r'"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"'
    r"|(?:0|[1-9][0-9]{0,10})"
)
MAX_ORDERS = 8
SAMPLE = 256


def _value_re(col: Column) -> str:
    if col.type == "integer":
        return INTEGER_RE
    if col.type == "number":
        return NUMBER_RE
    return '"(?:' + "|".join(re.escape(v) for v in col.enum or ()) + ')"'


def fields(dataset: Dataset) -> dict[str, tuple[str, str]]:
    """Every key a reading of the domain may have: (DuckDB type to extract it as, value grammar)."""
    out = {"observed_at": ("VARCHAR", OBSERVED_AT_RE), "msg_id": ("VARCHAR", MSG_ID_RE)}
    for col in (*dataset.reading_fields, *LOCATION_COLUMNS):
        out[col.name] = ("VARCHAR" if col.type == "string" else "DOUBLE", _value_re(col))
    assert set(out) == COMMON_FIELDS | {c.name for c in dataset.reading_fields}
    return out


def learn_orders(payloads: pa.Array, allowed: set[str], known: dict[tuple[str, ...], int]) -> None:
    """Add the key orders of a sample of `payloads` (flat objects of allowed keys) to `known`.

    `known` keeps the MAX_ORDERS orders seen most recently, across chunks, most recent last.
    """
    n = len(payloads)
    picks = np.unique(np.linspace(0, n - 1, min(n, SAMPLE)).astype(np.int64)) if n else []
    seen: Counter[tuple[str, ...]] = Counter()
    for text in payloads.take(pa.array(picks, pa.int64())).to_pylist():
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and "observed_at" in doc and doc.keys() <= allowed:
            seen[tuple(doc)] += 1
    for order, _ in sorted(seen.items(), key=lambda kv: kv[1])[-MAX_ORDERS:]:
        known.pop(order, None)
        known[order] = 1
    while len(known) > MAX_ORDERS:
        del known[next(iter(known))]


def query(dataset: Dataset, orders: list[tuple[str, ...]]) -> str:
    """SQL over table `fin(i, payload)`: the rows in one of `orders`, as typed columns."""
    kinds = fields(dataset)
    shapes = [
        rf"\{{{WS}" + f"{WS},{WS}".join(f'"{key}"{WS}:{WS}(?:{kinds[key][1]})' for key in order) + rf"{WS}\}}"
        for order in orders
    ]
    grammar = WS + "(?:" + "|".join(shapes) + ")" + WS
    structure = "{" + ", ".join(f'"{k}": "{t}"' for k, (t, _) in sorted(kinds.items())) + "}"
    return (
        f"SELECT i, unnest(json_transform(payload, {_lit(structure)})) FROM fin "
        f"WHERE regexp_full_match(payload, {_lit(grammar)})"
    )


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- the checks of decode_reading, on columns -----------------------------------------------------


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def rfc3339_us(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(microseconds since the epoch, whether the reference gives exactly that) per `observed_at`.

    Each text is one the grammar let through: `YYYY-MM-DDTHH:MM:SS[.f+](Z|±hh:mm)`, or integer
    epoch seconds. As `parse_observed_at` does it: the fraction is cut to six digits, the offset
    subtracted, epoch seconds taken below EPOCH_MAX. What the reference refuses (a day or hour
    out of range, a leap second, an offset beyond 23:59, a time outside the contract's window)
    is not accepted, nor are years before 1970 or after 2999 in the text (the reference says why).
    """
    texts = texts.cast(pa.string())
    n = len(texts)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    offsets = np.frombuffer(texts.buffers()[1], np.int32, n + 1, texts.offset * 4).astype(np.int64)
    buf = texts.buffers()[2]
    data = np.frombuffer(buf, np.uint8) if buf is not None and buf.size else np.zeros(1, np.uint8)
    start, length = offsets[:-1], offsets[1:] - offsets[:-1]
    last = len(data) - 1

    def byte(pos: np.ndarray) -> np.ndarray:  # positions outside a short text read some byte
        return data[np.clip(pos, 0, last)]

    def digit(pos: np.ndarray) -> np.ndarray:
        return byte(pos).astype(np.int64) - 48

    def number(at: int | np.ndarray, width: int) -> np.ndarray:
        value = np.zeros(n, np.int64)
        for k in range(width):
            value = value * 10 + digit(start + at + k)
        return value

    epoch = length <= 11  # the grammar's other form is at least 20 characters long
    seconds = np.zeros(n, np.int64)
    for k in range(11):
        more = epoch & (k < length)
        seconds = np.where(more, seconds * 10 + digit(start + k), seconds)
    year, month, day = number(0, 4), number(5, 2), number(8, 2)
    hour, minute, second = number(11, 2), number(14, 2), number(17, 2)
    zulu = np.isin(byte(start + length - 1), (ord("Z"), ord("z")))
    zone = np.where(zulu, 1, 6)
    sign = np.where(byte(start + length - 6) == ord("-"), -1, 1)
    off_h, off_m = number(length - 5, 2), number(length - 2, 2)
    digits = length - zone - 20  # of the fraction, after its dot; <= 0 when there is none
    micros = np.zeros(n, np.int64)
    for k in range(6):
        micros = micros * 10 + np.where(k < digits, digit(start + 20 + k), 0)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    month_days = _MONTH_DAYS[np.where(month_ok, month, 0)] + (leap & (month == 2))
    clock_ok = (
        (year >= 1970) & (year <= 2999) & month_ok & (day >= 1) & (day <= month_days)
        & (hour <= 23) & (minute <= 59) & (second <= 59)
        & (zulu | ((off_h <= 23) & (off_m <= 59)))
    )  # fmt: skip
    local = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    offset = np.where(zulu, 0, sign * (off_h * 3600 + off_m * 60))
    us = np.where(epoch, seconds * 1_000_000, (local - offset) * 1_000_000 + micros)
    ok = np.where(epoch, seconds < EPOCH_MAX, clock_ok & (us >= 0) & (us < EPOCH_MAX * 1_000_000))
    return us, ok


def _numbers(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, present) of a DOUBLE column; absent values read as 0."""
    arr = col.combine_chunks()
    return arr.fill_null(0.0).to_numpy(zero_copy_only=False), arr.is_valid().to_numpy(zero_copy_only=False)


RULES = frozenset({Rule.CAR_PARK_COUNTS})
"""The contract's rules `check` applies; a dataset declaring any other is left to the reference."""


def check(dataset: Dataset, res: pa.Table, received_us: np.ndarray) -> tuple[np.ndarray, dict[str, pa.Array]]:
    """Which rows of a `query` result the reference accepts as they are, and their values.

    `received_us` is each row's receive time in microseconds (the clock-skew rule). Returns the
    mask of accepted rows and, for those rows, every value column of the staged table plus
    `observed_us` and `event_day` (days since the epoch).
    """
    assert set(dataset.rules) <= RULES, f"{dataset.domain} declares rules the fast path lacks"
    n = res.num_rows
    ok = np.ones(n, bool)
    values: dict[str, tuple[np.ndarray, np.ndarray] | pa.Array] = {}
    for col in (*dataset.reading_fields, *LOCATION_COLUMNS):
        if col.type == "string":
            values[col.name] = res.column(col.name).combine_chunks()  # the grammar checked the enum
            continue
        x, present = _numbers(res.column(col.name))
        if col.default is not None:
            x, present = np.where(present, x, col.default), np.ones(n, bool)
        if col.minimum is not None:
            ok &= ~present | (x >= col.minimum)
        if col.maximum is not None:
            ok &= ~present | (x <= col.maximum)
        values[col.name] = (x.astype(np.int64) if col.type == "integer" else x, present)

    def present(name: str) -> np.ndarray:
        v = values[name]
        return v[1] if isinstance(v, tuple) else v.is_valid().to_numpy(zero_copy_only=False)

    ok &= present("lat") == present("lon")
    ok &= np.logical_or.reduce([present(c.name) for c in dataset.measurements])
    if Rule.CAR_PARK_COUNTS in dataset.rules:
        (occupied, has_occupied), (total, has_total) = values["occupied_spots"], values["total_spots"]
        ok &= has_occupied == has_total
        ok &= ~has_occupied | (occupied <= total)
        with np.errstate(divide="ignore", invalid="ignore"):
            values["occupancy"] = (occupied / np.where(has_total, total, 1), has_occupied)
    msg_id = res.column("msg_id").combine_chunks()
    ok &= pc.fill_null(pc.binary_length(msg_id), 0).to_numpy(zero_copy_only=False) <= MSG_ID_MAX
    observed_at = res.column("observed_at").combine_chunks()
    us, time_ok = rfc3339_us(observed_at)
    ok &= time_ok & observed_at.is_valid().to_numpy(zero_copy_only=False)
    ok &= us <= received_us + CLOCK_SKEW_MAX_S * 1_000_000
    keep = np.flatnonzero(ok)
    out: dict[str, pa.Array] = {}
    for name, v in values.items():
        if isinstance(v, tuple):
            out[name] = pa.array(v[0][keep], mask=~v[1][keep])
        else:
            out[name] = v.take(pa.array(keep))
    out["msg_id"] = msg_id.take(pa.array(keep))
    out["observed_us"] = pa.array(us[keep])
    out["event_day"] = pa.array(us[keep] // 86_400_000_000)
    return ok, out


__all__ = ["check", "fields", "learn_orders", "query", "rfc3339_us"]
