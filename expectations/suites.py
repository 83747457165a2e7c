"""Expectation suites derived from the dataset contract, plus the partition's quality rules.

The contract in `civicflow.contract` is the only place a column's bounds, domain or
requiredness is declared; suites are generated from it so that a change to the contract changes
the gate without anyone editing a second list. Suites describe the staged partition (the frame
the gate sees), whose columns are the reading and lineage columns, plus the `qc_*` columns
`civicflow.expectations.quality` computes beside them (device-hour completeness, quarantine share, volume,
freshness) so that every rule, contract or quality, is a Great Expectations expectation.

Every expectation names its rule (`meta["rule"]`) and is either blocking (GX severity
`critical`: the partition is held back) or a warning (`warning`: the partition is published and
the rows it names carry the rule in `qc_flag`). Thresholds are suite parameters
(`suite_parameters`), so one suite serves every council whatever its `[quality]` overrides.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import great_expectations as gx
import great_expectations.expectations as gxe

from civicflow.contract import CONTRACT_VERSION, Column, Dataset
from civicflow.settings import QualitySettings

CLOCK_SKEW = timedelta(minutes=5)
"""How far ahead of `now` an observation may be stamped before it counts as from the future.

Sensor gateways keep their own clocks; a few minutes of drift is normal and not a data error.
"""

OBSERVED_AT_MAX = "observed_at_max"
"""Name of the suite parameter holding the latest acceptable `observed_at`.

The bound depends on when the gate runs, so it is supplied at validation time (see
`suite_parameters`) and the suite itself stays a pure function of the contract.
"""

ORDERED_PAIRS: tuple[tuple[str, str], ...] = (("total_spots", "occupied_spots"),)
"""Column pairs (a, b) where a >= b must hold on every row that has both values.

Keyed on column names rather than on a domain, so any dataset carrying both columns gets the
rule.
"""


class Grain(StrEnum):
    """What a failed blocking rule holds back (docs/publication.md, "The grain of every rule").

    DEVICE: the readings of the devices whose rows failed it, in that partition; the partition's
    other devices are published. PARTITION: the whole partition (council and day).
    """

    DEVICE = "device"
    PARTITION = "partition"


DEVICE_RULE_PREFIXES = ("not_null:", "range:", "enum:", "order:")
"""Contract rules about single readings: a failure holds back the failing rows' devices that day."""


def rule_grain(rule: str) -> Grain:
    """The grain of a rule by its name: device for rules about a device's readings, else partition."""
    if rule.startswith(DEVICE_RULE_PREFIXES) or rule == "no_future":
        return Grain.DEVICE
    found = next((r for r in QUALITY_RULES if r.name == rule), None)
    return found.grain if found is not None else Grain.PARTITION


class Severity(StrEnum):
    """What a failed rule does to its partition; the values are GX's `FailureSeverity`."""

    BLOCKING = "critical"
    WARNING = "warning"


@dataclass(frozen=True)
class QualityRule:
    """A rule computed beside the contract: its `qc_*` column, threshold parameters and effect.

    `flags_rows`: a failure names the rows it is about (they carry the rule in `qc_flag`); a
    partition-level rule (one value for the whole partition) flags no row and is recorded on the
    release only.
    """

    name: str
    column: str
    severity: Severity
    min_parameter: str | None
    max_parameter: str | None
    flags_rows: bool
    description: str
    grain: Grain = Grain.PARTITION


QUALITY_RULES: tuple[QualityRule, ...] = (
    QualityRule(
        "completeness",
        "qc_device_hour_coverage",
        Severity.WARNING,
        "completeness_min",
        None,
        True,
        "readings of the row's device in its UTC hour / readings its reporting interval expects",
        Grain.DEVICE,
    ),
    QualityRule(
        "quarantine_share",
        "qc_quarantine_share",
        Severity.BLOCKING,
        None,
        "quarantine_share_max",
        True,
        "quarantined readings of the row's device that day / (quarantined + staged readings)",
        Grain.DEVICE,
    ),
    QualityRule(
        "volume",
        "qc_volume_ratio",
        Severity.BLOCKING,
        "volume_ratio_min",
        "volume_ratio_max",
        False,
        "staged rows / median staged rows of the trailing 7 days (null: too little history)",
    ),
    QualityRule(
        "freshness",
        "qc_freshness_minutes",
        Severity.WARNING,
        None,
        "freshness_max_minutes",
        False,
        "minutes from today's newest observed_at to the gate's now (null: not today's partition)",
    ),
)
"""The quality rules, in suite order. Their thresholds are `QualitySettings` fields."""

QUALITY_COLUMN_NAMES: tuple[str, ...] = tuple(r.column for r in QUALITY_RULES)


