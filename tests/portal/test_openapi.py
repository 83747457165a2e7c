"""Schemathesis against the app's OpenAPI description, in-process: no input gets a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from portal.app import create_app

pytestmark = pytest.mark.integration
EXAMPLES = 80  # per operation: bounded so the test stays well under a minute


def test_api_answers_every_generated_request_without_a_server_error(released):
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(released))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert sorted(op.path for op in operations) == ["/api/datasets", "/api/datasets/{dataset}/{kind}"]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case):
            case.call_and_validate(
                checks=[not_a_server_error, status_code_conformance, response_schema_conformance]
            )

        check()
