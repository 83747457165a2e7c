"""Quality gate for staged partitions: Great Expectations suites built from the dataset contract.

Importing this package quietens Great Expectations before anything imports it. GX logs a few
hundred INFO lines while it imports (``Skipping registering function ...``) and would flood an
Airflow task log configured at INFO, so its loggers are raised to WARNING. Analytics are
switched off through ``GX_ANALYTICS_ENABLED``, which upstream GX 1.x reads at import time; the
1.24.1 build in the lock file ships no analytics module at all, so the variable is a guard for
other builds rather than something this one needs.
"""

from __future__ import annotations

import logging
import os

os.environ["GX_ANALYTICS_ENABLED"] = "False"

_GX_LOGGERS = (
    "great_expectations",
    "great_expectations.data_context.types.base",
)


def _quieten_gx() -> None:
    """Raise GX's loggers to WARNING.

    Called again after the import because ``great_expectations.data_context.types.base`` sets
    its own logger to INFO when it is imported, which would undo a level set beforehand.
    """
    for name in _GX_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


_quieten_gx()

from civicflow.expectations.gate import ValidationReport, validate_partition  # noqa: E402
from civicflow.expectations.suites import (  # noqa: E402
    CLOCK_SKEW,
    OBSERVED_AT_MAX,
    build_suite,
    suite_parameters,
)

_quieten_gx()

__all__ = [
    "CLOCK_SKEW",
    "OBSERVED_AT_MAX",
    "ValidationReport",
    "build_suite",
    "suite_parameters",
    "validate_partition",
]
