"""Two server replicas scheduling the same flows on one database, SIGKILLed in turn while they tick: every
(flow, clock, time) gets exactly one run, and no time between the first and the last is skipped.

The flows are written straight into the database (not registered through the API, which would create their runs
itself): the replicas' first ticks then have all the work to do (hundreds of runs in one transaction), and the
kills land while they do it.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from baton.schemas.actions import FlowCreate
from baton.server.database.connection import create_database_engine, create_session_factory, transaction
from baton.server.database.orm import Flow, FlowRun
from baton.server.models import flows, tenants
from support import ServerProcess, wait_for

FLOWS = 30  # x 42 occurrences each (catch-up and horizon): ~1,260 runs in the first ticks
EVERY = 10
HORIZON = 120


def _replica(tmp_path: Path, name: str, database_url: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / name,
        BATON__SERVER__DATABASE_URL=database_url,
        BATON__SERVER__SCHEDULER_INTERVAL_SECONDS="0.2",
        BATON__SERVER__SCHEDULER_HORIZON_SECONDS=str(HORIZON),
        BATON__SERVER__SCHEDULER_CATCHUP_SECONDS="300",
    )


def _scheduled_times(factory: sessionmaker[Session]) -> dict[str, list[datetime]]:
    found: dict[str, list[datetime]] = defaultdict(list)
    with transaction(factory) as session:
        rows = session.execute(
            select(Flow.name, FlowRun.scheduled_start_time)
            .join(Flow, Flow.id == FlowRun.flow_id)
            .where(FlowRun.schedule_key.is_not(None))
            .order_by(Flow.name, FlowRun.scheduled_start_time)
        )
        for name, when in rows:
            found[name].append(when)
    return found


def test_replicas_killed_mid_tick_create_each_time_once_and_skip_none(tmp_path: Path, database_url: str) -> None:
    # Given two replicas scheduling on one database
    replicas = [_replica(tmp_path, f"replica-{i}", database_url).start() for i in range(2)]
    engine = create_database_engine(database_url, 2)
    factory = create_session_factory(engine)
    try:
        with transaction(factory) as session:
            tenant_id = tenants.create_tenant(session, "scheduled").id
        # When many flows on a 10-second interval appear at once
        started = datetime.now(UTC)
        with transaction(factory) as session:
            for index in range(FLOWS):
                payload = FlowCreate(name=f"flow-{index:03d}", entrypoint="f", source="x", schedule={"interval": EVERY})
                flows.register_flow(session, tenant_id, payload)
        # And the replicas are SIGKILLed in turn while they tick, each restarted before the other one dies
        # (a server takes seconds to start on a loaded machine: two rounds keep the test short)
        for round_number in range(2):
            time.sleep(0.3 + 0.5 * round_number)
            replicas[round_number % 2].restart()

        # Then, once the survivors have caught up to the horizon, every flow has one run per interval, no gaps
        def caught_up() -> dict[str, list[datetime]] | None:
            found = _scheduled_times(factory)
            edge = datetime.now(UTC) + timedelta(seconds=HORIZON - 2 * EVERY)
            done = len(found) == FLOWS and all(times[-1] >= edge for times in found.values())
            return found if done else None

        found = wait_for(caught_up, timeout=60, what="every flow scheduled up to the horizon")
        problems: list[Any] = []
        for name, times in found.items():
            steps = {(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)}
            if steps != {EVERY}:
                problems.append((name, sorted(steps)))
            if times[0] > started + timedelta(seconds=60):
                problems.append((name, "first run too late", times[0]))
        assert problems == []
        # And the unique key held: as many keys as runs (the database refuses a second run with one anyway)
        with transaction(factory) as session:
            keys = session.scalars(select(FlowRun.schedule_key).where(FlowRun.schedule_key.is_not(None))).all()
        assert len(keys) == len(set(keys)) == sum(len(times) for times in found.values())
    finally:
        for replica in replicas:
            replica.stop()
        engine.dispose()
