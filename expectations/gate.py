"""Validate one staged partition against its suite and summarise the outcome.

Partitions are always validated as pandas DataFrames, never through GX's SQL path: that path
is unreliable over DuckDB, and a partition is small enough to hold in memory. The summary
(`ValidationReport`) is deliberately smaller than GX's result object: it keeps only what an
operator needs to decide what to do, and nothing that varies between runs (run ids, batch ids,
timings), so that two runs over the same partition produce identical reports that can be
diffed and stored next to the data.

`evaluate_partition` also returns what the release needs besides the report: each row's
`qc_flag` (the warning rules it failed; GX's `unexpected_index_list` names the rows) and the GX
result itself, which `civicflow.expectations.docs` renders as Data Docs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
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
from civicflow.expectations.quality import QualityInputs, add_quality_columns, device_hour_coverage
from civicflow.expectations.suites import (
    DEVICE_RULE_PREFIXES,
    QUALITY_RULES,
    Grain,
    QualityRule,
    Severity,
    build_suite,
    rule_grain,
    suite_parameters,
)
from civicflow.settings import QualitySettings

logger = logging.getLogger(__name__)

DATASOURCE_NAME = "civicflow"
BATCH_DEFINITION_NAME = "partition"
SAMPLE_SIZE = 5
"""Unexpected values kept per failed expectation: enough to recognise a pattern, few enough to
keep a report readable in a log line."""

_RESULT_FORMAT = {"result_format": "COMPLETE", "partial_unexpected_count": SAMPLE_SIZE}
"""COMPLETE, for `unexpected_index_list`: the rows a warning flags. The full lists are dropped from
the result once the flags are taken (`_trim`), so neither reports nor Data Docs carry them."""
_FULL_LISTS = ("unexpected_list", "unexpected_index_list", "unexpected_index_query")
_ROW_FLAGGING_RULES = frozenset(r.name for r in QUALITY_RULES if r.flags_rows)
_PARTITION_RULES = {r.name: r for r in QUALITY_RULES if not r.flags_rows}
_DEVICE_QUALITY_RULES = {r.name: r for r in QUALITY_RULES if r.flags_rows and r.severity == Severity.BLOCKING}
FLAG_SEPARATOR = ";"
_DETAIL_MAX_CHARS = 300
_lock = threading.RLock()
_batch_definitions: dict[str, BatchDefinition] = {}


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating one partition, stable for a given input.

    Attributes:
        dataset: The dataset (domain) name the partition belongs to.
        now: ISO-8601 time the gate was told it is; decides what counts as the future.
        success: True when no blocking expectation failed (warnings do not hold a partition).
        evaluated: Number of expectations evaluated.
        failed: One entry per failed blocking expectation, in suite order, with keys `rule`,
            `severity`, `expectation`, `columns`, `unexpected_count`, `sample` and `detail`;
            JSON-serialisable.
        gx_version: The Great Expectations version that evaluated the suite.
        warnings: Failed warning expectations, shaped like `failed`.
        metrics: What the quality rules measured: rows, quarantined readings and their share,
            volume ratio, freshness, device-hours and their mean coverage, flagged rows.
        thresholds: The thresholds the partition was judged against (its council's).
    """

    dataset: str
    now: str
    success: bool
    evaluated: int
    failed: list[dict[str, Any]]
    gx_version: str
    warnings: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the report as plain JSON-ready data (a deep copy)."""
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    """A partition's report, its rows' `qc_flag` values, what it holds back, and the GX result.

    Attributes:
        report: The partition's report (its failures and metrics only, even when it was judged
            in a batch with others).
        flags: Each row's failed row rules (warnings, and blocking ones an approval lifts),
            aligned with the partition's rows.
        result: The GX result of the run that judged it (for Data Docs); with a batch, the run's.
        held_devices: Device id -> the blocking device-grain rules its rows failed that day.
        partition_failures: The blocking partition-grain rules that failed: the whole partition
            is held back.
    """

    report: ValidationReport
    flags: pd.Series
    result: ExpectationSuiteValidationResult
    held_devices: dict[str, list[str]] = field(default_factory=dict)
    partition_failures: list[str] = field(default_factory=list)

    def flags_for(self, rules: set[str] | frozenset[str]) -> pd.Series:
        """Each row's flags restricted to `rules` (None where none of them failed)."""
        return self.flags.map(lambda f: _join(r for r in _split(f) if r in rules), na_action="ignore")


