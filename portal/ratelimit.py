"""Requests per client address: a token bucket each, in memory (docs/publication.md, "Rate limit").

Anonymous access stays open: every address may make `burst` requests at once, then
`per_minute` a minute, sustained. A request past that answers 429 with `Retry-After`, the
whole seconds until the address may ask again. The buckets live in the serving process (one
set per process behind a load balancer) and forget an address once its bucket is full again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

FORGET_AFTER = 10_000
"""Addresses held before the full (idle) buckets are dropped: bounds the memory any traffic takes."""


@dataclass(frozen=True)
class RateLimit:
    per_minute: int
    burst: int

    def __post_init__(self) -> None:
        if self.per_minute < 1 or self.burst < 1:
            raise ValueError("a rate limit needs at least 1 request a minute and a burst of at least 1")


class TokenBuckets:
    """One bucket per client: `burst` tokens, refilled at `per_minute` a minute; a request takes one."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self.rate = limit.per_minute / 60.0  # tokens a second
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when counted)

    def take(self, client: str) -> float:
        """0 if the client may make a request now (and it is counted), else the seconds to wait."""
        now = self.clock()
        tokens, then = self._buckets.get(client, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + max(0.0, now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > FORGET_AFTER:
                self._forget_full(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: a client seen again starts full, as it would."""
        full = float(self.limit.burst)
        for client, (tokens, then) in list(self._buckets.items()):
            if tokens + (now - then) * self.rate >= full:
                del self._buckets[client]


class RateLimitMiddleware:
    """429 with Retry-After for a client address past its limit; everything else passes.

    The address is the connection's, or the one a trusted proxy forwarded: uvicorn takes it from
    `X-Forwarded-For` when the proxy's address is in `FORWARDED_ALLOW_IPS` (127.0.0.1 unless set).
    """

    def __init__(self, app: ASGIApp, buckets: TokenBuckets) -> None:
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self.buckets.take(client[0] if client else "unknown")
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        retry = max(1, math.ceil(wait))
        limit = self.buckets.limit
        body = orjson.dumps(
            {
                "detail": f"too many requests from this address: at most {limit.per_minute} a minute "
                f"(and {limit.burst} at once); wait {retry} s (Retry-After) and ask again"
            }
        )
        head = scope["method"] == "HEAD"
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if head else body})
