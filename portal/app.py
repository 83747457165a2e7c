"""The portal's web app: catalogue and dataset pages, downloads, the DCAT-AP catalogue and the API.

Read-only: every request resolves `published/latest` once (civicflow.portal.release), or the kept release
its URL names (a download, an API page pinned with `release=`, a partition's Data Docs page), and
reads nothing else, except the kept releases' own files for the changelog, and the warehouse for
Prometheus at `/metrics` (civicflow.portal.metrics) and for a device page's feedback
(civicflow.portal.feedback).
Pages are rendered on the server and work without JavaScript. Around the routes
(docs/publication.md, "The portal's API over HTTP"): CORS for reading from any site, a rate
limit per client address when one is given, and gzip where the client accepts it.
"""

from __future__ import annotations

import importlib.metadata
import re
import time as clocks
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Message, Receive, Scope, Send

from civicflow.contract import DATASETS, Domain
from civicflow.portal.apidoc import operations
from civicflow.portal.changelog import changelog
from civicflow.portal.chart import hourly_chart
from civicflow.portal.devices import add_devices, devices_section
from civicflow.portal.feedback import device_feedback
from civicflow.portal.http import (
    EXPOSED_HEADERS,
    IMMUTABLE,
    LATEST,
    PARQUET,
    CompressWhenAccepted,
    etag_of,
    file_answer,
    matches,
    not_modified,
)
from civicflow.portal.metrics import add_metrics
from civicflow.portal.query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_OFFSET,
    WINDOW_END,
    WINDOW_START,
    BadQuery,
    device_ids,
    run_query,
    to_csv,
    to_parquet,
)
from civicflow.portal.query import Query as RowQuery
from civicflow.portal.ratelimit import RateLimit, RateLimitMiddleware, TokenBuckets
from civicflow.portal.release import (
    KINDS,
    RELEASE_ID,
    DatasetRelease,
    NoRelease,
    ReleaseGone,
    ReleaseView,
    UnknownRelease,
    load_release,
    released_file,
)
from civicflow.publish.catalog import RESOLUTION_S
from civicflow.publish.datapackage import archive_of
from civicflow.publish.release import DATA_DOCS
from civicflow.publish.release import releases as kept_releases
from civicflow.warehouse.layout import Layout

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
CHART_HOURS = 48
CHART_DAYS = CHART_HOURS // 24 + 1  # the last days of a council's hourly files the chart reads
Dataset = StrEnum("Dataset", {d.value: d.value for d in Domain})
Kind = StrEnum("Kind", {k: k for k in KINDS})


class Format(StrEnum):
    JSON = "json"
    CSV = "csv"
    PARQUET = "parquet"


def _resolution(domain: Domain) -> str:
    seconds = RESOLUTION_S[domain]
    return f"{seconds // 60} minutes" if seconds < 3600 else f"{seconds // 3600} hours"


TIME_TEXT = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|z|([+-])(\d{2}):(\d{2}))?)?"
)
TIME_FORMS = (
    "an RFC 3339 date-time such as 2016-10-04T09:00:00Z or 2016-10-04T10:00:00+01:00 "
    "(without an offset, UTC), or a date such as 2016-10-04 (midnight UTC)"
)
WINDOW_FROM, WINDOW_UNTIL = (f"{t:%Y-%m-%dT%H:%M:%SZ}" for t in (WINDOW_START, WINDOW_END))
ANSWERS = f"1/{importlib.metadata.version('civicflow')}"
"""What an API answer's bytes depend on besides its release and its query, in its ETag: bump the
first number when the same query of the same release would answer other bytes."""


def _release_id(value: Any) -> Any:
    """`release` as given, or a 422 saying what a release id looks like."""
    if isinstance(value, str) and not re.fullmatch(RELEASE_ID, value):
        raise PydanticCustomError(
            "release_id",
            "release must be a release id such as 000042-20261123T120000Z: the one the first page "
            "named in X-Civicflow-Release and in its next link",
        )
    return value