@dataclass(frozen=True)
class Part:
    """One partition to judge in a batch: its staged rows and what its quality rules need."""

    rows: pd.DataFrame
    inputs: QualityInputs | None = None


def validate_partition(
    df: pd.DataFrame,
    dataset: Dataset,
    *,
    now: datetime,
    thresholds: QualitySettings | None = None,
    inputs: QualityInputs | None = None,
) -> ValidationReport:
    """Validate a staged partition DataFrame and return its report (see `evaluate_partition`)."""
    return evaluate_partition(df, dataset, now=now, thresholds=thresholds, inputs=inputs).report


def evaluate_partition(
    df: pd.DataFrame,
    dataset: Dataset,
    *,
    now: datetime,
    thresholds: QualitySettings | None = None,
    inputs: QualityInputs | None = None,
) -> Evaluation:
    """Validate one staged partition DataFrame against the dataset's suite.

    Args:
        df: The partition as read from Parquet: tz-aware UTC timestamps, nullable integers and
            NumPy- or Arrow-backed dtypes are all accepted.
        dataset: The contract the partition must satisfy.
        now: Timezone-aware current time; observations later than it plus the allowed clock
            skew fail. Passed in rather than read so that runs are reproducible.
        thresholds: The council's quality thresholds; the defaults if None.
        inputs: What the quality rules read from the warehouse (`quality.load_inputs`); without
            them the quarantine-share and volume rules have nothing to judge and pass.

    Returns:
        The evaluation. `report.success` is False if any blocking expectation failed or could
        not be evaluated; `flags` is aligned with `df`'s rows (positionally).

    Raises:
        ValueError: If `now` is naive.
    """
    return evaluate_batch([Part(df, inputs)], dataset, now=now, thresholds=thresholds)[0]


