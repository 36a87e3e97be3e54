"""Task-run states in batches (``POST /api/flow_runs/{id}/task_runs/states``, issue 14): how a flow-run process
records its tasks' states, many per request and one commit; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from baton.client import Client
from baton.exceptions import ClientError, NotFoundError
from baton.schemas.responses import ClaimedRun
from server.harness import TenantContext


@pytest.fixture
def token(tenant: TenantContext, claimed: ClaimedRun) -> Client:
    """The claimed run's token: what a flow-run process writes with."""
    return tenant.client(claimed.run_token)


def state(task_run_id: str, name: str, at: datetime | None = None, **extra: Any) -> dict[str, Any]:
    return {"task_run_id": task_run_id, "state": name, "at": at.isoformat() if at else None, **extra}


def test_a_batch_applies_its_states_in_order_with_the_times_they_happened(
    token: Client, claimed: ClaimedRun, user: Client
) -> None:
    run_id = claimed.flow_run.id
    first, second = (token.create_task_run(run_id, name) for name in ("a", "b"))
    started = datetime.now(UTC) - timedelta(seconds=30)
    ended = started + timedelta(seconds=12)

    result = token.set_task_run_states(
        run_id,
        [
            state(first.id, "Running", started),
            state(second.id, "Running", started),
            state(first.id, "Retrying", started, message="flaky", attempt=2),
            state(first.id, "Success", ended, attempt=2),
            state(second.id, "Failed", ended, message="boom"),
        ],
    )

    assert (result.applied, result.missing) == (5, [])
    by_name = {t.task_name: t for t in user.list_task_runs(run_id)}
    a, b = by_name["a"], by_name["b"]
    assert (a.state, a.attempt, b.state, b.message) == ("Success", 2, "Failed", "boom")
    assert a.start_time == started and a.end_time == ended  # the flow's times, not the request's
    assert b.end_time is not None and b.end_time - b.start_time == timedelta(seconds=12)


def test_a_time_in_the_future_is_kept_no_later_than_the_servers_now(token: Client, claimed: ClaimedRun) -> None:
    run_id = claimed.flow_run.id
    task_run = token.create_task_run(run_id, "a")
    before = datetime.now(UTC)

    token.set_task_run_states(run_id, [state(task_run.id, "Running", datetime(2999, 1, 1, tzinfo=UTC))])

    [stored] = token.list_task_runs(run_id)
    assert stored.start_time is not None and before - timedelta(seconds=5) <= stored.start_time
    assert stored.start_time <= datetime.now(UTC) + timedelta(seconds=5)


def test_task_runs_of_another_run_or_unknown_ids_are_skipped_and_named(
    tenant: TenantContext, token: Client, claimed: ClaimedRun, user: Client
) -> None:
    other = tenant.stage("Running")
    foreign = tenant.client(other.token or "").create_task_run(other.id, "theirs")
    mine = token.create_task_run(claimed.flow_run.id, "mine")

    result = token.set_task_run_states(
        claimed.flow_run.id,
        [state(foreign.id, "Failed"), state("not-an-id", "Failed"), state(mine.id, "Success")],
    )

    assert result.applied == 1
    assert result.missing == [foreign.id, "not-an-id"]
    assert user.list_task_runs(other.id)[0].state == "Pending"
    assert user.list_task_runs(claimed.flow_run.id)[0].state == "Success"


def test_a_run_token_cannot_send_states_for_another_run(tenant: TenantContext, token: Client) -> None:
    other = tenant.stage("Running")
    foreign = tenant.client(other.token or "").create_task_run(other.id, "theirs")

    with pytest.raises(NotFoundError):
        token.set_task_run_states(other.id, [state(foreign.id, "Failed")])


@pytest.mark.parametrize(
    ("states", "problem"),
    [
        ([], "at least 1"),
        ([{"task_run_id": "x", "state": "Running"}] * 1001, "at most 1000"),
        ([{"task_run_id": "x", "state": "Scheduled"}], "state"),
        ([{"task_run_id": "x", "state": "Running", "at": "2026-12-06T10:00:00"}], "time zone"),
        ([{"task_run_id": "x", "state": "Running", "at": "0001-01-01T00:00:00+14:00"}], "range of UTC"),
        ([{"task_run_id": "x" * 65, "state": "Running"}], "64"),
        ([{"task_run_id": "x", "state": "Running", "attempt": 0}], "attempt"),
        ([{"task_run_id": "x", "state": "Running", "extra": 1}], "extra"),
    ],
)
def test_a_malformed_batch_is_422_and_changes_nothing(
    token: Client, claimed: ClaimedRun, states: list[dict[str, Any]], problem: str
) -> None:
    task_run = token.create_task_run(claimed.flow_run.id, "a")

    with pytest.raises(ClientError) as excinfo:
        token.set_task_run_states(claimed.flow_run.id, states)

    assert excinfo.value.status_code == 422
    assert problem in str(excinfo.value.detail)
    assert token.list_task_runs(claimed.flow_run.id)[0].id == task_run.id
    assert token.list_task_runs(claimed.flow_run.id)[0].state == "Pending"


# --- task runs created together (a map's children) ----------------------------------------------------------


def test_a_maps_children_are_created_in_one_request_in_order(token: Client, claimed: ClaimedRun) -> None:
    names = [f"tiny[{i}]" for i in range(1000)]

    created = token.create_task_runs(claimed.flow_run.id, [{"task_name": name, "state": "Pending"} for name in names])

    assert [t.task_name for t in created] == names
    assert {t.state for t in created} == {"Pending"}
    listed = token.list_task_runs(claimed.flow_run.id)
    assert [t.id for t in listed] == [t.id for t in created]  # oldest first: the children in their order


@pytest.mark.parametrize(
    ("task_runs", "problem"),
    [
        ([], "at least 1"),
        ([{"task_name": "x"}] * 1001, "at most 1000"),
        ([{"task_name": ""}], "task_name"),
        ([{"task_name": "x" * 501}], "task_name"),
        ([{"task_name": "x", "state": "Scheduled"}], "state"),
        ([{"task_name": "x", "extra": 1}], "extra"),
    ],
)
def test_a_malformed_creation_batch_is_422_and_creates_nothing(
    token: Client, claimed: ClaimedRun, task_runs: list[dict[str, Any]], problem: str
) -> None:
    with pytest.raises(ClientError) as excinfo:
        token.create_task_runs(claimed.flow_run.id, task_runs)

    assert excinfo.value.status_code == 422
    assert problem in str(excinfo.value.detail)
    assert token.list_task_runs(claimed.flow_run.id) == []


def test_a_run_token_cannot_create_task_runs_of_another_run(tenant: TenantContext, token: Client) -> None:
    other = tenant.stage("Running")

    with pytest.raises(NotFoundError):
        token.create_task_runs(other.id, [{"task_name": "theirs"}])
