"""Expectation suites derived from the dataset contract.

The contract in `civicflow.contract` is the only place a column's bounds, domain or
requiredness is declared; suites are generated from it so that a change to the contract changes
the gate without anyone editing a second list. Suites describe the staged partition (the frame
the gate sees), whose columns are the published ones plus lineage columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import great_expectations as gx
import great_expectations.expectations as gxe

from civicflow.contract import CONTRACT_VERSION, Column, Dataset

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


def build_suite(dataset: Dataset) -> gx.ExpectationSuite:
    """Build the expectation suite for a dataset's staged partitions from its contract.

    Args:
        dataset: The contract of the dataset whose partitions will be validated.

    Returns:
        A suite that is not attached to any Data Context. Its `observed_at` upper bound is the
        suite parameter named by `OBSERVED_AT_MAX`, so validation must pass
        `suite_parameters(now)`.

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


def suite_parameters(now: datetime, *, skew: timedelta = CLOCK_SKEW) -> dict[str, datetime]:
    """Return the run-time parameters a suite from `build_suite` needs.

    Args:
        now: The gate's notion of the current time. Must be timezone-aware: staged timestamps
            are UTC-aware and pandas refuses to compare them with naive datetimes.
        skew: Tolerated clock drift of the sensors.

    Returns:
        The mapping to pass as `expectation_parameters` when validating.

    Raises:
        ValueError: If `now` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return {OBSERVED_AT_MAX: now + skew}


def _expectations(dataset: Dataset) -> Iterator[gxe.Expectation]:
    """Yield the suite's expectations in a fixed order, so reports list failures stably."""
    columns = dataset.staged_columns
    names = {c.name for c in columns}

    yield gxe.ExpectTableRowCountToBeBetween(min_value=1)
    for column in columns:
        yield gxe.ExpectColumnToExist(column=column.name)
    for column in columns:
        yield from _column_expectations(column)
    if "observed_at" in names:
        yield gxe.ExpectColumnValuesToBeBetween(
            column="observed_at", max_value={"$PARAMETER": OBSERVED_AT_MAX}
        )
    for column_a, column_b in ORDERED_PAIRS:
        if {column_a, column_b} <= names:
            yield gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=column_a,
                column_B=column_b,
                or_equal=True,
                ignore_row_if="either_value_is_missing",
            )
    yield gxe.ExpectCompoundColumnsToBeUnique(
        column_list=list(dataset.natural_key), ignore_row_if="any_value_is_missing"
    )


def _column_expectations(column: Column) -> Iterator[gxe.Expectation]:
    """Yield the single-column rules a contract column declares.

    Range and set rules skip nulls (GX column-map expectations exclude missing values), so an
    optional measurement that is absent is not reported as out of range; absence of a required
    value is reported once, by the not-null rule.
    """
    if column.required:
        yield gxe.ExpectColumnValuesToNotBeNull(column=column.name)
    if column.minimum is not None or column.maximum is not None:
        yield gxe.ExpectColumnValuesToBeBetween(
            column=column.name, min_value=column.minimum, max_value=column.maximum
        )
    if column.enum is not None:
        yield gxe.ExpectColumnValuesToBeInSet(column=column.name, value_set=list(column.enum))
