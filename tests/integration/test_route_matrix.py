"""Every route of the OpenAPI schema, three times: anonymous (401), signed in with a role the
route does not name (403), and with each role it names (neither 401 nor 403). The schema is the
app's own, so a route added later is checked without touching this file; the pages outside the
schema (/ui/...) are checked from the app's routes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.settings import Settings
from adapters.users import ROLES
from api.app import create_app
from api.authz import PUBLIC_PATHS, declared_roles, flat_routes
from tests.conftest import authorise

LOOPBACK = frozenset({"loopback"})


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, temporal_address: str) -> Any:
    """The whole app, with a real Temporal (routes that act reach it; none hangs waiting)."""
    return create_app(Settings(data_dir=tmp_path_factory.mktemp("matrix"), temporal_address=temporal_address))


@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def operations(app: Any) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method.upper(), spec)
        for path, item in sorted(app.openapi()["paths"].items())
        for method, spec in sorted(item.items())
        if method in ("get", "post", "put", "patch", "delete")
    ]


def rules(app: Any) -> dict[tuple[str, str], frozenset[str] | None]:
    found: dict[tuple[str, str], frozenset[str] | None] = {}
    for route in flat_routes(app.routes):
        for method in getattr(route, "methods", None) or ():
            if hasattr(route, "dependant"):
                found[(route.path, method)] = declared_roles(route)
    return found


def concrete(path: str, spec: dict[str, Any]) -> str:
    """The path with each parameter filled in with a value of its type (an unknown one)."""
    values: dict[str, str] = {}
    for parameter in spec.get("parameters", []):
        if parameter.get("in") != "path":
            continue
        schema = parameter.get("schema", {})
        if "enum" in schema:
            values[parameter["name"]] = str(schema["enum"][0])
        elif schema.get("type") == "integer":
            values[parameter["name"]] = "987654"
        else:
            values[parameter["name"]] = "MATRIX1"
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "MATRIX1"), path)


def call(client: TestClient, method: str, url: str, headers: dict[str, str] | None = None) -> Any:
    body: dict[str, Any] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return client.request(method, url, headers=headers or {}, **body)


def test_every_route_declares_its_roles_or_is_a_listed_public_one(app: Any) -> None:
    table = rules(app)
    for path, method, _ in operations(app):
        assert path in PUBLIC_PATHS or table[(path, method)], f"{method} {path} declares no roles"


def test_every_route_refuses_an_anonymous_caller(app: Any, client: TestClient) -> None:
    table = rules(app)
    wrong = []
    for path, method, spec in operations(app):
        if path in PUBLIC_PATHS or table[(path, method)] == LOOPBACK:
            continue
        answer = call(client, method, concrete(path, spec))
        if answer.status_code != 401 or answer.headers.get("www-authenticate") != "Bearer":
            wrong.append(f"{method} {path}: {answer.status_code}")
    assert not wrong, wrong


def test_every_route_refuses_a_role_it_does_not_name(app: Any, client: TestClient) -> None:
    table = rules(app)
    wrong, checked = [], 0
    for path, method, spec in operations(app):
        roles = table.get((path, method))
        if path in PUBLIC_PATHS or roles is None or roles == LOOPBACK:
            continue
        for role in sorted(set(ROLES) - roles - {"admin"}):
            checked += 1
            answer = call(client, method, concrete(path, spec), authorise(app, f"matrix.{role}", [role]))
            if answer.status_code != 403:
                wrong.append(f"{method} {path} as {role}: {answer.status_code}")
    assert checked > 100 and not wrong, wrong


def test_every_route_accepts_each_role_it_names_and_admin(app: Any, client: TestClient) -> None:
    table = rules(app)
    wrong = []
    for path, method, spec in operations(app):
        roles = table.get((path, method))
        if path in PUBLIC_PATHS or roles is None or roles == LOOPBACK:
            continue
        for role in sorted(roles | {"admin"}):
            answer = call(client, method, concrete(path, spec), authorise(app, f"matrix.{role}", [role]))
            if answer.status_code in (401, 403):
                wrong.append(f"{method} {path} as {role}: {answer.status_code} {answer.text[:120]}")
    assert not wrong, wrong


def test_loopback_routes_answer_on_loopback_only(app: Any, client: TestClient) -> None:
    table = rules(app)
    loopback = [(p, m) for (p, m), roles in table.items() if roles == LOOPBACK and m == "GET"]
    assert ("/healthz", "GET") in loopback
    with TestClient(app, client=("198.51.100.4", 50000), raise_server_exceptions=False) as remote:
        for path, method in loopback:
            assert remote.request(method, path).status_code == 403, path
            assert client.request(method, path).status_code not in (401, 403), path


def test_pages_outside_the_schema_send_an_anonymous_browser_to_sign_in(app: Any, client: TestClient) -> None:
    table = rules(app)
    schema_paths = {path for path, _, _ in operations(app)}
    pages = sorted(
        path
        for (path, method), roles in table.items()
        if method == "GET" and path not in schema_paths and path not in PUBLIC_PATHS and roles != LOOPBACK
    )
    assert "/ui/reading" in pages and "/ui/exams/{accession}" in pages
    for path in pages:
        answer = client.get(re.sub(r"\{\w+\}", "MATRIX1", path), follow_redirects=False)
        if path.startswith("/ui"):
            assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login?next="), (
                path
            )
        else:
            assert answer.status_code == 401, path
        signed_in = client.get(
            re.sub(r"\{\w+\}", "MATRIX1", path), headers=authorise(app, "matrix.admin", ["admin"])
        )
        assert signed_in.status_code not in (401, 403), path


def test_public_routes_are_only_the_listed_ones(app: Any) -> None:
    undeclared = {
        route.path
        for route in flat_routes(app.routes)
        if hasattr(route, "dependant") and declared_roles(route) is None
    }
    assert undeclared <= PUBLIC_PATHS
    assert {"/api/auth/token", "/ui/login", "/openapi.json"} <= PUBLIC_PATHS