def _time(name: str) -> Callable[[Any], Any]:
    """The parser of a time parameter: text as RFC 3339 (or a date), to a tz-aware datetime.

    Only the text forms the API documents are read: a number is not taken as epoch seconds, and a
    time that does not exist (2015-02-29, 24:00, an offset of 24 hours) is refused, saying so.
    Whether the time lies in the window is for the query to decide (civicflow.portal.query.checked).
    """

    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = TIME_TEXT.fullmatch(value)
        if match is None:
            raise PydanticCustomError("time_format", f"{name} must be {TIME_FORMS}")
        year, month, day, hour, minute, second, fraction, offset, sign, oh, om = match.groups()
        try:
            if offset is None or offset in "Zz":
                zone = UTC
            else:
                if int(oh) > 23 or int(om) > 59:
                    raise ValueError(f"offset {offset} is not within -23:59..+23:59")
                span = timedelta(hours=int(oh), minutes=int(om))
                zone = timezone(-span if sign == "-" else span)
            return datetime(
                int(year),
                int(month),
                int(day),
                int(hour or 0),
                int(minute or 0),
                int(second or 0),
                int((fraction or "0")[:6].ljust(6, "0")),
                tzinfo=zone,
            )
        except ValueError as exc:
            reason = str(exc).replace("{", "(").replace("}", ")")
            raise PydanticCustomError(
                "time_value", f"{name} is not a time that exists ({reason}): it must be {TIME_FORMS}"
            ) from exc

    return parse


class GetAndHeadRoute(APIRoute):
    """A route that answers HEAD wherever it answers GET, as Starlette's own routes do.

    A HEAD gets the status and headers the GET would get (Content-Length, ETag, Link) and no
    body; a file download does not even read the file. The OpenAPI description lists GET only:
    HEAD is part of HTTP, not an operation of the API, and a generated client needs no method for it.
    """

    def _as_get(self, scope: Scope) -> Scope:
        if scope["type"] == "http" and scope["method"] == "HEAD" and "GET" in self.methods:
            return {**scope, "method": "GET"}
        return scope

    def matches(self, scope: Scope) -> Any:
        return super().matches(self._as_get(scope))

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in self.methods and self._as_get(scope) is scope:
            allowed = self.methods | ({"HEAD"} if "GET" in self.methods else set())
            raise HTTPException(405, "Method Not Allowed", headers={"Allow": ", ".join(sorted(allowed))})
        if self._as_get(scope) is scope:
            await super().handle(scope, receive, send)
            return

        # The server should send no body for a HEAD; the route makes sure of it whatever serves it.
        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, headers_only)


