"""The runs list by flow name and by label walks migration 0013's indexes (issue 12), with the answers of before:
the same runs in the same order, page by page, by cursor and by offset, on SQLite and PostgreSQL. The reference is
the query the list ran before 0013 (a join to ``flows``, an EXISTS on ``flow_run_labels``), which reads none of the
copies. On SQLite (never analyzed), the plans walk those indexes and never sort the whole matching set."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, update
from sqlalchemy.orm import Session, sessionmaker

from baton.schemas.actions import FlowCreate, FlowRunCreate
from baton.server.database.connection import create_database_engine, create_session_factory, transaction
from baton.server.database.orm import Flow, FlowRun, FlowRunLabel
from baton.server.models import flow_runs, flows, tenants
from baton.server.models.flow_runs import RunFilter
from server.harness import migrated_database_url

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
RUNS = 30


class Clock:
    """Three runs per second: creation times tie, so the id decides their order and cursors stop inside a tie."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> datetime:
        self.calls += 1
        return T0 + timedelta(seconds=(self.calls - 1) // 3)


def _seed(factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch, name: str) -> str:
    """A tenant with flow ``etl`` (2 versions, label ``bench``) and ``rare`` (labels ``bench``, ``gpu``), and
    runs of them through ``create_flow_run``: every fourth one labelled ``gpu`` only; some Cancelled, some
    Running. Its id."""
    monkeypatch.setattr(flow_runs, "utcnow", Clock())
    with transaction(factory) as session:
        tenant_id = tenants.create_tenant(session, name).id
        for source, labels, flow_name in (("v1", ["bench"], "etl"), ("v2", ["bench"], "etl"), ("r", None, "rare")):
            payload = FlowCreate(name=flow_name, entrypoint="etl", source=source, labels=labels or ["bench", "gpu"])
            flows.register_flow(session, tenant_id, payload)
    for index in range(RUNS):
        flow_name, version = ("rare", None) if index % 7 == 3 else ("etl", 1 if index < 10 else None)
        labels = ["gpu"] if index % 4 == 0 else None
        with transaction(factory) as session:
            payload = FlowRunCreate(flow_name=flow_name, flow_version=version, labels=labels)
            run = flow_runs.create_flow_run(session, tenant_id, payload)
            state = {0: "Cancelled", 1: "Running"}.get(index % 5)
            if state is not None:
                session.execute(update(FlowRun).where(FlowRun.id == run.id).values(state=state))
    return tenant_id


def _seeded_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, database: str, *names: str
) -> tuple[Engine, sessionmaker[Session], list[str]]:
    engine = create_database_engine(migrated_database_url(request, tmp_path_factory.mktemp("walks"), database), 6)
    factory = create_session_factory(engine)
    with pytest.MonkeyPatch.context() as monkeypatch:
        tenant_ids = [_seed(factory, monkeypatch, name) for name in names]
    return engine, factory, tenant_ids


# Seeded once per module (and database): every test here only reads.
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[sessionmaker[Session], str]]:
    # "neighbour": the same names, labels and times: none of its runs may show
    engine, factory, (tenant_id, _) = _seeded_database(request, tmp_path_factory, request.param, "listed", "neighbour")
    yield factory, tenant_id
    engine.dispose()


@pytest.fixture
def factory(seeded: tuple[sessionmaker[Session], str]) -> sessionmaker[Session]:
    return seeded[0]


@pytest.fixture
def tenant_id(seeded: tuple[sessionmaker[Session], str]) -> str:
    return seeded[1]


def _as_before(session: Session, tenant_id: str, where: RunFilter) -> list[str]:
    """Every matching run's id, newest first, by the query the list ran before migration 0013."""
    stmt = select(FlowRun.id).join(Flow, Flow.id == FlowRun.flow_id).where(FlowRun.tenant_id == tenant_id)
    if where.state:
        stmt = stmt.where(FlowRun.state == where.state)
    if where.label is not None:
        labelled = select(FlowRunLabel.flow_run_id).where(
            FlowRunLabel.flow_run_id == FlowRun.id, FlowRunLabel.label == where.label
        )
        stmt = stmt.where(labelled.exists())
    if where.created_after is not None:
        stmt = stmt.where(FlowRun.created >= where.created_after)
    if where.flow_name:
        stmt = stmt.where(Flow.name == where.flow_name)
    return list(session.scalars(stmt.order_by(FlowRun.created.desc(), FlowRun.id)))


def _by_cursor(session: Session, tenant_id: str, where: RunFilter, limit: int) -> Iterator[list[str]]:
    cursor: str | None = None
    while True:
        page = flow_runs.list_flow_runs(session, tenant_id, where, limit=limit, cursor=cursor)
        yield [run.id for run in page.runs]
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


FILTERS = {
    "busy flow": RunFilter(flow_name="etl"),
    "rare flow": RunFilter(flow_name="rare"),
    "label on some runs": RunFilter(label="gpu"),
    "label on most runs": RunFilter(label="bench"),
    "label on none": RunFilter(label="nobody"),
    "flow and label": RunFilter(flow_name="etl", label="gpu"),
    "label and a final state": RunFilter(label="gpu", state="Cancelled"),
    "label and a state in flight": RunFilter(label="bench", state="Running"),
    "flow and a final state": RunFilter(flow_name="etl", state="Cancelled"),
    "flow and a state in flight": RunFilter(flow_name="etl", state="Running"),
    "flow, label and a state in flight": RunFilter(flow_name="etl", label="gpu", state="Running"),
    "label, created after": RunFilter(label="bench", created_after=T0 + timedelta(seconds=4)),
    "flow, created after": RunFilter(flow_name="etl", created_after=T0 + timedelta(seconds=4)),
}