def build_suite(dataset: Dataset) -> gx.ExpectationSuite:
    """Build the expectation suite for a dataset's staged partitions.

    Args:
        dataset: The contract of the dataset whose partitions will be validated.

    Returns:
        A suite that is not attached to any Data Context. Its bounds that depend on the run (the
        latest acceptable `observed_at`, the quality thresholds) are suite parameters, so
        validation must pass `suite_parameters(now, thresholds)`.

    Raises:
        ValueError: If GX dropped an expectation while building the suite. `ExpectationSuite`
            logs and discards invalid configurations instead of raising, which would silently
            weaken the gate.
    """
    expectations = list(_expectations(dataset))
    suite = gx.ExpectationSuite(
        name=f"{dataset.domain}.staged.contract-v{CONTRACT_VERSION}",
        expectations=expectations,
        meta={"dataset": str(dataset.domain), "contract_version": CONTRACT_VERSION},
    )
    if len(suite.expectations) != len(expectations):
        raise ValueError(
            f"GX kept {len(suite.expectations)} of {len(expectations)} expectations for {dataset.domain}"
        )
    return suite


def suite_parameters(
    now: datetime, thresholds: QualitySettings | None = None, *, skew: timedelta = CLOCK_SKEW
) -> dict[str, datetime | float]:
    """Return the run-time parameters a suite from `build_suite` needs.

    Args:
        now: The gate's notion of the current time. Must be timezone-aware: staged timestamps
            are UTC-aware and pandas refuses to compare them with naive datetimes.
        thresholds: The partition's council's quality thresholds; the defaults if None.
        skew: Tolerated clock drift of the sensors.

    Returns:
        The mapping to pass as `expectation_parameters` when validating.

    Raises:
        ValueError: If `now` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    limits = (thresholds or QualitySettings()).model_dump()
    names = {p for r in QUALITY_RULES for p in (r.min_parameter, r.max_parameter) if p is not None}
    return {OBSERVED_AT_MAX: now + skew, **{name: float(limits[name]) for name in sorted(names)}}


def _rule(expectation: type[gxe.Expectation], rule: str, severity: Severity = Severity.BLOCKING, **kwargs):
    return expectation(meta={"rule": rule}, severity=severity.value, **kwargs)


def _expectations(dataset: Dataset) -> Iterator[gxe.Expectation]:
    """Yield the suite's expectations in a fixed order, so reports list failures stably."""
    columns = dataset.staged_columns
    names = {c.name for c in columns}

    yield _rule(gxe.ExpectTableRowCountToBeBetween, "row_count", min_value=1)
    for column in columns:
        yield _rule(gxe.ExpectColumnToExist, f"column_exists:{column.name}", column=column.name)
    for column in columns:
        yield from _column_expectations(column)
    if "observed_at" in names:
        yield _rule(
            gxe.ExpectColumnValuesToBeBetween,
            "no_future",
            column="observed_at",
            max_value={"$PARAMETER": OBSERVED_AT_MAX},
        )
    for column_a, column_b in ORDERED_PAIRS:
        if {column_a, column_b} <= names:
            yield _rule(
                gxe.ExpectColumnPairValuesAToBeGreaterThanB,
                f"order:{column_b}<={column_a}",
                column_A=column_a,
                column_B=column_b,
                or_equal=True,
                ignore_row_if="either_value_is_missing",
            )
    yield _rule(
        gxe.ExpectCompoundColumnsToBeUnique,
        "unique_key",
        column_list=list(dataset.natural_key),
        ignore_row_if="any_value_is_missing",
    )
    for rule in QUALITY_RULES:
        bounds = {}
        if rule.min_parameter:
            bounds["min_value"] = {"$PARAMETER": rule.min_parameter}
        if rule.max_parameter:
            bounds["max_value"] = {"$PARAMETER": rule.max_parameter}
        # Nulls are skipped: a rule that does not apply to a partition (no history, not today)
        # leaves its column null and passes.
        yield _rule(gxe.ExpectColumnValuesToBeBetween, rule.name, rule.severity, column=rule.column, **bounds)


def _column_expectations(column: Column) -> Iterator[gxe.Expectation]:
    """Yield the single-column rules a contract column declares.

    Range and set rules skip nulls (GX column-map expectations exclude missing values), so an
    optional measurement that is absent is not reported as out of range; absence of a required
    value is reported once, by the not-null rule.
    """
    if column.required:
        yield _rule(gxe.ExpectColumnValuesToNotBeNull, f"not_null:{column.name}", column=column.name)
    if column.minimum is not None or column.maximum is not None:
        yield _rule(
            gxe.ExpectColumnValuesToBeBetween,
            f"range:{column.name}",
            column=column.name,
            min_value=column.minimum,
            max_value=column.maximum,
        )
    if column.enum is not None:
        yield _rule(
            gxe.ExpectColumnValuesToBeInSet,
            f"enum:{column.name}",
            column=column.name,
            value_set=list(column.enum),
        )
