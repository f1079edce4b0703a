"""Requests generated from the app's own OpenAPI schema (schemathesis), sent with a valid admin
token: no input, however odd, may make the API answer 500. (503/504 say a dependency is down or
slow, which is an answer, not a crash.) Kept small (a few examples per operation) so that it runs
in well under a minute; the routes reach a real Temporal, in a namespace of their own."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.result import Ok

from adapters.settings import Settings
from api.app import create_app
from tests.conftest import authorise, fresh_namespace

MAX_EXAMPLES = int(os.environ.get("RADFLOW_SCHEMATHESIS_EXAMPLES", "10"))  # more: a deeper run


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Any:
    return create_app(
        Settings(
            data_dir=tmp_path_factory.mktemp("schemathesis"),
            temporal_address=temporal_address,
            temporal_namespace=fresh_namespace(temporal_address),
        )
    )


@pytest.fixture(scope="module")
def admin(app: Any) -> dict[str, str]:
    return authorise(app, "schemathesis", ["admin"])


def test_no_generated_request_makes_the_api_answer_500(app: Any, admin: dict[str, str]) -> None:
    """Every operation in turn, with hypothesis driving schemathesis' strategies directly (its
    pytest plugin does not run on pytest 9's fixture machinery); failures are collected so that
    one run names every operation that crashed."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    crashes: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],  # no shrinking: the first crash is enough
        )
        def check(case: Any) -> None:
            try:
                response = case.call(headers=admin)
            except Exception as error:  # the in-process transport re-raises what the app raised
                crashes.append(f"{case.method} {case.operation.path}: {type(error).__name__}: {error}"[:300])
                return
            if response.status_code == 500:
                crashes.append(f"{case.method} {case.operation.path}: {response.text[:200]}")

        check()
    assert operations > 30
    assert not crashes, "\n".join(sorted(set(crashes)))
