"""Schemathesis over the whole OpenAPI description, against a real uvicorn serving a real release.

Times are drawn from the calendar's edges (year 1, the day before the epoch, the window's ends,
year 9999, leap days, offsets from -23:59 to +23:59), alone, as dates or in inverted ranges, and
limits and offsets from far past their bounds: whatever a client sends, the answer is never a 5xx,
and a refusal is a documented 4xx.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import unregister_string_format
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.integration
EXAMPLES = 60  # per operation and mode: bounded so the whole test stays within about 20 s
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]

DAYS = st.sampled_from(
    [
        "0001-01-01",
        "1969-12-31",
        "1970-01-01",
        "1970-01-02",
        "2000-02-29",  # a leap day of a century divisible by 400
        "2016-02-29",
        "2016-10-04",  # the release's days
        "2016-10-05",
        "2100-02-28",  # 2100 is not a leap year
        "2999-12-31",
        "3000-01-01",
        "9999-12-31",
    ]
)
CLOCKS = st.sampled_from(["00:00:00", "00:00:00.000001", "11:30:00", "23:59:59", "23:59:59.999999999"])
OFFSETS = st.sampled_from(["Z", "+00:00", "+01:00", "+14:00", "-12:00", "+23:59", "-23:59", "z"])
DATE_TIMES = st.builds("{}T{}{}".format, DAYS, CLOCKS, OFFSETS)
"""RFC 3339 date-times at the calendar's edges: what schemathesis draws for `format: date-time`."""
TIMES = st.one_of(
    DATE_TIMES,
    DAYS,  # a date alone (midnight UTC)
    st.builds("{}T{}".format, DAYS, CLOCKS),  # no offset (UTC)
    st.sampled_from(["2015-02-29", "2016-10-04T24:00:00Z", "2016-10-04T10:00:00+24:00", "1700000000", "-1"]),
)
LIMITS = st.sampled_from([1, 2, 10_000, 0, 10_001, -1, 2**63, -(2**63), 10**30])
OFFSETS = st.sampled_from([0, 1, 19, 20, 1_000_000, -1, 1_000_001, 2**63, -(2**63), 10**30])
RELEASES = st.sampled_from(
    ["000001-20261123T120000Z", "000002-20261124T120000Z", "000001-20000101T000000Z", "1", "latest"]
)
"""The release the fixture cut (conftest.NOW), one not cut yet, one never cut, and no release id."""
RANGES = st.fixed_dictionaries({}, optional={"start": TIMES, "end": TIMES, "release": RELEASES})
EDGES = st.fixed_dictionaries(
    {}, optional={"start": TIMES, "end": TIMES, "limit": LIMITS, "offset": OFFSETS, "release": RELEASES}
)
"""Query parameters laid over a generated case, to reach what the schema alone would not: dates
without a time, ranges of any order, integers far past their bounds, and pinned releases."""


@pytest.fixture
def calendar_edges() -> Iterator[None]:
    schemathesis.openapi.format("date-time", DATE_TIMES)
    try:
        yield
    finally:
        unregister_string_format("date-time")  # back to schemathesis's own date-times


def test_no_generated_request_gets_a_server_error(portal_url, calendar_edges):
    schema = schemathesis.openapi.from_url(f"{portal_url}/openapi.json")
    operations = {result.ok().path: result.ok() for result in schema.get_all_operations()}
    assert sorted(operations) == [
        "/api/datasets",
        "/api/datasets/{dataset}/devices",
        "/api/datasets/{dataset}/{kind}",
        "/api/releases",
    ]
    seen: dict[int, int] = {}
    with requests.Session() as session:

        def run(
            operation, mode: GenerationMode, dataset: st.SearchStrategy, edges: st.SearchStrategy
        ) -> None:
            @given(case=operation.as_strategy(generation_mode=mode), dataset=dataset, extra=edges)
            @settings(
                max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
            )
            def check(case, dataset, extra):
                if dataset is not None:  # one the release holds: not every case ends in a 404
                    case.path_parameters = {**case.path_parameters, "dataset": dataset}
                case.query = {**(case.query or {}), **extra}
                response = case.call_and_validate(session=session, checks=CHECKS)
                seen[response.status_code] = seen.get(response.status_code, 0) + 1

            check()

        run(operations["/api/datasets"], GenerationMode.POSITIVE, st.none(), st.just({}))
        run(operations["/api/releases"], GenerationMode.POSITIVE, st.none(), st.just({}))
        rows = operations["/api/datasets/{dataset}/{kind}"]
        released = st.sampled_from(["parking", "air_quality"])
        run(operations["/api/datasets/{dataset}/devices"], GenerationMode.POSITIVE, released, st.just({}))
        run(rows, GenerationMode.POSITIVE, released, RANGES)
        run(rows, GenerationMode.NEGATIVE, st.one_of(st.none(), released), EDGES)
    # The edges reached both sides: rows answered, and parameters refused with a 422.
    assert seen.get(200, 0) > 0 and seen.get(422, 0) > 0, seen
    assert set(seen) <= {200, 404, 410, 422}, seen
