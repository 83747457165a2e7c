"""The one exception the decoder's parts raise for input that breaks the contract.

It never leaves `civicflow.transforms.decode.decode_message`: there it becomes a `Rejection` with the same
reason and detail, and the input is quarantined.
"""

from __future__ import annotations

from civicflow.contract import Reason


class Invalid(Exception):
    """Input that breaks the contract, with the machine-readable reason and what to fix."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
