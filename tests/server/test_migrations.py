"""The migrations and the ORM describe one schema: a database made by migrating has every table, column, index
and unique key the ORM declares, and nothing else (several sessions add migrations; drift would show only in
production, where the database is migrated while the tests' ORM is not). A migration that copies data fills the
rows that exist when it runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, insert, select
from sqlalchemy.orm import Session

from baton.server.database.connection import create_database_engine
from baton.server.database.migrate import current_revision, head_revision, upgrade
from baton.server.database.orm import Base, Flow, FlowRun, FlowRunLabel, Tenant, new_id
from baton.server.models import flow_runs


def _differences(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": False})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_sqlite_migrations_match_the_orm(tmp_path: Path) -> None:
    assert _differences(f"sqlite:///{tmp_path / 'schema.db'}") == []


def test_postgresql_migrations_match_the_orm(postgres_cluster: Any) -> None:
    assert _differences(postgres_cluster.create_database()) == []


def _runs_at_0012(engine: Engine) -> tuple[str, list[str]]:
    """A tenant with runs of two flows (one with two versions), each with two labels, written as 0012 stores them
    (without migration 0013's columns); its id and the runs' ids."""
    now = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
    run_ids = []
    with engine.begin() as connection:
        tenant_id = new_id()
        connection.execute(insert(Tenant.__table__).values(id=tenant_id, name="migrated", created=now))
        for version, name in enumerate(["etl", "etl", "report"], start=1):
            flow_id = new_id()
            flow = {"id": flow_id, "tenant_id": tenant_id, "name": name, "version": version, "entrypoint": "x"}
            flow |= {"content_hash": str(version), "storage": {}, "run_config": {}, "labels": [], "tasks": []}
            connection.execute(insert(Flow.__table__).values(parameters_schema={}, created=now, **flow))
            for index in range(3):
                run_id, created = new_id(), now + timedelta(seconds=version * 10 + index)
                run = {"id": run_id, "tenant_id": tenant_id, "flow_id": flow_id, "name": "r", "parameters": {}}
                run |= {"labels": ["a", "b"], "label_count": 2, "run_config": {}, "scheduled_start_time": created}
                run |= {"state": "Success", "state_version": 0, "created": created, "updated": created}
                connection.execute(insert(FlowRun.__table__).values(**run))
                rows = [{"flow_run_id": run_id, "label": label} for label in ("a", "b")]
                connection.execute(insert(FlowRunLabel.__table__), rows)
                run_ids.append(run_id)
    return tenant_id, run_ids


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_0013_fills_the_copies_of_existing_runs_and_labels(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if database == "postgresql":
        url = request.getfixturevalue("postgres_cluster").create_database()
    else:
        url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_database_engine(url, 2)
    try:
        # Given a database at 0012 holding runs and their labels
        upgrade(engine, "0012")
        tenant_id, run_ids = _runs_at_0012(engine)
        # When it is migrated to 0013
        upgrade(engine, "0013")
        # Then every run has its flow's name, every label row its run's tenant and creation time
        with engine.connect() as connection:
            names = connection.execute(
                select(FlowRun.flow_name, Flow.name).join(Flow, Flow.id == FlowRun.flow_id)
            ).all()
            labels = connection.execute(
                select(FlowRunLabel.tenant_id, FlowRunLabel.created, FlowRun.created).join(
                    FlowRun, FlowRun.id == FlowRunLabel.flow_run_id
                )
            ).all()
        assert len(names) == 9 and all(copy == name for copy, name in names)
        assert len(labels) == 18 and all((tenant, copy) == (tenant_id, created) for tenant, copy, created in labels)
        # And, migrated on to head (today's code reads today's columns), the lists that read them answer as they did
        upgrade(engine)
        with Session(engine) as session:
            listed = flow_runs.list_flow_runs(session, tenant_id, flow_runs.RunFilter(flow_name="etl")).runs
            labelled = flow_runs.list_flow_runs(session, tenant_id, flow_runs.RunFilter(label="b")).runs
        assert [run.id for run in listed] == run_ids[5::-1]
        assert [run.id for run in labelled] == run_ids[::-1]
    finally:
        engine.dispose()
