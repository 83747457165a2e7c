"""civicflow.portal.query.checked: any time the calendar holds is a bound in the window or a BadQuery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from civicflow.portal.query import WINDOW_END, WINDOW_START, BadQuery, Query, checked

pytestmark = pytest.mark.unit

OFFSETS = st.one_of(
    st.none(),  # naive: UTC
    st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m))),
)
EDGE_YEARS = st.sampled_from([1, 2, 1969, 1970, 1971, 2016, 2999, 3000, 3001, 9998, 9999])
TIMES = st.builds(
    lambda when, zone: when.replace(tzinfo=zone),
    st.one_of(
        st.datetimes(),
        st.builds(
            lambda y, d: datetime(y, 1, 1) + d, EDGE_YEARS, st.timedeltas(timedelta(0), timedelta(days=364))
        ),
    ),
    OFFSETS,
)


def instant(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@settings(max_examples=400, deadline=None)
@given(start=st.one_of(st.none(), TIMES), end=st.one_of(st.none(), TIMES))
def test_a_time_is_a_bound_in_the_window_or_a_bad_query_never_an_overflow(start, end):
    query = Query("readings", start=start, end=end)
    start_ok = start is None or WINDOW_START <= instant(start) < WINDOW_END
    end_ok = end is None or WINDOW_START < instant(end) <= WINDOW_END
    ordered = start is None or end is None or instant(start) < instant(end)
    try:
        result = checked(query)
    except BadQuery as exc:
        expected = "start" if not start_ok else "end"
        assert exc.parameter == expected
        assert not (start_ok and end_ok and ordered)
        return
    assert start_ok and end_ok and ordered
    for given_time, bound in ((start, result.start), (end, result.end)):
        if given_time is None:
            assert bound is None
        else:  # the same instant, in UTC
            assert bound.utcoffset() == timedelta(0) and bound == instant(given_time)


@pytest.mark.parametrize(
    ("start", "end", "parameter", "message"),
    [
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))), None, "start", "start must be at or after"),
        (
            None,
            datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-12))),
            "end",
            "end must be after",
        ),
        (datetime(2016, 10, 5), datetime(2016, 10, 5), "end", "start must be before end (end is exclusive)"),
    ],
)
def test_bad_bounds_name_their_parameter(start, end, parameter, message):
    with pytest.raises(BadQuery, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        checked(Query("hourly", start=start, end=end))
    assert raised.value.parameter == parameter


def test_the_window_ends_are_bounds():
    result = checked(Query("daily", start=WINDOW_START, end=WINDOW_END))
    assert (result.start, result.end) == (WINDOW_START, WINDOW_END)
