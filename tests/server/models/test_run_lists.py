"""A run list without ``include`` never loads what it leaves out: not the parameters (deferred columns, one query
per run if touched), not the state histories. Big parameters would otherwise cost their full size per page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.schemas.responses import FlowRead
from baton.server.database.connection import transaction
from baton.server.models import flow_runs
from server.harness import TenantContext


@pytest.fixture
def statements(api_database: sessionmaker[Session]) -> Iterator[list[str]]:
    seen: list[str] = []
    engine = api_database.kw["bind"]

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def _page(factory: sessionmaker[Session], tenant_id: str, include: frozenset[str]) -> list[Any]:
    with transaction(factory) as session:
        page = flow_runs.list_flow_runs(session, tenant_id, flow_runs.RunFilter(), limit=50, include=include)
        return flow_runs.to_read(session, page.runs, omit=flow_runs.HEAVY_FIELDS - include)


def test_a_plain_list_loads_neither_parameters_nor_states(
    tenant: TenantContext, user: Client, flow: FlowRead, api_database: sessionmaker[Session], statements: list[str]
) -> None:
    for _ in range(5):
        user.create_flow_run(flow_name=flow.name, parameters={"name": "x" * 1000})
    statements.clear()

    reads = _page(api_database, tenant.id, frozenset())

    assert len(reads) == 5 and all(r.parameters == {} and r.states == [] for r in reads)
    loaded = [s for s in statements if "flow_runs.parameters" in s and "length" not in s.lower()]
    assert loaded == []
    assert not [s for s in statements if "FROM flow_run_states" in s and "sum" not in s.lower()]


def test_a_list_with_include_serves_them(
    tenant: TenantContext, user: Client, flow: FlowRead, api_database: sessionmaker[Session]
) -> None:
    user.create_flow_run(flow_name=flow.name, parameters={"name": "Ada"})

    (read,) = _page(api_database, tenant.id, frozenset({"parameters", "states"}))

    assert read.parameters == {"name": "Ada"} and [s.name for s in read.states] == ["Scheduled"]
