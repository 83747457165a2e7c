"""The regression corpus (tests/fuzz/corpus/*.jsonl): every hostile message found, with its outcome.

One JSON object per line:

    {"id": "duplicate-key", "topic": "city/fuzzcorpus/parking/p1", "payload": "{...}",
     "expect": {"readings": 0, "reasons": ["duplicate_key"]}, "pending": true, "note": "..."}

- `topic` and `payload` are the exact bytes as UTF-8 text with JSON escapes (`\\n`, `\\u0000`);
  bytes that are not UTF-8 are given as `topic_b64` / `payload_b64` instead.
- `expect` is what `decode_message` must make of it: `readings` accepted and the multiset of
  quarantine `reasons`, or `reason_in`: exactly one rejection, with one of these reasons.
- `received_at` (RFC 3339, default `RECEIVED_AT`) is the listener's receive time the decoder is
  given; `"e2e": false` marks a case whose outcome holds only at that receive time, so the
  end-to-end run (which receives it now) leaves its outcome unchecked.
- `"pending": true` marks a case whose expected outcome waits for a decoder fix: its test is an
  expected failure (strict), so it fails the moment the fix lands, and the flag must go then.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from civicflow.registry import Registry, build_registry, load_council

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CORPUS_DIR = HERE / "corpus"
RECEIVED_AT = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
REGISTRY_FILES = (
    *sorted((ROOT / "registry").glob("*.toml")),
    ROOT / "samples" / "lorawan" / "registry" / "example.toml",
    HERE / "registry" / "fuzzlora.toml",
)
"""The councils of a fuzz run: the checkout's registry, the LoRaWAN samples' and the fuzz one."""


def fuzz_registry() -> Registry:
    return build_registry([load_council(p) for p in REGISTRY_FILES], "tests/fuzz registry")


def write_registry_dir(target: Path) -> Path:
    """The fuzz run's registry as a directory, for `CIVICFLOW_REGISTRY_DIR`."""
    target.mkdir(parents=True, exist_ok=True)
    for path in REGISTRY_FILES:
        shutil.copyfile(path, target / path.name)
    return target


@dataclass(frozen=True)
class Outcome:
    """What became of one message: readings accepted and the reasons of what was quarantined."""

    readings: int
    reasons: tuple[str, ...]

    @classmethod
    def of(cls, readings: int, reasons: Any) -> Outcome:
        return cls(readings, tuple(sorted(reasons)))

    def __str__(self) -> str:
        return f"{self.readings} accepted, quarantined {list(self.reasons)}"


@dataclass(frozen=True)
class Case:
    id: str
    topic: bytes
    payload: bytes
    expect: dict[str, Any]
    received_at: datetime = RECEIVED_AT
    pending: bool = False
    e2e: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def satisfied_by(self, outcome: Outcome) -> bool:
        if "reason_in" in self.expect:
            return (
                outcome.readings == 0
                and len(outcome.reasons) == 1
                and (outcome.reasons[0] in self.expect["reason_in"])
            )
        return outcome == Outcome.of(self.expect.get("readings", 0), self.expect.get("reasons", ()))

    def describe_expect(self) -> str:
        if "reason_in" in self.expect:
            return f"quarantined as one of {self.expect['reason_in']}"
        return str(Outcome.of(self.expect.get("readings", 0), self.expect.get("reasons", ())))


def _bytes(doc: dict[str, Any], name: str) -> bytes:
    if f"{name}_b64" in doc:
        return base64.b64decode(doc[f"{name}_b64"])
    return doc[name].encode("utf-8")


def _text(value: bytes, name: str) -> dict[str, str]:
    try:
        return {name: value.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_b64": base64.b64encode(value).decode("ascii")}


KNOWN = {
    "id",
    "topic",
    "topic_b64",
    "payload",
    "payload_b64",
    "expect",
    "received_at",
    "pending",
    "e2e",
    "note",
}


def parse_case(doc: dict[str, Any]) -> Case:
    received = doc.get("received_at")
    return Case(
        id=doc["id"],
        topic=_bytes(doc, "topic"),
        payload=_bytes(doc, "payload"),
        expect=doc["expect"],
        received_at=datetime.fromisoformat(received) if received else RECEIVED_AT,
        pending=bool(doc.get("pending", False)),
        e2e=bool(doc.get("e2e", True)),
        note=doc.get("note", ""),
        extra={k: v for k, v in doc.items() if k not in KNOWN},
    )


def load_corpus(directory: Path = CORPUS_DIR) -> list[Case]:
    cases = []
    for path in sorted(directory.glob("*.jsonl")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    cases.append(parse_case(json.loads(line)))
                except (KeyError, ValueError) as exc:
                    raise ValueError(f"{path}:{number}: not a corpus case ({exc})") from exc
    return cases


def case_line(
    case_id: str,
    topic: bytes,
    payload: bytes,
    outcome: Outcome,
    *,
    note: str = "",
    received_at: datetime | None = None,
) -> str:
    """A corpus line for a message and the outcome it had (to be checked, then committed)."""
    doc: dict[str, Any] = {"id": case_id, **_text(topic, "topic"), **_text(payload, "payload")}
    doc["expect"] = {"readings": outcome.readings, "reasons": list(outcome.reasons)}
    if received_at is not None:
        doc["received_at"] = received_at.isoformat()
    if note:
        doc["note"] = note
    return json.dumps(doc, ensure_ascii=True)


def reasons_of(rejections: Any) -> Counter[str]:
    return Counter(r.reason.value for r in rejections)
