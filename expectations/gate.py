"""Validate one staged partition against its contract suite and summarise the outcome.

Partitions are always validated as pandas DataFrames, never through GX's SQL path: that path
is unreliable over DuckDB, and a partition is small enough to hold in memory. The summary
(`ValidationReport`) is deliberately smaller than GX's result object: it keeps only what an
operator needs to decide what to do, and nothing that varies between runs (run ids, batch ids,
timings), so that two runs over the same partition produce identical reports that can be
diffed and stored next to the data.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from functools import cache
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResult,
    ExpectationValidationResult,
)
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.datasource.fluent import PandasDatasource

from civicflow.contract import Dataset
from expectations.suites import build_suite, suite_parameters

logger = logging.getLogger(__name__)

DATASOURCE_NAME = "civicflow"
BATCH_DEFINITION_NAME = "partition"
SAMPLE_SIZE = 5
"""Unexpected values kept per failed expectation: enough to recognise a pattern, few enough to
keep a report readable in a log line."""

_RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": SAMPLE_SIZE}
_DETAIL_MAX_CHARS = 300
_lock = threading.RLock()
_batch_definitions: dict[str, BatchDefinition] = {}


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating one partition, stable for a given input.

    Attributes:
        dataset: The dataset (domain) name the partition belongs to.
        now: ISO-8601 time the gate was told it is; decides what counts as the future.
        success: True when every expectation held.
        evaluated: Number of expectations evaluated.
        failed: One entry per failed expectation, in suite order, with keys `expectation`,
            `columns`, `unexpected_count`, `sample` and `detail`; JSON-serialisable.
        gx_version: The Great Expectations version that evaluated the suite.
    """

    dataset: str
    now: str
    success: bool
    evaluated: int
    failed: list[dict[str, Any]]
    gx_version: str

    def to_json(self) -> dict[str, Any]:
        """Return the report as plain JSON-ready data (a deep copy)."""
        return asdict(self)


def validate_partition(df: pd.DataFrame, dataset: Dataset, *, now: datetime) -> ValidationReport:
    """Validate a staged partition DataFrame against the dataset's contract suite.

    Args:
        df: The partition as read from Parquet: tz-aware UTC timestamps, nullable integers and
            NumPy- or Arrow-backed dtypes are all accepted.
        dataset: The contract the partition must satisfy.
        now: Timezone-aware current time; observations later than it plus the allowed clock
            skew fail. Passed in rather than read so that runs are reproducible.

    Returns:
        The report; `success` is False if any expectation failed or could not be evaluated.

    Raises:
        ValueError: If `now` is naive.
    """
    parameters = suite_parameters(now)
    suite = build_suite(dataset)
    started = time.perf_counter()
    with _lock:
        batch = _batch_definition(dataset).get_batch(batch_parameters={"dataframe": df})
        result: ExpectationSuiteValidationResult = batch.validate(
            suite, result_format=_RESULT_FORMAT, expectation_parameters=parameters
        )
    report = ValidationReport(
        dataset=str(dataset.domain),
        now=now.isoformat(),
        success=bool(result.success),
        evaluated=int(result.statistics["evaluated_expectations"]),
        failed=_in_suite_order([_failure(r) for r in result.results if not r.success], suite),
        gx_version=gx.__version__,
    )
    logger.info(
        "validated %s partition: %d rows, %d expectations, %d failed, %.3fs",
        report.dataset,
        len(df),
        report.evaluated,
        len(report.failed),
        time.perf_counter() - started,
    )
    return report


@cache
def _datasource() -> PandasDatasource:
    """Return the process-wide pandas datasource, creating its Data Context on first use.

    One ephemeral context per process: datasource and asset names must be unique within a
    context, and `get_context` also makes the context GX's process-wide current one, so
    creating one per call would churn global state for nothing (creating it takes ~10 ms with
    GX 1.24.1; importing GX takes ~9 s and is the real start-up cost). It keeps everything in
    memory (no temporary Data Docs directory), draws no progress bars into task logs and sends
    no analytics. Called only under `_lock`.
    """
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        analytics_enabled=False,
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    logger.debug("created ephemeral GX context for %s", DATASOURCE_NAME)
    return context.data_sources.add_pandas(name=DATASOURCE_NAME)


