"""Issue 8, item 12 (NaN): ``NaN`` and ``Infinity`` were accepted and came back as ``null``.

Python's json takes them (and ``1e400``, a float infinity); JSON has no such numbers. Every route parses its body
with ``baton.server.json_body``, which refuses them with 422, and the input models refuse a non-finite float that
reached them another way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter
from pydantic import ValidationError
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from baton.schemas.actions import FlowRunCreate, StateSet
from baton.server.app import check_json_routes, create_app
from baton.settings import BatonSettings
from security.input_support import database_of, start_server
from server.harness import TenantContext
from support import ServerProcess

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


def body_routes() -> list[str]:
    """Every ``METHOD path`` of the API that takes a JSON body, from the app's own OpenAPI document."""
    document = create_app(BatonSettings.model_construct(), engine=create_engine("sqlite://")).openapi()
    return sorted(
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    )


ROUTES = body_routes()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def nan_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from start_server(request, tmp_path_factory)


@pytest.fixture(scope="module")
def nan_database(nan_server: ServerProcess) -> Iterator[sessionmaker[Session]]:
    yield from database_of(nan_server)


@pytest.fixture(scope="module")
def tenant(nan_server: ServerProcess, nan_database: sessionmaker[Session]) -> Iterator[TenantContext]:
    context = TenantContext.create(nan_server, nan_database)
    yield context
    context.close()


@pytest.fixture(scope="module")
def ids(tenant: TenantContext) -> dict[str, str]:
    run = tenant.stage("Running")
    task_run = tenant.client(run.token or "").create_task_run(run.id, "greet")
    return {
        "flow_run_id": run.id,
        "agent_id": run.agent_id or "",
        "task_run_id": task_run.id,
        "flow_id": tenant.run(run.id).flow_id,
        "key_id": "unknown",
        "flow_name": "hello",
    }


def test_the_api_has_routes_with_bodies() -> None:
    assert "POST /api/flow_runs" in ROUTES
    assert "POST /api/flow_runs/{flow_run_id}/state" in ROUTES


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize("route", ROUTES)
def test_every_body_with_a_non_finite_number_is_422(
    tenant: TenantContext, ids: dict[str, str], route: str, number: str
) -> None:
    method, path = route.split(" ", 1)
    body = '{"name": "x", "parameters": {"x": [1, ' + number + ']}, "limit": ' + number + "}"

    response = tenant.raw(tenant.admin_key).request(
        method, path.format(**ids), content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422, f"{route}: {response.status_code} {response.text[:300]}"
    assert "finite" in response.json()["detail"] or "Infinity" in response.json()["detail"]


def test_nan_in_parameters_is_never_stored_as_null(tenant: TenantContext) -> None:
    tenant.register_flow("hello", parameters_schema={})
    user = tenant.raw(tenant.key("user"))

    response = user.post(
        "/api/flow_runs",
        content='{"flow_name": "hello", "parameters": {"x": NaN}}',
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 422, response.text
    assert all(run.parameters.get("x", 0) is not None for run in tenant.admin.list_flow_runs())


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_the_input_models_refuse_non_finite_floats_too(value: float) -> None:
    # A second line of defence, for input that does not come through the API's body parser
    with pytest.raises(ValidationError, match="finite"):
        FlowRunCreate(flow_name="hello", parameters={"x": {"y": [value]}})
    with pytest.raises(ValidationError, match="finite"):
        StateSet.model_validate({"name": "Failed", "data": {"x": value}})


def test_finite_numbers_still_go_through(tenant: TenantContext) -> None:
    tenant.register_flow("hello", parameters_schema={})
    parameters: dict[str, Any] = {"x": 1.5, "y": -1e300, "z": 0}

    run = tenant.client(tenant.key("user")).create_flow_run(flow_name="hello", parameters=parameters)

    assert tenant.run(run.id).parameters == parameters


def test_a_router_without_the_strict_json_route_stops_the_server_from_starting() -> None:
    router = APIRouter()

    @router.post("/plain")
    def plain(body: dict[str, Any]) -> dict[str, Any]:
        return body

    with pytest.raises(RuntimeError, match="route_class=JsonRoute"):
        check_json_routes(router)


def test_an_integer_too_long_to_convert_is_422(tenant: TenantContext) -> None:
    body = '{"flow_name": "hello", "parameters": {"x": ' + "1" * 5000 + "}}"

    response = tenant.raw(tenant.admin_key).post(
        "/api/flow_runs", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422, response.text
    assert "cannot be read" in response.json()["detail"]


def test_a_body_that_is_not_utf8_is_400_saying_so(tenant: TenantContext) -> None:
    raw = tenant.raw(tenant.admin_key)
    response = raw.post(
        "/api/flow_runs", content=b'{"flow_name": "\xff"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert "UTF-8" in response.json()["detail"]
