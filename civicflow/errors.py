"""What a caller should do about a failure: retry it, or stop and fix something.

Bad *input* is never an exception: it is quarantined with a reason (see `civicflow.contract.Reason`).
These classes are for failures of the pipeline itself. DAG tasks turn `TerminalError` into
Airflow's fail-without-retry; anything else is treated as transient and retried by the scheduler.
"""

from __future__ import annotations


class CivicflowError(Exception):
    """Base class; the message says what to do."""


class TransientError(CivicflowError):
    """Worth retrying as it is: a lock held by another process, a broker briefly away."""


class TerminalError(CivicflowError):
    """Retrying cannot help until a person acts: a corrupt file, a wrong setting."""
