"""Task runs over GraphQL: Prefect 1's ``task_run`` queries and its task runner's mutations (the mapping:
``models.prefect1_task_runs``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ariadne import MutationType, ObjectType, QueryType
from sqlalchemy import ColumnElement, Select, select

from baton.server.access import Action, run_holder
from baton.server.database.connection import transaction
from baton.server.database.orm import FlowRun, Prefect1TaskRun, TaskRun
from baton.server.graphql.core import Info, ListArguments, context_of, once_more_on_conflict, paged, require
from baton.server.graphql.where import Columns
from baton.server.models import prefect1_states as states
from baton.server.models import prefect1_task_runs
from baton.server.models.errors import InvalidRequest, ObjectNotFound

query = QueryType()
mutation = MutationType()
task_run_type = ObjectType("task_run")

MAX_STATES_PER_CALL = 1000

COLUMNS: Columns = {
    "id": TaskRun.id,
    "flow_run_id": TaskRun.flow_run_id,
    "task_id": Prefect1TaskRun.task_id,
    "map_index": Prefect1TaskRun.map_index,
    "state": Prefect1TaskRun.state,
    "state_start_time": Prefect1TaskRun.state_start_time,
    "start_time": TaskRun.start_time,
    "end_time": TaskRun.end_time,
    "created": TaskRun.created,
}


def joined_ids(condition: ColumnElement[bool], column: Any) -> Select[Any]:
    """``column`` of the task runs ``condition`` (over :data:`COLUMNS`) matches: a relationship filter."""
    return select(column).join(TaskRun, TaskRun.id == Prefect1TaskRun.task_run_id).where(condition)


def _joined(tenant_id: str) -> Select[TaskRun, Prefect1TaskRun]:
    return (
        select(TaskRun, Prefect1TaskRun)
        .join(Prefect1TaskRun, Prefect1TaskRun.task_run_id == TaskRun.id)
        .where(TaskRun.tenant_id == tenant_id)
    )


def row(task_run: TaskRun, side: Prefect1TaskRun, flow_id: str | None = None) -> dict[str, Any]:
    return {
        "id": task_run.id,
        "tenant_id": task_run.tenant_id,
        "flow_run_id": task_run.flow_run_id,
        "task_id": side.task_id,
        "task": {"id": side.task_id, "slug": side.task_slug, "flow_id": flow_id},
        "map_index": side.map_index,
        "name": task_run.task_name,
        "version": side.version,
        "state": side.state,
        "state_message": states.message_of(side.serialized_state),
        "state_start_time": side.state_start_time,
        "state_timestamp": task_run.end_time or task_run.start_time or task_run.created,
        "serialized_state": side.serialized_state,
        "start_time": task_run.start_time,
        "end_time": task_run.end_time,
        "created": task_run.created,
        "heartbeat": side.heartbeat,
    }


def _listed(info: Info, statement: Select[TaskRun, Prefect1TaskRun], arguments: Mapping[str, Any]) -> list[Any]:
    listing = ListArguments.of(arguments, COLUMNS, TaskRun.id)
    statement = listing.applied(statement)
    with context_of(info).read_sessions() as session:
        return paged([row(task_run, side) for task_run, side in session.execute(statement).all()])


def of_run(info: Info, tenant_id: str, flow_run_id: str, arguments: Mapping[str, Any]) -> list[Any]:
    return _listed(info, _joined(tenant_id).where(TaskRun.flow_run_id == flow_run_id), arguments)


@query.field("task_run")
def _task_runs(_: None, info: Info, **arguments: Any) -> list[Any]:
    principal = require(info, Action.FLOW_RUN_LIST)
    return _listed(info, _joined(principal.tenant_id), arguments)


@query.field("task_run_by_pk")
def _task_run_by_pk(_: None, info: Info, id: str) -> dict[str, Any] | None:
    principal = require(info, Action.FLOW_RUN_LIST)
    found = _listed(info, _joined(principal.tenant_id).where(TaskRun.id == id), {})
    return found[0] if found else None


@task_run_type.field("flow_run")
def _flow_run(task_run: dict[str, Any], info: Info) -> dict[str, Any]:
    from baton.server.graphql.flow_runs import row as run_row
    from baton.server.models import prefect1_runs

    with context_of(info).read_sessions() as session:
        run, side = prefect1_runs.get(session, task_run["tenant_id"], task_run["flow_run_id"])
        return run_row(context_of(info).principal, run, side)


@task_run_type.field("task")
def _task(task_run: dict[str, Any], info: Info) -> dict[str, Any]:
    task = dict(task_run["task"])
    if task.get("flow_id") is None:
        with context_of(info).read_sessions() as session:
            task["flow_id"] = session.scalar(select(FlowRun.flow_id).where(FlowRun.id == task_run["flow_run_id"]))
    task.setdefault("name", task["slug"])
    return task


def _info(side: Prefect1TaskRun, task_run: TaskRun | None = None) -> dict[str, Any]:
    return {
        "id": side.task_run_id,
        "version": side.version,
        "state": side.state,
        "serialized_state": side.serialized_state,
    }


@query.field("get_task_run_info")
def _get_task_run_info(_: None, info: Info, task_run_id: str) -> dict[str, Any]:
    principal = require(info, Action.FLOW_RUN_LIST)
    with context_of(info).read_sessions() as session:
        _task_run, side = prefect1_task_runs.get(session, principal.tenant_id, task_run_id)
        return _info(side)


@mutation.field("get_or_create_task_run_info")
def _get_or_create(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.TASK_RUN_CREATE)
    context = context_of(info)
    map_index = input.get("map_index")

    def get_or_create() -> dict[str, Any]:
        with transaction(context.sessions) as session:
            run_holder(session, principal, input["flow_run_id"])
            side = prefect1_task_runs.get_or_create(
                session,
                principal.tenant_id,
                input["flow_run_id"],
                input["task_id"],
                -1 if map_index is None else map_index,
                context.server.max_task_runs_per_run,
            )
            return _info(side)

    return once_more_on_conflict(get_or_create)


def _holder_of_task_run(session: Any, info: Info, task_run_id: str) -> None:
    principal = context_of(info).principal
    task_run, _side = prefect1_task_runs.get(session, principal.tenant_id, task_run_id)
    run_holder(session, principal, task_run.flow_run_id)


@mutation.field("set_task_run_states")
def _set_task_run_states(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.TASK_RUN_SET_STATE)
    if principal.is_run_token:
        raise ObjectNotFound("a run token reaches no Prefect 1 run")
    asked = input["states"]
    if len(asked) > MAX_STATES_PER_CALL:
        raise InvalidRequest(f"at most {MAX_STATES_PER_CALL} states per call")
    answers = []
    with transaction(context_of(info).sessions) as session:
        for item in asked:
            _holder_of_task_run(session, info, item["task_run_id"])
            prefect1_task_runs.set_state(
                session, principal.tenant_id, item["task_run_id"], item["state"], item.get("version")
            )
            answers.append({"id": item["task_run_id"], "status": "SUCCESS", "message": None})
    return {"states": answers}


@mutation.field("update_task_run_heartbeat")
def _task_run_heartbeat(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.FLOW_RUN_HEARTBEAT)
    with transaction(context_of(info).sessions) as session:
        _holder_of_task_run(session, info, input["task_run_id"])
        prefect1_task_runs.heartbeat(session, principal.tenant_id, input["task_run_id"])
    return {"success": True, "error": None}


@mutation.field("set_task_run_name")
def _set_task_run_name(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.TASK_RUN_SET_STATE)
    with transaction(context_of(info).sessions) as session:
        _holder_of_task_run(session, info, input["task_run_id"])
        prefect1_task_runs.rename(session, principal.tenant_id, input["task_run_id"], input["name"])
    return {"success": True, "error": None}