def evaluate_batch(
    parts: list[Part],
    dataset: Dataset,
    *,
    now: datetime,
    thresholds: QualitySettings | None = None,
) -> list[Evaluation]:
    """Validate many partitions of one dataset (with the same thresholds) in one GX run.

    The partitions' frames are put one after the other and validated once; every failure's
    `unexpected_index_list` says which rows failed, so each partition gets its own report,
    flags and holds, exactly as if it had been validated alone. A failure that names no rows
    (a missing column, an expectation that raised) cannot be attributed, so a batch that has
    one is judged again partition by partition. The fixed cost of a GX run (building the
    batch, resolving ~40 metrics) is paid once per batch instead of once per partition.

    Raises:
        ValueError: If `now` is naive.
    """
    thresholds = thresholds or QualitySettings()
    parameters = suite_parameters(now, thresholds)
    if len(parts) > 1 and any(len(p.rows) == 0 for p in parts):
        return [e for p in parts for e in evaluate_batch([p], dataset, now=now, thresholds=thresholds)]
    suite = build_suite(dataset)
    frames = [
        add_quality_columns(
            p.rows,
            dataset,
            now=now,
            inputs=p.inputs,
            volume_min_days=thresholds.volume_min_days,
            coverage=False,
        )
        for p in parts
    ]
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    bounds = np.cumsum([0, *(len(f) for f in frames)])
    # Device-hour coverage of every partition in one query, with each partition's intervals.
    intervals = {
        (str(f["council"].iloc[0]), device): seconds
        for p, f in zip(parts, frames, strict=True)
        if p.inputs is not None and len(f) and "council" in f
        for device, seconds in p.inputs.reporting_interval_s.items()
    }
    coverage = device_hour_coverage(frame, dataset, intervals).to_numpy()
    frame["qc_device_hour_coverage"] = coverage
    for i, f in enumerate(frames):
        f["qc_device_hour_coverage"] = coverage[bounds[i] : bounds[i + 1]]
    started = time.perf_counter()
    with _lock:
        batch = _batch_definition(dataset).get_batch(batch_parameters={"dataframe": frame})
        result: ExpectationSuiteValidationResult = batch.validate(
            suite, result_format=_RESULT_FORMAT, expectation_parameters=parameters
        )
    if len(parts) > 1 and any(not r.success and _row_indices(r) is None for r in result.results):
        logger.info(
            "a failure names no rows: judging %d %s partitions one by one", len(parts), dataset.domain
        )
        return [e for p in parts for e in evaluate_batch([p], dataset, now=now, thresholds=thresholds)]
    indices = {id(r): _row_indices(r) for r in result.results if not r.success}
    evaluations = []
    for i, (part, part_frame) in enumerate(zip(parts, frames, strict=True)):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        evaluations.append(
            _evaluation(
                part, part_frame, lo, hi, result, indices, suite, dataset, now, thresholds, parameters
            )
        )
    _trim(result)
    logger.info(
        "validated %d %s partitions in one run: %d rows, %d expectations, %d held back whole, "
        "%d with devices held, %.3fs",
        len(parts),
        dataset.domain,
        len(frame),
        int(result.statistics["evaluated_expectations"]),
        sum(1 for e in evaluations if e.partition_failures),
        sum(1 for e in evaluations if e.held_devices),
        time.perf_counter() - started,
    )
    return evaluations


def _row_indices(result: ExpectationValidationResult) -> np.ndarray | None:
    """The positions of the rows a failed expectation names; None if it names none."""
    if (result.exception_info or {}).get("raised_exception") or _exception_messages(
        result.exception_info or {}
    ):
        return None
    listed = (result.result or {}).get("unexpected_index_list")
    if listed is None:
        return None
    return np.array([int(i) for i in listed if isinstance(i, int | np.integer)], dtype=np.int64)


def _evaluation(
    part: Part,
    frame: pd.DataFrame,
    lo: int,
    hi: int,
    result: ExpectationSuiteValidationResult,
    indices: Mapping[int, np.ndarray | None],
    suite: gx.ExpectationSuite,
    dataset: Dataset,
    now: datetime,
    thresholds: QualitySettings,
    parameters: Mapping[str, Any],
) -> Evaluation:
    """One partition's share of a batch result: its failures, flags and holds."""
    n = hi - lo
    per_row: list[set[str]] = [set() for _ in range(n)]
    blocking, warnings = [], []
    held: dict[str, set[str]] = {}
    partition_failures: list[str] = []
    devices = frame["device_id"].to_numpy(dtype=object) if "device_id" in frame else np.full(n, None)
    for r in result.results:
        if r.success:
            continue
        found = indices.get(id(r))
        described = _described(r)
        rule = described["rule"]
        if found is None:  # names no rows: only ever for a batch of one, so it is this partition's
            failure = _failure(r)
            rows = np.arange(0)
        else:
            rows = found[(found >= lo) & (found < hi)] - lo
            if len(rows) == 0:
                continue
            failure = _part_failure(described, frame, rows, n)
        if failure["rule"] in _PARTITION_RULES:
            failure["detail"] = _partition_detail(_PARTITION_RULES[failure["rule"]], failure, parameters)
        elif failure["rule"] in _DEVICE_QUALITY_RULES:  # the measured value, not a row count
            rule_ = _DEVICE_QUALITY_RULES[failure["rule"]]
            failure["detail"] = f"{failure['unexpected_count']} rows: " + _partition_detail(
                rule_, failure, parameters
            )
        grain = rule_grain(rule) if found is not None else Grain.PARTITION
        if _flags_rows(rule):
            for row in rows:
                per_row[int(row)].add(rule)
        if described["severity"] == Severity.WARNING.name.lower():
            warnings.append(failure)
            continue
        failure["grain"] = grain.value
        if grain == Grain.DEVICE:
            failing = sorted({str(d) for d in devices[rows] if d is not None})
            failure["devices"] = failing
            for device in failing:
                held.setdefault(device, set()).add(rule)
        else:
            partition_failures.append(rule)
        blocking.append(failure)
    flags = pd.Series([_join(rules) for rules in per_row], dtype="object")
    report = ValidationReport(
        dataset=str(dataset.domain),
        now=now.isoformat(),
        success=not blocking,
        evaluated=int(result.statistics["evaluated_expectations"]),
        failed=_in_suite_order(blocking, suite),
        gx_version=gx.__version__,
        warnings=_in_suite_order(warnings, suite),
        metrics=_metrics(frame, part.inputs, flags),
        thresholds=thresholds.model_dump(),
    )
    return Evaluation(
        report=report,
        flags=flags,
        result=result,
        held_devices={d: sorted(rules) for d, rules in sorted(held.items())},
        partition_failures=sorted(set(partition_failures)),
    )