def create_app(
    layout: Layout, *, rate_limit: RateLimit | None = None, clock: Callable[[], float] = clocks.monotonic
) -> FastAPI:
    """The portal over `layout`'s published zone.

    `rate_limit`: requests per client address (None: no limit); `clock` counts its seconds.
    """
    app = FastAPI(
        title="Civicflow open data",
        description=(
            "Read-only access to the published releases: datasets, readings and aggregates of the "
            "latest release, or of a kept release a paged download pinned. Every GET also answers "
            "HEAD (same status and headers, no body). A parameter that cannot be used as given gets "
            "422, with `detail` naming it and saying what is allowed. Answers carry an ETag "
            "(If-None-Match gives 304) and Cache-Control; they are gzip-compressed when the client "
            "accepts it, readable from any site (CORS), and a client past its rate limit gets 429 "
            "with Retry-After."
        ),
        version="1",
        docs_url=None,  # /docs is the portal's own page: no JavaScript, nothing from a CDN
        redoc_url=None,
    )
    app.router.route_class = GetAndHeadRoute  # every route below answers HEAD as well as GET
    # The last added is the outermost: CORS headers reach every answer, a 429 included.
    app.add_middleware(CompressWhenAccepted)
    if rate_limit is not None:
        app.add_middleware(RateLimitMiddleware, buckets=TokenBuckets(rate_limit, clock))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_credentials=False,
        allow_methods=["GET", "HEAD", "OPTIONS"],
        allow_headers=["If-None-Match", "Range"],
        expose_headers=list(EXPOSED_HEADERS),
        max_age=86400,
    )

    def release(pinned: str | None = None, *, restart: str = "") -> ReleaseView:
        """The latest release, or the kept release `pinned` names (404 or 410 saying what to do)."""
        try:
            return load_release(layout, pinned)
        except NoRelease as exc:
            raise HTTPException(404, "nothing has been published yet") from exc
        except ReleaseGone as exc:
            raise HTTPException(
                410,
                f"release {exc.release_id} is no longer kept (older releases are removed as new ones "
                f"are published): {restart or 'read'} the latest release, {exc.latest}",
            ) from exc
        except UnknownRelease as exc:
            raise HTTPException(
                404, f"there is no release {pinned}: {restart or 'read'} the latest release instead"
            ) from exc

    def page(request: Request, template: str, context: dict) -> Response:
        answer = TEMPLATES.TemplateResponse(request, template, context)
        answer.headers["Cache-Control"] = LATEST
        return answer

    def dataset_of(current: ReleaseView, name: str) -> DatasetRelease:
        found = current.datasets.get(name)
        if found is None:
            raise HTTPException(404, f"dataset {name!r} is not in release {current.id}")
        return found

    # Pages -------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def catalogue(request: Request, q: str = "", council: str = "", domain: str = ""):
        current = release()
        entries = []
        for name, ds in current.datasets.items():
            for c in ds.councils:
                licence, _ = ds.licence(c)
                first, last = ds.coverage(c)
                entry = {
                    "domain": name,
                    "council": c,
                    "title": ds.package.get("title", name),
                    "licence": licence.get("title") or licence["name"],
                    "first": first,
                    "last": last,
                }
                text = " ".join(
                    [
                        name,
                        c,
                        entry["title"],
                        ds.package.get("description", ""),
                        *ds.package.get("keywords", []),
                    ]
                ).lower()
                if (council and c != council) or (domain and name != domain):
                    continue
                if q and not all(word in text for word in q.lower().split()):
                    continue
                entries.append(entry)
        entries.sort(key=lambda e: (e["council"], e["domain"]))
        councils = sorted({c for ds in current.datasets.values() for c in ds.councils})
        context = {
            "release": current,
            "entries": entries,
            "q": q,
            "council": council,
            "domain": domain,
            "councils": councils,
            "domains": sorted(current.datasets),
        }
        return page(request, "catalogue.html", context)

    @app.get("/datasets/{dataset}", response_class=HTMLResponse, include_in_schema=False)
    def dataset_page(
        request: Request,
        dataset: str,
        council: str = "",
        device: str = "",
        measure: str = "",
        month: str = "",
    ):
        current = release()
        ds = dataset_of(current, dataset)
        months = dataset_months(ds)
        if month and not MONTH.fullmatch(month):
            raise HTTPException(422, f"month must be a month such as {months[0]} (YYYY-MM), or left out")
        if month and month not in months:
            raise HTTPException(
                404, f"{dataset} has no published day in {month}: pick one of {', '.join(months)}"
            )
        month = month or months[0]
        others = {k: v for k, v in request.query_params.items() if k != "month"}
        councils = []
        for c in ds.councils:
            licence, attribution = ds.licence(c)
            first, last = ds.coverage(c)
            downloads: dict[tuple[str, date], list] = {}
            for r in ds.of_council(c):
                downloads.setdefault((r.kind, r.day), []).append(r)
            councils.append(
                {
                    "name": c,
                    "licence": licence,
                    "attribution": attribution,
                    "first": first,
                    "last": last,
                    "days": ds.days(c),
                    "month_days": month_days(ds, c, month),
                    "archives": month_archives(ds, c, month),
                    "downloads": downloads,
                    "quality": ds.quality.get("councils", {}).get(c, {}),
                    "held_pages": held_pages(ds, c),
                }
            )
        # A council whose days are all held back publishes nothing yet, but its Quality row says why.
        held_only = sorted(set(ds.quality.get("councils", {})) - set(ds.councils))
        quality_rows = sorted(
            councils
            + [
                {"name": c, "days": [], "quality": ds.quality["councils"][c], "held_pages": held_pages(ds, c)}
                for c in held_only
            ],
            key=lambda row: row["name"],
        )
        context = {
            "release": current,
            "dataset": dataset,
            "quality_rows": quality_rows,
            "package": ds.package,
            "fiware": DATASETS[Domain(dataset)].fiware_types,
            "councils": councils,
            "resolution": _resolution(Domain(dataset)),
            "fields": ds.schema("readings").get("fields", []),
            "chart": _chart(ds, council or ds.councils[0], device, measure),
            "devices": devices_section(ds, dataset),
            "base": f"/releases/{current.id}/{dataset}",
            "month": month,
            "months": [(m, f"?{urlencode({**others, 'month': m})}#downloads") for m in months],
        }
        return page(request, "dataset.html", context)

    @app.get(
        "/datasets/{dataset}/data-docs/{council}/{day}", response_class=HTMLResponse, include_in_schema=False
    )
    def data_docs(request: Request, dataset: str, council: str, day: date):
        current = release()
        ds = dataset_of(current, dataset)
        if day not in ds.days(council):
            raise HTTPException(404, f"{dataset} has no published partition for {council} on {day}")
        page = ds.data_docs.get((council, day))
        if page is None:
            raise HTTPException(404, f"release {current.id} has no Data Docs for {dataset} {council} {day}")
        # The page is a file of the release (the version it publishes): served from there, where
        # its stylesheet is beside it and the address never changes.
        return RedirectResponse(
            f"/releases/{current.id}/{dataset}/{page}",
            status_code=307,
            headers={"Cache-Control": LATEST, "X-Civicflow-Release": current.id},
        )

    @app.get("/releases", response_class=HTMLResponse, include_in_schema=False)
    def releases_page(request: Request):
        current = release()
        context = {"release": current, "releases": changelog(layout, current.id)}
        return page(request, "releases.html", context)

    @app.get("/releases/{release_id}/{dataset}/{path:path}", include_in_schema=False)
    def download(request: Request, release_id: str, dataset: str, path: str):
        """A file of a kept release: immutable, so cached for a year and validated by its sha256."""
        current = release(release_id, restart="download the file from")
        found = released_file(current, dataset, path)
        if found is None:
            raise HTTPException(404, f"{dataset}/{path} is not in release {current.id}")
        listed = current.datasets[dataset].listed_hash(path)  # day files and archives alike
        return file_answer(
            request,
            found,
            etag=f'"{listed}"' if listed is not None else None,
            cache_control=IMMUTABLE,
            # A Data Docs page (and its stylesheet) opens in the browser; data files download.
            filename=None if path.startswith(f"{DATA_DOCS}/") else found.name,
            headers={"X-Civicflow-Release": current.id},
        )

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def api_docs(request: Request):
        """The API's reference, rendered on the server from its OpenAPI description."""
        try:
            current = load_release(layout)
        except NoRelease:
            current = None
        example = {"dataset": "parking", "council": "birmingham", "day": date(2016, 10, 4)}
        if current is not None and current.datasets:
            name, ds = next(iter(current.datasets.items()))
            if ds.councils:
                example = {"dataset": name, "council": ds.councils[0], "day": ds.coverage(ds.councils[0])[0]}
        context = {
            "release": current,
            "api": app.title,
            "operations": operations(app.openapi()),
            "window": (WINDOW_FROM, WINDOW_UNTIL),
            "base": str(request.base_url).rstrip("/"),
            "example": example | {"next_day": example["day"] + timedelta(days=1)},
        }
        return page(request, "api.html", context)

    def catalogue_file(request: Request, form: str) -> Response:
        path = layout.catalog(form)
        if not path.is_file():
            raise HTTPException(
                404, "nothing has been published yet: the catalogue comes with the first release"
            )
        return file_answer(request, path, cache_control=LATEST)

    @app.get("/catalog.jsonld", include_in_schema=False)
    def catalog_jsonld(request: Request):
        return catalogue_file(request, "jsonld")

    @app.get("/catalog.ttl", include_in_schema=False)
    def catalog_ttl(request: Request):
        return catalogue_file(request, "ttl")

    # API ---------------------------------------------------------------------------------------

    def validators(request: Request, current: ReleaseView, pinned: bool, *more: object) -> dict[str, str]:
        """ETag and Cache-Control of an API answer, which only its release and its request
        determine (and `more`, for what else it reads): cached for a year when the URL pins the
        release, checked again on every use when it follows `latest`."""
        query = sorted((k, v) for k, v in request.query_params.multi_items() if k != "release")
        return {
            "ETag": etag_of(ANSWERS, current.id, request.url.path, query, *more),
            "Cache-Control": IMMUTABLE if pinned else LATEST,
            "X-Civicflow-Release": current.id,
        }

    def json_answer(request: Request, headers: dict[str, str], build: Callable[[], Any]) -> Response:
        """304 before `build` runs when the client has the answer already, else the JSON it builds."""
        if matches(request, headers["ETag"]):
            return not_modified(headers)
        body = orjson.dumps(build(), option=orjson.OPT_UTC_Z)
        return Response(body, media_type="application/json", headers=headers)

    @app.get("/api/datasets", summary="Datasets of the latest release")
    def list_datasets(request: Request) -> dict:
        current = release()
        return json_answer(request, validators(request, current, False), lambda: datasets_of(current))

    def datasets_of(current: ReleaseView) -> dict:
        return {
            "release": current.id,
            "published_at": current.published_at,
            "datasets": [
                {
                    "dataset": name,
                    "title": ds.package.get("title"),
                    "councils": [
                        {
                            "council": c,
                            "licence": ds.licence(c)[0]["name"],
                            "first": str(ds.coverage(c)[0]),
                            "last": str(ds.coverage(c)[1]),
                        }
                        for c in ds.councils
                    ],
                    "kinds": [k for k in KINDS if ds.files(k)],
                    "datapackage": f"/releases/{current.id}/{name}/datapackage.json",
                }
                for name, ds in current.datasets.items()
            ],
        }

    # Before the rows below, whose {kind} would take `devices` (portal/devices.py).
    add_devices(
        app,
        release=release,
        dataset_of=dataset_of,
        validators=validators,
        page=page,
        datasets=Dataset,
        feedback=lambda council, domain, device: device_feedback(layout, council, domain, device),
    )

    @app.get(
        "/api/datasets/{dataset}/{kind}",
        summary="Readings or aggregates of a dataset, filtered and paged",
        responses={
            200: {
                "content": {
                    "application/json": {},
                    "text/csv": {"schema": {"type": "string"}},
                    "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
                }
            },
            304: {"description": "Not modified: the ETag in If-None-Match is still the answer's"},
            404: {
                "description": "The dataset is not in the release, or no release has the id `release` names"
            },
            410: {
                "description": "The release `release` names is no longer kept: start again from the "
                "first page, without `release`"
            },
        },
        openapi_extra={
            "responses": {
                "200": {
                    "headers": {
                        "Link": {
                            "description": 'The next page, `<...>; rel="next"` (RFC 8288), pinned to this '
                            "answer's release; absent on the last page",
                            "schema": {"type": "string"},
                        },
                        "X-Civicflow-Release": {
                            "description": "The release the rows were read from",
                            "schema": {"type": "string"},
                        },
                        "ETag": {
                            "description": "Send it back in If-None-Match: 304 if unchanged",
                            "schema": {"type": "string"},
                        },
                        "Cache-Control": {
                            "description": "A year, immutable, if `release` pins the release; else no-cache",
                            "schema": {"type": "string"},
                        },
                    }
                },
                "422": {
                    "description": "A parameter cannot be used as given: `detail` names it "
                    "(`loc`) and says what is allowed (`msg`)"
                },
            }
        },
    )
    def rows(
        request: Request,
        dataset: Annotated[Dataset, PathParam(description="The dataset (domain)")],
        kind: Annotated[
            Kind,
            PathParam(
                description="readings, or an aggregate: hourly and daily per device, daily per council"
            ),
        ],
        council: Annotated[str | None, Query(max_length=64, description="Only this council's rows")] = None,
        device_id: Annotated[
            str | None, Query(max_length=128, description="Only this device's rows (not for council_daily)")
        ] = None,
        start: Annotated[
            datetime | None,
            BeforeValidator(_time("start")),
            Query(
                description="From this time (inclusive): RFC 3339, or a date (midnight UTC); "
                f"at or after {WINDOW_FROM} and before {WINDOW_UNTIL}"
            ),
        ] = None,
        end: Annotated[
            datetime | None,
            BeforeValidator(_time("end")),
            Query(
                description="Until this time (exclusive): RFC 3339, or a date (midnight UTC); "
                f"after start and {WINDOW_FROM}, at or before {WINDOW_UNTIL}"
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page")] = DEFAULT_LIMIT,
        offset: Annotated[
            int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip; follow the next link instead")
        ] = 0,
        format: Annotated[Format, Query(description="json, csv or parquet")] = Format.JSON,
        release_id: Annotated[
            str | None,
            Query(
                alias="release",
                pattern=RELEASE_ID,
                description="Read this kept release instead of the latest: the next link names the "
                "first page's release, so a paged download never spans two releases",
            ),
            BeforeValidator(_release_id),  # after Query, so that the description keeps the pattern
        ] = None,
    ) -> Response:
        """Rows in the natural key's order (council, device, time). A full page carries the next
        page's address in `next` (JSON) and in a `Link: rel="next"` header (every format), pinned
        to the release the page was read from (`release=`); every answer names its release in
        `X-Civicflow-Release`. A time range within the window that holds no published day gives no
        rows. A pinned release that is no longer kept answers 410: start again from the first page."""
        current = release(release_id, restart="start again from the first page, without release=, to read")
        ds = dataset_of(current, dataset.value)
        headers = validators(request, current, release_id is not None)
        if matches(request, headers["ETag"]):
            return not_modified(headers)
        query = RowQuery(kind.value, council, device_id, start, end, limit, offset)
        try:
            table = run_query(ds, query)
        except BadQuery as exc:
            where = ("query",) if exc.parameter is None else ("query", exc.parameter)
            given = None if exc.parameter is None else request.query_params.get(exc.parameter)
            raise RequestValidationError(
                [{"type": "value_error", "loc": where, "msg": str(exc), "input": given}]
            ) from exc
        more = table.num_rows == limit and offset + limit <= MAX_OFFSET
        next_url = None
        if more:
            params = {k: v for k, v in request.query_params.items() if k not in ("offset", "release")}
            pinned = {**params, "release": current.id, "offset": offset + limit}
            next_url = f"{request.url.path}?{urlencode(pinned)}"
        if next_url:
            headers["Link"] = f'<{next_url}>; rel="next"'
        name = f"{dataset.value}-{kind.value}-{offset}"
        if format is Format.CSV:
            headers["Content-Disposition"] = f'attachment; filename="{name}.csv"'
            return Response(to_csv(table), media_type="text/csv", headers=headers)
        if format is Format.PARQUET:
            headers["Content-Disposition"] = f'attachment; filename="{name}.parquet"'
            return Response(to_parquet(table), media_type=PARQUET, headers=headers)
        body = {
            "dataset": dataset.value,
            "kind": kind.value,
            "release": current.id,
            "limit": limit,
            "offset": offset,
            "count": table.num_rows,
            "next": next_url,
            "rows": table.to_pylist(),
        }
        return Response(
            orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json", headers=headers
        )

    @app.get(
        "/api/releases",
        summary="Kept releases, newest first, and what each changed",
        description="For each release still kept: when it was published, its datasets, and the "
        "partitions (a council's day of a dataset) it added, replaced, approved, held back or "
        "removed compared with the release before it. `changes` is null for the oldest kept release "
        "when the one before it is no longer kept.",
    )
    def list_releases(request: Request) -> dict:
        current = release()
        kept = [p.name for p in kept_releases(layout)]
        return json_answer(
            request,
            validators(request, current, False, kept),
            lambda: {"latest": current.id, "releases": changelog(layout, current.id)},
        )

    add_metrics(app, layout)
    return app


MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
ARCHIVE_FORMATS = {"parquet": "Parquet", "csv": "CSV.gz"}


def dataset_months(ds: DatasetRelease) -> list[str]:
    """The months (YYYY-MM) with a published day of any council, newest first."""
    return sorted({f"{d:%Y-%m}" for c in ds.councils for d in ds.days(c)}, reverse=True)


def held_pages(ds: DatasetRelease, council: str) -> list[tuple[str, str]]:
    """(day, Data Docs page) of a council's held-back days whose page the release holds, as
    `quality.json` names them (relative to the dataset's folder)."""
    held = ds.quality.get("councils", {}).get(council, {}).get("held_back", [])
    pages = {(h["date"], h["data_docs"]) for h in held if h.get("data_docs") and ds.has_page(h["data_docs"])}
    return sorted(pages)


def month_days(ds: DatasetRelease, council: str, month: str) -> list[date]:
    """The council's published days in `month` (YYYY-MM), oldest first."""
    return [d for d in ds.days(council) if f"{d:%Y-%m}" == month]


def month_archives(ds: DatasetRelease, council: str, month: str) -> list[dict]:
    """The council's archive of `month`, then of its year: period, archive (month or year) and
    files (Parquet, then CSV.gz: path, label, bytes)."""
    found: dict[str, dict] = {}
    for path, res in ds.archives.items():
        about = archive_of(res) or {}
        if about.get("council") == council and about.get("period") in (month, month[:4]):
            entry = found.setdefault(about["period"], {"period": about["period"], "files": []})
            entry["archive"] = about["archive"]
            entry["files"].append((res["format"], path, res["bytes"]))
    order = list(ARCHIVE_FORMATS)
    return [
        found[p]
        | {
            "files": [
                {"path": path, "label": ARCHIVE_FORMATS.get(fmt, fmt), "bytes": size}
                for fmt, path, size in sorted(
                    found[p]["files"], key=lambda f: order.index(f[0]) if f[0] in order else len(order)
                )
            ]
        }
        for p in (month, month[:4])
        if p in found
    ]


def _chart(ds: DatasetRelease, council: str, device: str, measure: str) -> dict:
    """Hourly means of one measurement for one device of a council: its last CHART_HOURS hours
    within the council's last CHART_DAYS published days."""
    schema = {f["name"]: f for f in ds.schema("hourly").get("fields", [])}
    measures = [name[: -len("_mean")] for name in schema if name.endswith("_mean")]
    chart = {
        "council": council,
        "devices": [],
        "device": device,
        "measures": measures,
        "measure": "",
        "unit": "",
        "points": [],
        "svg": "",
    }
    recent = ds.files("hourly", council)[-CHART_DAYS:]
    if council not in ds.councils or not measures or not recent:
        return chart
    # Only the council's last few days of hourly files: what a year of them holds is not needed
    # to draw two days, and a page of rows would hold only the first devices' hours.
    first = recent[0].day
    chart["devices"] = device_ids(ds, "hourly", council, first)
    chart["device"] = device if device in chart["devices"] else (chart["devices"] or [""])[0]
    start = datetime.combine(first, time(0), tzinfo=UTC)
    rows = run_query(
        ds, RowQuery("hourly", council, chart["device"], start=start, limit=MAX_LIMIT)
    ).to_pylist()
    usable = [m for m in measures if any(r.get(f"{m}_mean") is not None for r in rows)] or measures
    chart["measure"] = measure if measure in measures else usable[0]
    column = f"{chart['measure']}_mean"
    chart["unit"] = schema[column].get("unit") or ""
    points = [
        (r["hour"], r[column]) for r in rows if r["device_id"] == chart["device"] and r[column] is not None
    ]
    chart["points"] = points[-CHART_HOURS:]
    chart["svg"] = hourly_chart(chart["points"], chart["measure"], chart["unit"])
    return chart
