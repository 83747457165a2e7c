"""SenML JSON packs (RFC 8428) into contract reading objects.

A pack is a JSON array of records. Base fields (`bn`, `bt`, `bu`, `bv`, `bver`) apply to the
record that carries them and every later one until replaced. A record's name is `bn` + `n`, its
time `bt` + `t`, its unit `u` or else `bu`, its value `bv` + `v`. Times below 2**28 are relative
to the time the message was received (RFC 8428 section 4.5.3), so the caller passes that time in.
Records that resolve to the same time form one reading; its measurements are named by the last
`:` or `/` segment of the record name through `civicflow.transforms.profiles.SENML_NAMES`.

A malformed record (wrong JSON types, a bad name, a field that must be understood) refuses the
whole pack: its grouping cannot be trusted. A reading whose record is well formed but not
acceptable (an unknown name, a unit Civicflow does not convert, a value out of range) is refused
alone; the pack's other readings go on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from civicflow.contract import EPOCH_MAX, Dataset, Reason
from civicflow.transforms.invalid import Invalid
from civicflow.transforms.profiles import SENML_IGNORED, SENML_NAMES
from civicflow.transforms.units import convert

SENML_VERSION = 10
RELATIVE_LIMIT = 2**28  # RFC 8428: a resolved time below this is relative to the receive time
NAME_RE = re.compile(r"[A-Za-z0-9][-_:.A-Za-z0-9/]*")  # fullmatch only
LABELS = frozenset({"bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut"})


@dataclass(frozen=True, slots=True)
class Record:
    """One resolved SenML record (RFC 8428 section 4.6)."""

    index: int
    name: str
    time: datetime
    unit: str | None
    value: float | None
    string: str | None
    boolean: bool | None


def _number(rec: dict, label: str, index: int) -> float | None:
    value = rec.get(label)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(Reason.INVALID_TYPE, f"SenML record {index}: {label} must be a number, got {value!r}")
    return float(value)


def _string(rec: dict, label: str, index: int) -> str | None:
    value = rec.get(label)
    if value is not None and not isinstance(value, str):
        raise Invalid(Reason.INVALID_TYPE, f"SenML record {index}: {label} must be a string, got {value!r}")
    return value


def resolve_pack(pack: list, received_at: datetime | None) -> list[Record]:
    """Resolve base fields, names and times of every record; raise Invalid for a malformed pack."""
    bn, bt, bu, bv = "", 0.0, None, None
    out: list[Record] = []
    for index, rec in enumerate(pack):
        if not isinstance(rec, dict):
            kind = type(rec).__name__
            raise Invalid(Reason.NOT_AN_OBJECT, f"SenML record {index} is a {kind}, not an object")
        must_understand = sorted(k for k in rec if k.endswith("_"))
        if must_understand:
            raise Invalid(
                Reason.UNKNOWN_FIELD,
                f"SenML record {index} has fields Civicflow must understand but does not: "
                f"{', '.join(must_understand)[:120]}",
            )
        bver = rec.get("bver")
        if bver is not None and (isinstance(bver, bool) or not isinstance(bver, int) or bver > SENML_VERSION):
            raise Invalid(
                Reason.INVALID_VALUE, f"SenML version {bver!r} is not supported; send version {SENML_VERSION}"
            )
        if "bn" in rec:
            bn = _string(rec, "bn", index) or ""
        if "bt" in rec:
            bt = _number(rec, "bt", index) or 0.0
        if "bu" in rec:
            bu = _string(rec, "bu", index)
        if "bv" in rec:
            bv = _number(rec, "bv", index)
        name = bn + (_string(rec, "n", index) or "")
        if not NAME_RE.fullmatch(name):
            raise Invalid(
                Reason.INVALID_VALUE,
                f"SenML record {index}: name {name[:80]!r} is empty or not [A-Za-z0-9][-_:.A-Za-z0-9/]*",
            )
        t = bt + (_number(rec, "t", index) or 0.0)
        if t < RELATIVE_LIMIT:
            if received_at is None:
                raise Invalid(
                    Reason.INVALID_TIMESTAMP,
                    f"SenML record {index} has a relative time ({t:g} s) and the receive time is unknown",
                )
            if not 0 <= received_at.timestamp() + t < EPOCH_MAX:
                raise Invalid(
                    Reason.TIMESTAMP_OUT_OF_RANGE,
                    f"SenML record {index}: relative time {t:g} s falls outside 1970..3000",
                )
            time = received_at.astimezone(UTC) + timedelta(seconds=t)
        elif t >= EPOCH_MAX:
            raise Invalid(
                Reason.TIMESTAMP_OUT_OF_RANGE,
                f"SenML record {index}: time {t:g} is after 3000 (milliseconds?)",
            )
        else:
            time = datetime.fromtimestamp(t, tz=UTC)
        v = _number(rec, "v", index)
        if v is not None:
            v += bv or 0.0
        elif bv is not None and not {"vs", "vb", "vd"} & rec.keys():
            v = bv  # a record with no value of its own carries the base value
        vb = rec.get("vb")
        if vb is not None and not isinstance(vb, bool):
            raise Invalid(Reason.INVALID_TYPE, f"SenML record {index}: vb must be a boolean, got {vb!r}")
        unit = _string(rec, "u", index) if "u" in rec else bu
        out.append(Record(index, name, time, unit, v, _string(rec, "vs", index), vb))
    return out


def group_by_time(records: list[Record]) -> list[list[Record]]:
    """Records that share a resolved time, in order of first appearance: one reading each."""
    groups: dict[datetime, list[Record]] = {}
    for rec in records:
        groups.setdefault(rec.time, []).append(rec)
    return list(groups.values())


def reading_object(records: list[Record], dataset: Dataset) -> dict[str, Any]:
    """The contract reading object of one time group; raise Invalid if a record cannot be taken."""
    columns = {c.name: c for c in dataset.reading_fields}
    obj: dict[str, Any] = {"observed_at": records[0].time}
    for rec in records:
        short = re.split(r"[:/]", rec.name)[-1].lower()
        measurement = SENML_NAMES.get(short)
        if measurement is None:
            if short in SENML_IGNORED:
                continue
            raise Invalid(
                Reason.UNKNOWN_FIELD,
                f"SenML name {rec.name[:80]!r} maps to no contract measurement "
                "(see docs/mqtt-contract.md, SenML names)",
            )
        col = columns.get(measurement)
        if col is None:
            raise Invalid(
                Reason.UNKNOWN_FIELD, f"SenML name {rec.name[:80]!r} is not a {dataset.domain} measurement"
            )
        if measurement in obj:
            raise Invalid(
                Reason.INVALID_VALUE,
                f"SenML pack has two {measurement} values for {rec.time.isoformat()}; send one per time",
            )
        if col.type == "string":
            if short == "occupied" and rec.boolean is not None:
                obj[measurement] = "occupied" if rec.boolean else "free"
            elif rec.string is not None:
                obj[measurement] = rec.string
            else:
                raise Invalid(Reason.INVALID_TYPE, f"SenML {rec.name[:80]!r} needs a string value (vs)")
            continue
        if rec.value is None:
            raise Invalid(Reason.INVALID_TYPE, f"SenML {rec.name[:80]!r} needs a numeric value (v)")
        obj[measurement] = convert(measurement, col.unit, rec.value, rec.unit)
    return obj