def _described(result: ExpectationValidationResult) -> dict[str, Any]:
    """What a failed expectation is (rule, severity, type, columns), read once per GX run.

    GX rebuilds an expectation's configuration on every access, which costs more than the rest
    of splitting a batch's result into its partitions.
    """
    cached = getattr(result, "_civicflow_described", None)
    if cached is None:
        config = result.expectation_config
        kwargs = config.kwargs if config is not None else {}
        cached = {
            "rule": _rule_name(result),
            "severity": _severity(result).name.lower(),
            "expectation": config.type if config is not None else "unknown",
            "columns": _columns(kwargs),
            "compound": "column_list" in kwargs,
        }
        object.__setattr__(result, "_civicflow_described", cached)
    return cached


def _part_failure(described: dict[str, Any], frame: pd.DataFrame, rows: np.ndarray, n: int) -> dict:
    """A failed expectation as one partition of a batch sees it: its rows, count and sample."""
    columns = described["columns"]
    present = [c for c in columns if c in frame]
    picked = frame.iloc[rows[:SAMPLE_SIZE]]
    if len(present) == 1:
        sample = _plain(picked[present[0]].tolist())
    elif described["compound"]:  # as GX samples a compound key
        sample = _plain(picked[present].to_dict(orient="records"))
    else:  # a column pair, as GX samples it
        sample = _plain([list(row) for row in picked[present].itertuples(index=False)])
    return {
        "rule": described["rule"],
        "severity": described["severity"],
        "expectation": described["expectation"],
        "columns": list(columns),
        "unexpected_count": len(rows),
        "sample": sample,
        "detail": f"{len(rows)} of {n} rows unexpected, e.g. {sample}"[:_DETAIL_MAX_CHARS],
    }


def _flags_rows(rule: str) -> bool:
    """Whether a failed rule names rows in `qc_flag`: rules about single readings, not partitions."""
    return rule in _ROW_FLAGGING_RULES or rule.startswith(DEVICE_RULE_PREFIXES) or rule == "no_future"


def _partition_detail(rule: QualityRule, failure: dict[str, Any], parameters: Mapping[str, Any]) -> str:
    """One line for a partition-level rule: its measured value against its bounds."""
    value = failure["sample"][0] if failure["sample"] else None
    low = parameters.get(rule.min_parameter) if rule.min_parameter else None
    high = parameters.get(rule.max_parameter) if rule.max_parameter else None
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    bounds = " and ".join(
        b
        for b in (
            f"at least {low:g}" if low is not None else "",
            f"at most {high:g}" if high is not None else "",
        )
        if b
    )
    return f"{rule.column} = {shown}, must be {bounds} ({rule.description})"[:_DETAIL_MAX_CHARS]


