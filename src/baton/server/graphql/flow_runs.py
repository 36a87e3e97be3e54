"""Flow runs over GraphQL: Prefect 1's ``flow_run`` queries and the mutations of its client, agents and flow runner.
The mapping onto Baton's runs: ``models.prefect1_runs``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ariadne import MutationType, ObjectType, QueryType
from sqlalchemy import Select, select

from baton.labels import MAX_LABELS, normalize_labels
from baton.schemas.states import StateName
from baton.server import shaping
from baton.server.access import Action, run_holder
from baton.server.database.connection import transaction
from baton.server.database.orm import FlowRun, FlowRunState, Log, Prefect1FlowRun, Prefect1TaskRun
from baton.server.graphql import agents, flows, task_runs
from baton.server.graphql.core import (
    Info,
    ListArguments,
    context_of,
    once_more_on_conflict,
    paged,
    require,
    runner_key,
)
from baton.server.graphql.where import Columns, Related
from baton.server.models import prefect1_runs
from baton.server.models import prefect1_states as states
from baton.server.models.errors import InvalidRequest, ObjectNotFound
from baton.server.models.tenants import Principal

query = QueryType()
mutation = MutationType()
flow_run_type = ObjectType("flow_run")

MAX_STATES_PER_CALL = 100

COLUMNS: Columns = {
    "id": FlowRun.id,
    "flow_id": FlowRun.flow_id,
    "name": FlowRun.name,
    "state": prefect1_runs.state_type(),
    "version": Prefect1FlowRun.version,
    "scheduled_start_time": FlowRun.scheduled_start_time,
    "start_time": FlowRun.start_time,
    "end_time": FlowRun.end_time,
    "created": FlowRun.created,
    "updated": FlowRun.updated,
    "agent_id": FlowRun.agent_id,
    "flow": Related(flows.COLUMNS, lambda inner: FlowRun.flow_id.in_(flows.matching_ids(inner))),
    "task_runs": Related(
        task_runs.COLUMNS, lambda inner: FlowRun.id.in_(task_runs.joined_ids(inner, Prefect1TaskRun.flow_run_id))
    ),
}


def _joined(tenant_id: str) -> Select[FlowRun, Prefect1FlowRun]:
    return (
        select(FlowRun, Prefect1FlowRun)
        .join(Prefect1FlowRun, Prefect1FlowRun.flow_run_id == FlowRun.id)
        .where(FlowRun.tenant_id == tenant_id, FlowRun.kind == prefect1_runs.KIND)
    )


def row(principal: Principal, run: FlowRun, side: Prefect1FlowRun) -> dict[str, Any]:
    now = prefect1_runs.served(run, side)
    return {
        "id": run.id,
        "tenant_id": run.tenant_id,
        "flow_id": run.flow_id,
        "name": run.name,
        "labels": run.labels,
        "parameters": run.parameters,
        "context": side.context,
        "run_config": shaping.prefect1_run_config(principal, side.run_config),
        "version": now.version,
        "state": states.type_of(now.serialized_state),
        "state_message": states.message_of(now.serialized_state),
        "state_start_time": now.state_start_time,
        "state_timestamp": run.updated,
        "serialized_state": now.serialized_state,
        "scheduled_start_time": run.scheduled_start_time,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "created": run.created,
        "updated": run.updated,
        "heartbeat": run.heartbeat_at,
        "agent_id": run.agent_id,
        "idempotency_key": run.idempotency_key,
    }


def _rows(info: Info, statement: Select[FlowRun, Prefect1FlowRun]) -> list[dict[str, Any]]:
    principal = context_of(info).principal
    with context_of(info).read_sessions() as session:
        return [row(principal, run, side) for run, side in session.execute(statement).all()]


@query.field("flow_run")
def _flow_runs(_: None, info: Info, **arguments: Any) -> list[dict[str, Any]]:
    principal = require(info, Action.FLOW_RUN_LIST)
    listing = ListArguments.of(arguments, COLUMNS, FlowRun.id)
    return paged(_rows(info, listing.applied(_joined(principal.tenant_id))))


@query.field("flow_run_by_pk")
def _flow_run_by_pk(_: None, info: Info, id: str) -> dict[str, Any] | None:
    principal = require(info, Action.FLOW_RUN_LIST)
    found = _rows(info, _joined(principal.tenant_id).where(FlowRun.id == id))
    return found[0] if found else None


@flow_run_type.field("flow")
def _flow(run: dict[str, Any], info: Info) -> dict[str, Any]:
    found = flows.by_id(info, run["tenant_id"], run["flow_id"])
    if found is None:
        raise ObjectNotFound(f"flow {run['flow_id']} not found")
    return found


@flow_run_type.field("task_runs")
def _task_runs(run: dict[str, Any], info: Info, **arguments: Any) -> list[dict[str, Any]]:
    return task_runs.of_run(info, run["tenant_id"], run["id"], arguments)


_STATE_COLUMNS: Columns = {"state": FlowRunState.name, "timestamp": FlowRunState.timestamp}


@flow_run_type.field("states")
def _states(run: dict[str, Any], info: Info, **arguments: Any) -> list[dict[str, Any]]:
    """Baton's history of the run, each state as the Prefect 1 state that means it (its last one as set)."""
    condition = arguments.get("where") or {}
    if "state" in condition:  # Prefect 1's type names: the Baton states they mean
        asked = condition["state"]
        condition = {**condition, "state": {op: _baton_names(value) for op, value in asked.items()}}
    listing = ListArguments.of({**arguments, "where": condition}, _STATE_COLUMNS, FlowRunState.id)
    statement = listing.applied(select(FlowRunState).where(FlowRunState.flow_run_id == run["id"]))
    with context_of(info).read_sessions() as session:
        history = list(session.scalars(statement))
    answer = []
    for entry in history:
        kind = states.FROM_BATON[StateName(entry.name)]
        serialized = states.make(kind, entry.message, run["scheduled_start_time"])
        if entry is history[-1] and states.FLOW_RUN_STATES.get(run["state"]) == entry.name:
            serialized = run["serialized_state"]  # the state as its runner set it, result and all
            kind = run["state"]
        answer.append(
            {
                "flow_run_id": run["id"],
                "state": kind,
                "message": entry.message,
                "timestamp": entry.timestamp,
                "created": entry.timestamp,
                "start_time": states.start_time(serialized),
                "serialized_state": serialized,
            }
        )
    return paged(answer)


