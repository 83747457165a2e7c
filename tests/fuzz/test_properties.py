"""Property tests over the fuzz generators: what any message does to the decoders, and what the
harness assumes of the broker.

Any message (a generator's, Hypothesis choosing its random draws, or arbitrary bytes) is decoded
without an exception into readings or rejections with a contract reason, never into nothing; and a
segment of such messages stages the same through the DuckDB fast path as through the reference.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from civicflow.contract import Reason
from civicflow.transforms.decode import Limits, decode_message
from fuzz.corpus import RECEIVED_AT, fuzz_registry
from fuzz.generators import GENERATORS, Message, generate, matches, messages, publishable
from fuzz.segments import stage_decode

pytestmark = pytest.mark.unit
REGISTRY = fuzz_registry()
REASONS = frozenset(Reason)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_any_message_decodes_to_readings_or_reasoned_rejections(message: Message):
    topic, payload = message
    out = decode_message(topic, payload, Limits(), received_at=RECEIVED_AT, registry=REGISTRY)
    assert out.readings or out.rejections, "a message must not vanish"
    for rejection in out.rejections:
        assert rejection.reason in REASONS and rejection.detail
    for reading in out.readings:
        assert reading["observed_at"].tzinfo is not None
        assert reading["observed_at"].utcoffset().total_seconds() == 0
        assert reading["event_date"] == reading["observed_at"].date()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=1, max_size=12))
def test_a_segment_of_any_messages_stages_the_same_on_the_fast_and_reference_paths(batch: list[Message]):
    fast_rows, fast_quarantine, fast = stage_decode(batch, RECEIVED_AT, REGISTRY, fast=True)
    slow_rows, slow_quarantine, slow = stage_decode(batch, RECEIVED_AT, REGISTRY, fast=False)
    assert fast == slow
    assert fast_rows == slow_rows
    assert fast_quarantine == slow_quarantine


def test_a_seed_reproduces_its_messages_and_the_mix_has_every_kind():
    first = list(generate(random.Random(7), 2500))
    assert first == list(generate(random.Random(7), 2500))
    assert first[:50] != list(generate(random.Random(8), 50))
    topics = [t for t, _ in first]
    assert len(set(first)) < len(first), "exact re-sends"
    assert any(len(p) > 256 * 1024 for _, p in first), "oversize payloads"
    assert any(t.startswith(b"v3/") for t in topics) and any(t.startswith(b"application/") for t in topics)
    assert any(t.endswith(b"/senml") for t in topics)
    assert any(not publishable(t) for t in topics)
    assert sorted(GENERATORS) == sorted(set(GENERATORS))


@pytest.mark.parametrize(
    ("topic", "ok"),
    [
        # what Mosquitto 2 was seen to take (tests/fuzz/harness.py sends the others on their own)
        (b"city/fuzztown/parking/d1", True),
        ("city/é/ß/日本/\U0001f697".encode(), True),
        ("city/\u00a0/\u2028".encode(), True),
        (b"city//parking/", True),
        (b"city/" + b"x" * 65_000, True),
        (b"city/nl\n/parking/d1", False),
        (b"city/a\x00b/x", False),
        (b"city/\t/x", False),
        (b"city/a\x7f/x", False),
        ("city/\u0085/x".encode(), False),
        ("city/\ufdd0/x".encode(), False),
        ("city/\uffff/x".encode(), False),
        ("city/\U0001ffff/x".encode(), False),
        (b"city/+/parking/d1", False),
        (b"city/#", False),
        (b"city/\xff/x", False),
        (b"$SYS/x", False),
        (b"", False),
        (b"city/" + b"a/" * 200, False),
    ],
)
def test_publishable_topics_are_the_ones_mosquitto_takes(topic: bytes, ok: bool):
    assert publishable(topic) is ok


@pytest.mark.parametrize(
    ("topic_filter", "topic", "ok"),
    [
        ("city/#", "city", True),
        ("city/#", "city/", True),
        ("city/#", "city/a/b/c", True),
        ("city/#", "cityx/a", False),
        ("city/#", "/city/a", False),
        ("v3/+/devices/+/up", "v3/a@t/devices/d/up", True),
        ("v3/+/devices/+/up", "v3//devices//up", True),
        ("v3/+/devices/+/up", "v3/a/b/devices/d/up", False),
        ("application/+/device/+/event/up", "application/a/device/b/event/up/x", False),
    ],
)
def test_topic_filters_match_as_mqtt_says(topic_filter: str, topic: str, ok: bool):
    assert matches(topic_filter, topic) is ok
