"""A token bucket per client address: 429 with Retry-After past the limit, on a clock the test moves."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from civicflow.app.serve_cli import rate_limit
from civicflow.portal import ratelimit
from civicflow.portal.app import create_app
from civicflow.portal.ratelimit import RateLimit, TokenBuckets
from civicflow.settings import PortalSettings

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_past_its_limit_is_told_when_to_come_back(released):
    clock = Clock()
    app = create_app(released, rate_limit=RateLimit(per_minute=6, burst=2), clock=clock)  # one each 10 s
    one = TestClient(app, client=("203.0.113.1", 50000))
    other = TestClient(app, client=("203.0.113.2", 50000))

    assert [one.get("/api/datasets").status_code for _ in range(2)] == [200, 200]  # the burst
    refused = one.get("/api/datasets", headers={"Origin": "https://maps.example.org"})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "10"
    assert refused.headers["access-control-allow-origin"] == "*"  # a script elsewhere can read why
    assert refused.json() == {
        "detail": "too many requests from this address: at most 6 a minute (and 2 at once); "
        "wait 10 s (Retry-After) and ask again"
    }
    assert one.head("/api/datasets").status_code == 429  # every method counts, HEAD without a body
    assert other.get("/api/datasets").status_code == 200  # another address has its own bucket

    clock.now += 9.5
    assert one.get("/api/datasets").headers["retry-after"] == "1"  # 0.5 s short of a request
    clock.now += 0.5
    assert one.get("/api/datasets").status_code == 200
    assert one.get("/api/datasets").status_code == 429
    clock.now += 3600  # an hour idle refills the burst, no more
    assert [one.get("/api/datasets").status_code for _ in range(3)] == [200, 200, 429]


def test_without_a_limit_nothing_is_refused(released):
    client = TestClient(create_app(released), client=("203.0.113.3", 50000))
    assert {client.get("/api/datasets").status_code for _ in range(50)} == {200}


def test_idle_clients_are_forgotten_once_many_are_held(monkeypatch):
    monkeypatch.setattr(ratelimit, "FORGET_AFTER", 3)
    clock = Clock()
    buckets = TokenBuckets(RateLimit(per_minute=60, burst=2), clock)
    for address in ("a", "b", "c"):
        assert buckets.take(address) == 0
    clock.now += 0.5  # "a" to "c" have 1.5 tokens of 2
    assert buckets.take("d") == 0 and sorted(buckets._buckets) == ["a", "b", "c", "d"]
    clock.now += 0.8  # "a" to "c" are full again, "d" is not: they are forgotten when "e" comes
    assert buckets.take("e") == 0
    assert sorted(buckets._buckets) == ["d", "e"]
    assert buckets.take("e") == 0 and buckets.take("e") == pytest.approx(1.0)


def test_the_limit_comes_from_the_settings():
    assert rate_limit(PortalSettings()) == RateLimit(per_minute=600, burst=120)
    assert rate_limit(PortalSettings(rate_limit_per_minute=30, rate_limit_burst=5)) == RateLimit(30, 5)
    assert rate_limit(PortalSettings(rate_limit_per_minute=0)) is None
