"""The regression corpus (tests/fuzz/corpus/): each hostile message decodes to its recorded outcome,
the same on the reference decoder, the reference path of staging and the DuckDB fast path.

A case marked `pending` waits for a decoder fix: its expected-outcome test is an expected failure
(strict), so it fails as soon as the fix lands, and the mark must be removed from the corpus then.
"""

from __future__ import annotations

import pytest

from civicflow.contract import Reason
from civicflow.transforms.decode import Limits, decode_message
from fuzz.corpus import CORPUS_DIR, Case, Outcome, fuzz_registry, load_corpus
from fuzz.segments import stage_decode

pytestmark = pytest.mark.unit
CASES = load_corpus()
REGISTRY = fuzz_registry()
KNOWN_HOLES = {
    "timestamp-year-1": "timestamp_out_of_range",
    "timestamp-year-9999": "timestamp_out_of_range",
    "offset-minutes-60": "invalid_offset",
    "future-10min-1s": "future_timestamp",
    "date-feb-30": "invalid_date",
    "duplicate-key": "duplicate_key",
    "topic-council-newline": "bad_topic",
    "lorawan-device-dotdot": "unknown_device",
}


def reference(case: Case) -> Outcome:
    out = decode_message(case.topic, case.payload, Limits(), received_at=case.received_at, registry=REGISTRY)
    return Outcome.of(len(out.readings), (r.reason.value for r in out.rejections))


def expected_outcome_params():
    for case in CASES:
        marks = ()
        if case.pending:
            marks = pytest.mark.xfail(
                strict=True, reason="pending decoder fix: remove `pending` from the corpus once it passes"
            )
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", list(expected_outcome_params()))
def test_case_decodes_to_its_expected_outcome(case: Case):
    got = reference(case)
    assert case.satisfied_by(got), f"{case.id}: {got}, expected {case.describe_expect()} ({case.note})"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fast_path_and_reference_path_agree_with_the_decoder(case: Case):
    message = [(case.topic, case.payload)]
    fast_rows, fast_quarantine, fast = stage_decode(message, case.received_at, REGISTRY, fast=True)
    slow_rows, slow_quarantine, slow = stage_decode(message, case.received_at, REGISTRY, fast=False)
    assert fast == slow == {0: reference(case)}
    assert fast_rows == slow_rows
    assert fast_quarantine == slow_quarantine


def test_the_corpus_is_well_formed_and_holds_the_known_holes():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "corpus ids must be unique"
    reasons = {r.value for r in Reason}
    for case in CASES:
        named = [*case.expect.get("reasons", ()), *case.expect.get("reason_in", ())]
        assert set(named) <= reasons, f"{case.id} names a reason the contract does not have"
        assert not case.extra, f"{case.id} has unknown fields {sorted(case.extra)}"
    by_id = {c.id: c for c in CASES}
    for case_id, reason in KNOWN_HOLES.items():
        case = by_id[case_id]
        assert reason in (*case.expect.get("reasons", ()), *case.expect.get("reason_in", ())), case_id
    assert sorted(p.name for p in CORPUS_DIR.iterdir()) == ["cases.jsonl"]
