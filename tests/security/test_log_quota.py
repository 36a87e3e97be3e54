"""Issue 8, item 7 (logs): a user key wrote 194 MB of logs in 5 s, also into a finished run.

Now each run stores at most ``max_log_lines_per_run`` lines and ``max_log_bytes_per_run`` bytes; the lines past
the quota are counted, one stored marker line and the final state message say how many, and a run that ended more
than ``log_grace_seconds`` ago answers 409 to log writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.server.database.connection import transaction
from baton.server.database.orm import FlowRun, utcnow
from security.input_support import all_logs, database_of, start_server
from server.harness import TenantContext
from support import ServerProcess

MAX_LINES = 100
MAX_BYTES = 50_000


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def quota_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from start_server(
        request,
        tmp_path_factory,
        BATON__SERVER__MAX_LOG_LINES_PER_RUN=str(MAX_LINES),
        BATON__SERVER__MAX_LOG_BYTES_PER_RUN=str(MAX_BYTES),
    )


@pytest.fixture(scope="module")
def quota_database(quota_server: ServerProcess) -> Iterator[sessionmaker[Session]]:
    yield from database_of(quota_server)


@pytest.fixture
def tenant(quota_server: ServerProcess, quota_database: sessionmaker[Session]) -> Iterator[TenantContext]:
    context = TenantContext.create(quota_server, quota_database)
    yield context
    context.close()


@pytest.fixture
def user(tenant: TenantContext) -> Client:
    return tenant.client(tenant.key("user"))


def lines(count: int, start: int = 0, size: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "key": uuid.uuid4().hex,
            "timestamp": "2030-01-01T00:00:00Z",
            "message": f"line {number}".ljust(size, "."),
            "name": "test",
        }
        for number in range(start, start + count)
    ]


def run_counts(factory: sessionmaker[Session], run_id: str) -> tuple[int, int, int]:
    with transaction(factory) as session:
        run = session.scalars(select(FlowRun).where(FlowRun.id == run_id)).one()
        return run.log_count, run.logs_dropped, run.log_bytes


def test_a_user_key_cannot_write_more_lines_than_the_runs_quota(
    tenant: TenantContext, user: Client, quota_database: sessionmaker[Session]
) -> None:
    # Given a running run
    run = tenant.stage("Running")

    # When a user key writes 150 lines in two batches
    first = user.write_logs(run.id, lines(80))
    second_batch = lines(70, start=80)
    second = user.write_logs(run.id, second_batch)

    # Then the first 100 lines are stored, in order; the 50 others are counted, not stored
    assert (first.written, first.dropped) == (80, 0)
    assert (second.written, second.dropped) == (20, 50)
    stored = all_logs(tenant.admin, run.id)
    assert [log.message for log in stored[:MAX_LINES]] == [f"line {n}" for n in range(MAX_LINES)]
    # and one marker line, after them, says how many were dropped and why
    (marker,) = stored[MAX_LINES:]
    assert marker.message.startswith("50 log lines of this run dropped: over the run's log quota of 100 lines")
    assert run_counts(quota_database, run.id)[:2] == (MAX_LINES, 50)

    # And a retried batch (its answer lost) stores nothing twice
    assert user.write_logs(run.id, second_batch).written == 0
    assert len(all_logs(tenant.admin, run.id)) == MAX_LINES + 1


def test_the_marker_keeps_count_and_the_final_state_message_says_it(tenant: TenantContext, user: Client) -> None:
    run = tenant.stage("Running")
    user.write_logs(run.id, lines(120))
    user.write_logs(run.id, lines(30, start=120))

    ended = tenant.client(run.token or "").set_flow_run_state(run.id, "Success", "all done")

    markers = [log for log in all_logs(tenant.admin, run.id) if log.name == "baton.server"]
    assert len(markers) == 1
    assert markers[0].message.startswith("50 log lines of this run dropped")
    assert ended.state_message == "all done [50 log lines dropped: over the run's log quota]"


def test_lines_dropped_after_the_end_update_the_final_message(tenant: TenantContext, user: Client) -> None:
    run = tenant.stage("Running")
    tenant.client(run.token or "").set_flow_run_state(run.id, "Failed", "boom")

    user.write_logs(run.id, lines(110))  # within the grace after the end: taken, up to the quota

    assert tenant.run(run.id).state_message == "boom [10 log lines dropped: over the run's log quota]"


def test_the_quota_bounds_bytes_too(tenant: TenantContext, user: Client, quota_database: sessionmaker[Session]) -> None:
    run = tenant.stage("Running")

    written = user.write_logs(run.id, lines(20, size=5_000))  # 20 lines of 5,004 bytes: 9 fit in 50,000

    assert (written.written, written.dropped) == (9, 11)
    count, dropped, size = run_counts(quota_database, run.id)
    assert (count, dropped) == (9, 11)
    assert size <= MAX_BYTES


def test_a_run_that_ended_longer_than_the_grace_ago_takes_no_logs(
    tenant: TenantContext, user: Client, quota_database: sessionmaker[Session]
) -> None:
    # Given a run that ended two minutes ago (the grace is 60 s)
    run = tenant.stage("Success")
    with transaction(quota_database) as session:
        session.execute(update(FlowRun).where(FlowRun.id == run.id).values(end_time=utcnow() - timedelta(minutes=2)))

    # When a user key writes logs into it
    response = tenant.raw(tenant.key("user")).post(f"/api/flow_runs/{run.id}/logs", json={"logs": lines(1)})

    # Then the answer is 409 with the reason, and nothing is stored
    assert response.status_code == 409, response.text
    assert "logs are taken until 60 s after a run ends" in response.json()["detail"]
    assert all_logs(tenant.admin, run.id) == []


def test_a_run_that_just_ended_still_takes_its_last_lines(tenant: TenantContext, user: Client) -> None:
    run = tenant.stage("Success")

    assert user.write_logs(run.id, lines(3)).written == 3


def test_a_sender_cannot_take_the_servers_marker_key(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")
    raw = tenant.raw(staged.token)
    line = {"key": "baton:log-quota", "timestamp": "2030-01-01T00:00:00Z", "message": "I am the marker"}
    response = raw.post(f"/api/flow_runs/{staged.id}/logs", json={"logs": [line]})
    assert response.status_code == 422, response.text
    assert tenant.admin.get_logs(staged.id).logs == []


def test_lines_sent_with_the_final_state_count_against_the_quota_and_the_message_says_so(
    tenant: TenantContext, user: Client, quota_database: sessionmaker[Session]
) -> None:
    # Given a running run with 90 of its 100 lines stored
    run = tenant.stage("Running")
    user.write_logs(run.id, lines(90))
    raw = tenant.raw(run.token)

    # When its process sends its last 30 lines with its final state
    ended = raw.post(f"/api/flow_runs/{run.id}/state", json={"name": "Success", "logs": lines(30, start=90)})

    # Then 10 are stored and 20 counted, and the final message (set in the same transaction) says so
    assert ended.status_code == 200, ended.text
    assert ended.json()["state_message"] == "[20 log lines dropped: over the run's log quota]"
    assert run_counts(quota_database, run.id)[:2] == (MAX_LINES, 20)
    stored = all_logs(tenant.admin, run.id)
    assert [log.message for log in stored[:MAX_LINES]] == [f"line {n}" for n in range(MAX_LINES)]
    assert stored[MAX_LINES].message.startswith("20 log lines of this run dropped")


def test_a_final_state_carrying_lines_into_a_run_closed_to_logs_stores_neither(
    tenant: TenantContext, quota_database: sessionmaker[Session]
) -> None:
    # Given a run that ended two minutes ago, and a user key marking it Failed by hand with lines
    run = tenant.stage("Success")
    with transaction(quota_database) as session:
        session.execute(update(FlowRun).where(FlowRun.id == run.id).values(end_time=utcnow() - timedelta(minutes=2)))
    raw = tenant.raw(tenant.key("user"))

    response = raw.post(f"/api/flow_runs/{run.id}/state", json={"name": "Failed", "logs": lines(1)})

    assert response.status_code == 409, response.text
    assert tenant.run(run.id).state == "Success"
    assert all_logs(tenant.admin, run.id) == []