def _batch_definition(dataset: Dataset) -> BatchDefinition:
    """Return the whole-DataFrame batch definition of the dataset's asset, adding it once."""
    name = str(dataset.domain)
    with _lock:
        if name not in _batch_definitions:
            asset = _datasource().add_dataframe_asset(name=name)
            _batch_definitions[name] = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION_NAME)
        return _batch_definitions[name]


def _failure(result: ExpectationValidationResult) -> dict[str, Any]:
    """Summarise one failed expectation as JSON-ready data."""
    config = result.expectation_config
    kwargs = config.kwargs if config is not None else {}
    details = result.result or {}
    sample = _plain(details.get("partial_unexpected_list", [])[:SAMPLE_SIZE])
    count = details.get("unexpected_count")
    return {
        "expectation": config.type if config is not None else "unknown",
        "columns": _columns(kwargs),
        "unexpected_count": None if count is None else int(count),
        "sample": sample,
        "detail": _detail(result, details, sample),
    }


def _in_suite_order(failures: list[dict[str, Any]], suite: gx.ExpectationSuite) -> list[dict[str, Any]]:
    """Order failures as the suite declares its expectations.

    GX returns results grouped by column, with expectations that raised moved to the front;
    sorting by suite position makes the report's order part of this module's contract rather
    than an accident of GX internals. The sort is stable, so failures sharing a position keep
    GX's relative order.
    """
    position: dict[tuple[str, tuple[str, ...]], int] = {}
    for index, expectation in enumerate(suite.expectations):
        config = expectation.configuration
        position.setdefault((config.type, tuple(_columns(config.kwargs))), index)
    return sorted(
        failures,
        key=lambda f: position.get((f["expectation"], tuple(f["columns"])), len(position)),
    )


def _columns(kwargs: Mapping[str, Any]) -> list[str]:
    """Return the column(s) an expectation is about, in the order its kwargs name them."""
    if "column" in kwargs:
        return [str(kwargs["column"])]
    if "column_A" in kwargs:
        return [str(kwargs["column_A"]), str(kwargs["column_B"])]
    return [str(c) for c in kwargs.get("column_list", [])]


def _detail(result: ExpectationValidationResult, details: Mapping[str, Any], sample: Any) -> str:
    """Describe a failure in one line an operator can act on."""
    errors = _exception_messages(result.exception_info or {})
    if errors:
        text = f"could not evaluate: {'; '.join(errors)}"
    elif "unexpected_count" in details:
        text = (
            f"{int(details['unexpected_count'])} of {int(details.get('element_count', 0))} "
            f"rows unexpected, e.g. {sample}"
        )
    elif "observed_value" in details:
        text = f"observed {_plain(details['observed_value'])}"
    elif result.expectation_config is not None and result.expectation_config.type == (
        "expect_column_to_exist"
    ):
        text = "column is missing"
    else:
        text = "failed"
    return text[:_DETAIL_MAX_CHARS]


def _exception_messages(info: Mapping[str, Any]) -> list[str]:
    """Return the distinct first lines of the errors GX caught while evaluating.

    GX reports an error in one of two shapes: a flat ``{"raised_exception": True,
    "exception_message": ...}`` when the expectation itself failed, or, when a metric could not
    be computed, a mapping from metric ids to such dicts. Messages are sorted so the summary
    does not depend on the order metrics were resolved in.
    """
    flat = [info] if "raised_exception" in info else list(info.values())
    messages = {
        (str(e.get("exception_message") or "unknown error").strip().splitlines() or ["?"])[0]
        for e in flat
        if isinstance(e, Mapping) and e.get("raised_exception")
    }
    return sorted(messages)


def _plain(value: Any) -> Any:
    """Convert NumPy, pandas and datetime values to JSON types, recursively.

    Timestamps become ISO-8601 strings, NumPy scalars their Python equivalents, missing markers
    (None, NaN, NaT, pd.NA) None, and anything unknown its `str`, so a report can always be
    serialised.
    """
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, np.datetime64):
        return _plain(pd.Timestamp(value))
    if isinstance(value, datetime | date | dt_time | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, timedelta | pd.Timedelta):
        return str(value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    return str(value)
