"""Logs (idempotent by key, paged by offset) and task runs of a flow run."""

from __future__ import annotations

from typing import Any

import pytest

from baton.client import Client
from baton.exceptions import ClientError, NotFoundError, PermissionDeniedError
from baton.schemas.responses import ClaimedRun, FlowRunRead
from server.harness import TenantContext


def lines(*messages: str, key_prefix: str | None = None, **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "timestamp": f"2030-01-01T00:00:{i:02d}Z",
            "message": message,
            **({"key": f"{key_prefix}-{i}"} if key_prefix else {}),
            **extra,
        }
        for i, message in enumerate(messages)
    ]


@pytest.fixture
def token(tenant: TenantContext, claimed: ClaimedRun) -> Client:
    """The claimed run's token: what a flow-run process writes with."""
    return tenant.client(claimed.run_token)


def test_logs_are_read_back_oldest_first(token: Client, claimed: ClaimedRun, user: Client) -> None:
    run_id = claimed.flow_run.id
    written = token.write_logs(run_id, lines("one", "two", "three", level=30, name="flow"))

    page = user.get_logs(run_id)

    assert written.written == 3
    assert [log.message for log in page.logs] == ["one", "two", "three"]
    assert {(log.level, log.name, log.flow_run_id) for log in page.logs} == {(30, "flow", run_id)}
    assert page.next_offset == page.logs[-1].id


def test_logs_with_keys_already_stored_are_not_stored_twice(token: Client, claimed: ClaimedRun) -> None:
    run_id = claimed.flow_run.id
    batch = lines("a", "b", "c", key_prefix="batch-1")
    assert token.write_logs(run_id, batch).written == 3

    # A retried batch, and a batch that overlaps it by one key
    assert token.write_logs(run_id, batch).written == 0
    assert token.write_logs(run_id, [batch[2], *lines("d", key_prefix="batch-2")]).written == 1

    assert [log.message for log in token.get_logs(run_id).logs] == ["a", "b", "c", "d"]


def test_log_keys_are_per_run(tenant: TenantContext, token: Client, claimed: ClaimedRun, user: Client) -> None:
    other = user.create_flow_run(flow_name="hello")
    token.write_logs(claimed.flow_run.id, lines("mine", key_prefix="same"))

    assert user.write_logs(other.id, lines("theirs", key_prefix="same")).written == 1
    assert [log.message for log in user.get_logs(other.id).logs] == ["theirs"]


def test_lines_without_keys_are_always_stored(token: Client, claimed: ClaimedRun) -> None:
    run_id = claimed.flow_run.id

    token.write_logs(run_id, lines("same"))
    token.write_logs(run_id, lines("same"))

    assert [log.message for log in token.get_logs(run_id).logs] == ["same", "same"]


def test_logs_are_paged_by_offset(token: Client, claimed: ClaimedRun, user: Client) -> None:
    run_id = claimed.flow_run.id
    token.write_logs(run_id, lines(*(f"line {i}" for i in range(5))))

    first = user.get_logs(run_id, limit=2)
    second = user.get_logs(run_id, offset=first.next_offset, limit=2)
    third = user.get_logs(run_id, offset=second.next_offset, limit=2)
    end = user.get_logs(run_id, offset=third.next_offset, limit=2)

    assert [log.message for log in first.logs] == ["line 0", "line 1"]
    assert [log.message for log in second.logs] == ["line 2", "line 3"]
    assert [log.message for log in third.logs] == ["line 4"]
    assert (end.logs, end.next_offset) == ([], third.next_offset)


def test_logs_of_other_runs_do_not_show(token: Client, claimed: ClaimedRun, user: Client) -> None:
    other = user.create_flow_run(flow_name="hello")
    user.write_logs(other.id, lines("other run"))
    token.write_logs(claimed.flow_run.id, lines("this run"))

    assert [log.message for log in user.get_logs(claimed.flow_run.id).logs] == ["this run"]
    assert [log.message for log in user.get_logs(other.id).logs] == ["other run"]


def test_read_key_reads_but_does_not_write_logs(reader: Client, run: FlowRunRead) -> None:
    assert reader.get_logs(run.id).logs == []
    with pytest.raises(PermissionDeniedError):
        reader.write_logs(run.id, lines("nope"))


def test_logs_of_unknown_run_are_404(user: Client) -> None:
    with pytest.raises(NotFoundError, match="flow run nope not found"):
        user.get_logs("nope")
    with pytest.raises(NotFoundError, match="flow run nope not found"):
        user.write_logs("nope", lines("x"))


def test_log_batch_over_the_limit_is_refused(token: Client, claimed: ClaimedRun) -> None:
    with pytest.raises(ClientError, match="at most 1000") as excinfo:
        token.write_logs(claimed.flow_run.id, lines(*(["x"] * 1001)))

    assert excinfo.value.status_code == 422
    assert token.get_logs(claimed.flow_run.id).logs == []


# --- task runs ------------------------------------------------------------------------------------------