@pytest.mark.parametrize("case", list(FILTERS))
def test_lists_by_flow_and_label_page_as_before(factory: sessionmaker[Session], tenant_id: str, case: str) -> None:
    where = FILTERS[case]
    with transaction(factory) as session:
        expected = _as_before(session, tenant_id, where)
        whole = flow_runs.list_flow_runs(session, tenant_id, where, limit=100)
        pages = list(_by_cursor(session, tenant_id, where, limit=4))
        offsets = [
            [run.id for run in flow_runs.list_flow_runs(session, tenant_id, where, limit=4, offset=start).runs]
            for start in range(0, len(expected) + 4, 4)
        ]

    assert case == "label on none" or expected, "the case should match runs"
    assert ([run.id for run in whole.runs], whole.next_cursor) == (expected, None)
    assert pages == [expected[start : start + 4] for start in range(0, max(len(expected), 1), 4)]
    assert offsets == [expected[start : start + 4] for start in range(0, len(expected) + 4, 4)]


@pytest.mark.parametrize("where", [RunFilter(label="a\x00b"), RunFilter(flow_name="a\x00b")], ids=["label", "flow"])
def test_a_name_with_nul_lists_nothing_before_reading_the_cursor(
    factory: sessionmaker[Session], tenant_id: str, where: RunFilter
) -> None:
    with transaction(factory) as session:
        page = flow_runs.list_flow_runs(session, tenant_id, where, cursor="not a cursor")
    assert (page.runs, page.next_cursor) == ([], None)


# --- plans (SQLite: Baton never runs ANALYZE, so its plans come from the schema alone) ---------------------------

LABELS_WALK = "ix_flow_run_labels_tenant_label_created"
FLOW_WALK = "ix_flow_runs_tenant_flow_name_created"
STATE_WALK = "ix_flow_runs_tenant_state_created"
PLANS = {
    "label": (RunFilter(label="gpu"), {LABELS_WALK}),
    "label and a final state": (RunFilter(label="gpu", state="Cancelled"), {LABELS_WALK}),
    "label and created after": (RunFilter(label="gpu", created_after=T0), {LABELS_WALK}),
    "flow": (RunFilter(flow_name="etl"), {FLOW_WALK}),
    "flow and a final state": (RunFilter(flow_name="etl", state="Cancelled"), {FLOW_WALK, STATE_WALK}),
    "flow and label": (RunFilter(flow_name="etl", label="gpu"), {FLOW_WALK}),
    # The runs in flight are few whatever the history: their state's index, not the flow's or the label's history
    "label and a state in flight": (RunFilter(label="gpu", state="Running"), {STATE_WALK}),
    "flow and a state in flight": (RunFilter(flow_name="etl", state="Running"), {STATE_WALK}),
}


@pytest.fixture(scope="module")
def sqlite_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sessionmaker[Session]]:
    engine, factory, _ = _seeded_database(request, tmp_path_factory, "sqlite", "planned")
    yield factory
    engine.dispose()


def _plan_of_list(factory: sessionmaker[Session], where: RunFilter, cursor: str | None) -> list[str]:
    """EXPLAIN QUERY PLAN of the list's first query (the ordered walk), as the list ran it."""
    engine = factory.kw["bind"]
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    with transaction(factory) as session:
        tenant_id = session.scalar(select(FlowRun.tenant_id).limit(1))
        assert tenant_id is not None
        event.listen(engine, "before_cursor_execute", record)
        try:
            flow_runs.list_flow_runs(session, tenant_id, where, limit=3, cursor=cursor)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        statement, parameters = next((s, p) for s, p in seen if "ORDER BY" in s)
        rows = session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        return [str(row[-1]) for row in rows]


@pytest.mark.parametrize("with_cursor", [False, True], ids=["first page", "by cursor"])
@pytest.mark.parametrize("case", list(PLANS))
def test_sqlite_walks_an_index_in_order_and_never_sorts_every_match(
    sqlite_factory: sessionmaker[Session], case: str, with_cursor: bool
) -> None:
    where, walks = PLANS[case]
    cursor = flow_runs.encode_cursor(FlowRun(created=T0 + timedelta(seconds=5), id=str(uuid.UUID(int=0))))
    plan = _plan_of_list(sqlite_factory, where, cursor if with_cursor else None)

    walked = {name for name in (LABELS_WALK, FLOW_WALK, STATE_WALK) if any(f"INDEX {name} " in line for line in plan)}
    assert walked and walked <= walks, plan
    # "RIGHT PART OF ORDER BY" orders only the runs of one creation time by id; "FOR ORDER BY" would sort them all
    assert not [line for line in plan if line.startswith("USE TEMP B-TREE FOR ORDER BY")], plan
    assert not [line for line in plan if line.startswith("SCAN ")], plan