def _baton_names(value: Any) -> Any:
    """A Prefect 1 type name (or a list of them) as the Baton state names that serve it."""
    if isinstance(value, list):
        return [name for item in value for name in _baton_names(item)]
    if not isinstance(value, str):
        return value
    meaning = states.FLOW_RUN_STATES.get(value)
    return meaning.value if meaning is not None else value


_LOG_COLUMNS: Columns = {"timestamp": Log.timestamp, "task_run_id": Log.task_run_id, "id": Log.id}
_LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}


@flow_run_type.field("logs")
def _logs(run: dict[str, Any], info: Info, **arguments: Any) -> list[dict[str, Any]]:
    require(info, Action.LOGS_READ)
    listing = ListArguments.of(arguments, _LOG_COLUMNS, Log.id)
    statement = listing.applied(select(Log).where(Log.tenant_id == run["tenant_id"], Log.flow_run_id == run["id"]))
    with context_of(info).read_sessions() as session:
        lines = list(session.scalars(statement))
    return paged(
        [
            {
                "id": f"00000000-0000-4000-8000-{line.id:012d}",
                "flow_run_id": line.flow_run_id,
                "task_run_id": line.task_run_id,
                "timestamp": line.timestamp,
                "level": _LEVELS.get(line.level, str(line.level)),
                "name": line.name,
                "message": line.message,
                "info": {"name": line.name, "levelno": line.level},
            }
            for line in lines
        ]
    )


# --- mutations -------------------------------------------------------------------------------------------------


@mutation.field("create_flow_run")
def _create_flow_run(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.FLOW_RUN_CREATE)
    context = context_of(info)

    def create() -> dict[str, Any]:
        with transaction(context.sessions) as session:
            run = prefect1_runs.create_flow_run(
                session, principal.tenant_id, input, context.server.max_task_runs_per_run
            )
            return {"id": run.id}

    return once_more_on_conflict(create)


@mutation.field("get_runs_in_queue")
def _runs_in_queue(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.AGENT_CLAIM)
    if input["tenant_id"] != principal.tenant_id:
        raise ObjectNotFound(f"tenant {input['tenant_id']} not found")
    labels = input.get("labels") or []
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(f"an agent has at most {MAX_LABELS} labels")
    try:
        labels = normalize_labels(labels)
    except ValueError as exc:
        raise InvalidRequest(f"labels: {exc}") from exc
    before = input.get("before") or datetime.now(UTC)
    context = context_of(info)
    with transaction(context.sessions) as session:
        if context.agent_id is not None:
            agents.touch(session, principal.tenant_id, context.agent_id)
        ids = prefect1_runs.runs_in_queue(session, principal.tenant_id, labels, before)
    return {"flow_run_ids": ids}


@mutation.field("set_flow_run_states")
def _set_flow_run_states(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.FLOW_RUN_SET_STATE)
    if principal.is_run_token:
        raise ObjectNotFound("a run token reaches no Prefect 1 run")  # none is ever issued one
    asked = input["states"]
    if len(asked) > MAX_STATES_PER_CALL:
        raise InvalidRequest(f"at most {MAX_STATES_PER_CALL} states per call")
    context = context_of(info)
    answers = []
    with transaction(context.sessions) as session:
        agent_id = agents.acting(session, principal, context.agent_id)
        for item in asked:
            held_by = None
            if runner_key(principal) is not None:
                # A runner key acts through its own agents: the agent naming itself, else the run's (its flow runner)
                held_by = agent_id or run_holder(session, principal, item["flow_run_id"])
            prefect1_runs.set_state(
                session,
                principal.tenant_id,
                item["flow_run_id"],
                item["state"],
                item.get("version"),
                agent_id,
                held_by=held_by,
            )
            answers.append({"id": item["flow_run_id"], "status": "SUCCESS", "message": None})
    return {"states": answers}


@mutation.field("cancel_flow_run")
def _cancel_flow_run(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.FLOW_RUN_CANCEL)
    with transaction(context_of(info).sessions) as session:
        return {"state": prefect1_runs.cancel(session, principal.tenant_id, input["flow_run_id"], None)}


@mutation.field("update_flow_run_heartbeat")
def _flow_run_heartbeat(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.FLOW_RUN_HEARTBEAT)
    with transaction(context_of(info).sessions) as session:
        run_holder(session, principal, input["flow_run_id"])
        prefect1_runs.heartbeat(session, principal.tenant_id, input["flow_run_id"])
    return {"success": True, "error": None}


@mutation.field("set_flow_run_name")
def _set_flow_run_name(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.FLOW_RUN_SET_STATE)
    with transaction(context_of(info).sessions) as session:
        run_holder(session, principal, input["flow_run_id"])
        prefect1_runs.rename(session, principal.tenant_id, input["flow_run_id"], input["name"])
    return {"success": True, "error": None}