def test_task_runs_are_created_updated_and_listed(token: Client, claimed: ClaimedRun, user: Client) -> None:
    run_id = claimed.flow_run.id

    pending = token.create_task_run(run_id, "greet")
    running = token.create_task_run(run_id, "count", state="Running", message="go")
    retried = token.set_task_run_state(pending.id, "Retrying", "flaky", attempt=2)
    done = token.set_task_run_state(running.id, "Success")

    assert (pending.state, pending.attempt, pending.start_time) == ("Pending", 1, None)
    assert (running.state, running.message) == ("Running", "go")
    assert running.start_time is not None
    assert (retried.state, retried.message, retried.attempt) == ("Retrying", "flaky", 2)
    assert retried.end_time is None
    assert done.state == "Success"
    assert done.end_time is not None
    listed = user.list_task_runs(run_id)
    assert [(t.id, t.task_name, t.state) for t in listed] == [
        (pending.id, "greet", "Retrying"),
        (running.id, "count", "Success"),
    ]
    assert {t.flow_run_id for t in listed} == {run_id}


def test_task_run_state_of_another_run_is_404_for_a_run_token(
    tenant: TenantContext, token: Client, user: Client
) -> None:
    other = tenant.stage("Running")
    foreign = tenant.client(other.token or "").create_task_run(other.id, "greet")

    with pytest.raises(NotFoundError, match=f"task run {foreign.id} not found"):
        token.set_task_run_state(foreign.id, "Failed")

    assert user.list_task_runs(other.id)[0].state == "Pending"


def test_unknown_task_run_state_is_422(token: Client, claimed: ClaimedRun) -> None:
    task_run = token.create_task_run(claimed.flow_run.id, "greet")

    with pytest.raises(ClientError) as excinfo:
        token.set_task_run_state(task_run.id, "Scheduled")

    assert excinfo.value.status_code == 422
    assert "state" in excinfo.value.detail


def test_read_key_lists_but_does_not_create_task_runs(reader: Client, run: FlowRunRead) -> None:
    assert reader.list_task_runs(run.id) == []
    with pytest.raises(PermissionDeniedError):
        reader.create_task_run(run.id, "greet")


@pytest.fixture
def running(token: Client, claimed: ClaimedRun, runner: Client) -> str:
    """The claimed run, Submitted by its agent and set Running by its token: its id."""
    run_id = claimed.flow_run.id
    runner.set_flow_run_state(run_id, "Submitted")
    token.set_flow_run_state(run_id, "Running")
    return run_id


def test_a_final_state_stores_the_lines_it_carries_after_the_runs_others(
    token: Client, running: str, user: Client
) -> None:
    run_id = running
    token.write_logs(run_id, lines("one", key_prefix="early"))

    ended = token.change_flow_run_state(run_id, "Success", logs=lines("two", "three", key_prefix="last"))

    assert ended.state == "Success"
    assert [log.message for log in user.get_logs(run_id).logs] == ["one", "two", "three"]


def test_a_refused_state_stores_none_of_its_lines(token: Client, claimed: ClaimedRun, user: Client) -> None:
    run_id = claimed.flow_run.id  # Pending: not yet Submitted, so it cannot succeed

    with pytest.raises(ClientError) as refused:
        token.change_flow_run_state(run_id, "Success", logs=lines("lost with it"))

    assert refused.value.status_code == 409
    assert user.get_logs(run_id).logs == []
    assert user.get_flow_run(run_id).state == "Pending"


def test_a_state_with_too_many_lines_is_refused_whole(token: Client, running: str, user: Client) -> None:
    run_id = running

    with pytest.raises(ClientError) as refused:
        token.change_flow_run_state(run_id, "Success", logs=lines(*["x"] * 1001))

    assert refused.value.status_code == 422
    assert user.get_flow_run(run_id).state == "Running"
    assert user.get_logs(run_id).logs == []


def test_a_read_key_cannot_send_lines_with_a_state(tenant: TenantContext, claimed: ClaimedRun) -> None:
    response = tenant.raw(tenant.key("read")).post(
        f"/api/flow_runs/{claimed.flow_run.id}/state", json={"name": "Failed", "logs": lines("no")}
    )

    assert response.status_code == 403, response.text


def test_lines_with_a_state_reach_no_run_their_sender_may_not_change(
    tenant: TenantContext, running: str, user: Client
) -> None:
    # Another runner key of the tenant (its agents hold no claim on the run), and another run's token
    other_runner = tenant.admin.create_api_key("runner", name="other").key
    other_run = tenant.stage("Running")
    body = {"name": "Failed", "logs": lines("smuggled")}

    by_runner = tenant.raw(other_runner).post(f"/api/flow_runs/{running}/state", json=body)
    by_token = tenant.raw(other_run.token).post(f"/api/flow_runs/{running}/state", json=body)

    assert by_runner.status_code == 403, by_runner.text
    assert by_token.status_code == 404, by_token.text
    assert user.get_logs(running).logs == []
    assert user.get_flow_run(running).state == "Running"
