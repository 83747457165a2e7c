"""HTTP around the portal's answers: validators and caching, compression, CORS (docs/publication.md).

A release never changes once cut, so whatever names its release in its URL (a file under
`/releases/<id>/`, an API answer pinned with `release=<id>`) is cached for a year as immutable.
What follows `latest` (pages, the catalogue, unpinned API answers) may be stored but is checked
again on every use (`no-cache`); its ETag names the release it was read from, so that check is a
304 without a query until `latest` moves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

IMMUTABLE = "public, max-age=31536000, immutable"
"""Cache-Control of what a release id pins: it can never change."""
LATEST = "public, no-cache"
"""Cache-Control of what follows `latest`: store it, but ask again (If-None-Match) before each use."""
PARQUET = "application/vnd.apache.parquet"
MEDIA_TYPES = {
    ".parquet": PARQUET,
    ".gz": "application/gzip",  # an archive's .csv.gz: downloaded as it is stored (its hash)
    ".csv": "text/csv",  # Starlette adds `; charset=utf-8` to every text/ type
    ".json": "application/json",
    ".jsonld": "application/ld+json",
    ".ttl": "text/turtle",
    ".html": "text/html",
    ".geojson": "application/geo+json",
    ".css": "text/css",
}
EXPOSED_HEADERS = (
    "Link",
    "ETag",
    "Retry-After",
    "X-Civicflow-Release",
    "Content-Disposition",
    "Content-Length",
)
"""Headers a script on another site may read (CORS): paging, validators, the release, the limit."""
UNCOMPRESSED = (*DEFAULT_EXCLUDED_CONTENT_TYPES, PARQUET, "application/gzip")
"""Parquet (zstd inside) and a `.csv.gz` are compressed already: gzip over them saves nothing."""


def etag_of(*parts: object) -> str:
    """A strong ETag from what determines an answer's bytes."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return f'"{digest[:32]}"'


def file_etag(path: Path) -> str:
    """A file's ETag from its size and modification time (a released file is never rewritten)."""
    st = path.stat()
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _opaque(tag: str) -> str:
    return tag.strip().removeprefix("W/")


def matches(request: Request, etag: str) -> bool:
    """Whether the request's If-None-Match names this ETag (weak comparison, RFC 9110 13.1.2)."""
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return _opaque(etag) in {_opaque(t) for t in header.split(",")}


def not_modified(headers: dict[str, str]) -> Response:
    """304: the client's copy is current; the headers a 200 would carry that describe it."""
    return Response(status_code=304, headers=headers)


def file_answer(
    request: Request,
    path: Path,
    *,
    etag: str | None = None,
    cache_control: str,
    filename: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A file with its media type, ETag and Cache-Control, or 304 without opening it."""
    tag = etag or file_etag(path)
    described = {"ETag": tag, "Cache-Control": cache_control, **(headers or {})}
    if matches(request, tag):
        return not_modified(described)
    media_type = MEDIA_TYPES.get(path.suffix)
    return FileResponse(path, media_type=media_type, filename=filename, headers=described)


class CompressWhenAccepted:
    """gzip where the client accepts it (Starlette's GZipMiddleware), but never for HEAD.

    HEAD gets the headers of the uncompressed answer: its body is not produced, so the
    compressed length is not known. A compressed answer's ETag becomes weak (`W/`): its bytes
    are not the uncompressed answer's, though it means the same (If-None-Match compares weakly),
    and a 304 answers with the form of the ETag the client sent, so that a cache holding the
    compressed answer updates it.
    """

    def __init__(self, app: ASGIApp, minimum_size: int = 1024) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=minimum_size, exclude_content_types=UNCOMPRESSED)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "HEAD":
            await self.app(scope, receive, send)
            return

        sent = {t.strip() for t in Headers(scope=scope).get("if-none-match", "").split(",")}

        async def weaken(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=message.setdefault("headers", []))
                tag = headers.get("etag")
                if tag and not tag.startswith("W/"):
                    unchanged = message["status"] == 304 and f"W/{tag}" in sent and tag not in sent
                    if "content-encoding" in headers or unchanged:
                        headers["ETag"] = f"W/{tag}"
            await send(message)

        await self.gzip(scope, receive, weaken)