def _severity(result: ExpectationValidationResult) -> Severity:
    config = result.expectation_config
    value = getattr(config, "severity", None) if config is not None else None
    return (
        Severity.WARNING
        if str(getattr(value, "value", value)) == Severity.WARNING.value
        else Severity.BLOCKING
    )


def _rule_name(result: ExpectationValidationResult) -> str:
    config = result.expectation_config
    meta = (config.meta or {}) if config is not None else {}
    return str(meta.get("rule") or (config.type if config is not None else "unknown"))


def _split(flag: str | None) -> list[str]:
    return [] if not flag else flag.split(FLAG_SEPARATOR)


def _join(rules) -> str | None:
    ordered = sorted(set(rules))
    return FLAG_SEPARATOR.join(ordered) if ordered else None


def _trim(result: ExpectationSuiteValidationResult) -> None:
    """Drop the full unexpected lists COMPLETE adds: the partial lists keep enough to read."""
    for r in result.results:
        for key in _FULL_LISTS:
            (r.result or {}).pop(key, None)


def _metrics(frame: pd.DataFrame, inputs: QualityInputs | None, flags: pd.Series) -> dict[str, Any]:
    """What the quality rules measured, for the report and the dataset's quality summary."""
    coverage = frame["qc_device_hour_coverage"]
    hours = frame.loc[coverage.notna()].assign(
        hour=lambda f: pd.to_datetime(f["observed_at"], utc=True).dt.floor("h")
    )
    keys = [c for c in ("device_id", "lane_id") if c in frame] + ["hour"]
    per_hour = hours.drop_duplicates(keys)["qc_device_hour_coverage"] if len(hours) else coverage.iloc[:0]

    def first(column: str) -> Any:
        values = frame[column].dropna()
        return _plain(values.iloc[0]) if len(values) else None

    return {
        "rows": len(frame),
        "quarantined": None if inputs is None else inputs.quarantined,
        "quarantine_share": _partition_quarantine_share(len(frame), inputs),
        "trailing_rows": [] if inputs is None else list(inputs.trailing_rows),
        "volume_ratio": first("qc_volume_ratio"),
        "freshness_minutes": first("qc_freshness_minutes"),
        "device_hours": len(per_hour),
        "completeness_mean": _plain(float(per_hour.mean())) if len(per_hour) else None,
        "flagged_rows": int(flags.notna().sum()),
    }


def _partition_quarantine_share(rows: int, inputs: QualityInputs | None) -> float | None:
    """The day's quarantined readings / (those + its staged rows), readings without a device included.

    The rule judges each device's share (`qc_quarantine_share`); the report keeps the partition's,
    which does not depend on which device's row comes first.
    """
    if inputs is None or inputs.quarantined is None or rows + inputs.quarantined == 0:
        return None
    return inputs.quarantined / (inputs.quarantined + rows)


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
        "rule": _rule_name(result),
        "severity": _severity(result).name.lower(),
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
    position = _positions(suite)
    return sorted(
        failures,
        key=lambda f: position.get((f["expectation"], tuple(f["columns"])), len(position)),
    )


def _positions(suite: gx.ExpectationSuite) -> dict[tuple[str, tuple[str, ...]], int]:
    """Each expectation's place in the suite, by type and columns (built once per suite object:
    GX rebuilds an expectation's configuration on every access)."""
    key = id(suite)
    cached = _POSITIONS.get(key)
    if cached is None or cached[0] is not suite:
        position: dict[tuple[str, tuple[str, ...]], int] = {}
        for index, expectation in enumerate(suite.expectations):
            config = expectation.configuration
            position.setdefault((config.type, tuple(_columns(config.kwargs))), index)
        _POSITIONS.clear()
        _POSITIONS[key] = cached = (suite, position)
    return cached[1]


_POSITIONS: dict[int, tuple[gx.ExpectationSuite, dict[tuple[str, tuple[str, ...]], int]]] = {}


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
