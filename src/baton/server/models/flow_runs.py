"""Flow runs: creation (label rule, parameter checks), reads, and every state transition.

All transitions go through :func:`transition`: it validates against the state machine and writes with a
compare-and-set on ``state_version`` in the caller's transaction, so two writers can never both move a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import Select, Text, and_, bindparam, cast, func, or_, select, update
from sqlalchemy.orm import QueryableAttribute, Session, defer
from sqlalchemy.orm.attributes import set_committed_value

from baton.schemas.actions import FlowRunCreate
from baton.schemas.core import RunConfig, json_value_problem
from baton.schemas.responses import FlowRunRead, StateRead
from baton.schemas.states import CLAIMABLE_STATES, FINAL_STATES, StateName, check_transition
from baton.server.database.orm import Agent, Flow, FlowRun, FlowRunLabel, FlowRunState, table_of, utcnow
from baton.server.models import cursors, notifications, prefect1_states, prefect1_task_runs, retries
from baton.server.models import flows as flow_queries
from baton.server.models.errors import IdempotencyConflict, ObjectNotFound, StaleState
from baton.server.models.identity import already_loaded
from baton.server.models.ids import checked_id
from baton.server.models.logs import with_dropped_note
from baton.server.models.names import random_run_name
from baton.server.models.parameters import check_parameters

MAX_TRANSITION_ATTEMPTS = 5

logger = logging.getLogger("baton.server")


def resolve_run_labels(explicit: list[str] | None, flow: Flow) -> list[str]:
    """DESIGN.md §4: explicit labels, else the run config's labels, else the flow's labels."""
    if explicit is not None:
        return explicit
    run_config_labels = list(flow.run_config.get("labels") or [])
    return sorted(set(run_config_labels)) if run_config_labels else list(flow.labels)


def label_rows(run_id: str, tenant_id: str, created: datetime, labels: list[str]) -> list[dict[str, Any]]:
    """The run's ``flow_run_labels`` rows, each with the copies of the run's tenant and creation time that the list
    by label walks in order (migration 0013): every writer of labels makes them here."""
    return [{"flow_run_id": run_id, "label": label, "tenant_id": tenant_id, "created": created} for label in labels]


def request_hash(payload: FlowRunCreate, retried_from: str | None = None) -> str:
    """What a create asked for, canonically: a retry with the same idempotency key must ask the same."""
    asked = payload.model_dump(mode="json")
    if retried_from is not None:  # `runs retry` of another run is another request, even with equal parameters
        asked["retried_from"] = retried_from
    canonical = json.dumps(asked, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_flow_run_once(
    session: Session,
    tenant_id: str,
    payload: FlowRunCreate,
    idempotency_key: str | None,
    retried_from: str | None = None,
    max_task_runs: int = 10_000,
) -> tuple[FlowRun, bool]:
    """Create a run unless this tenant already made one with ``idempotency_key``; return it and whether it is new.

    The key is the client's name for one logical create: a retry whose first answer was lost finds the first run,
    across restarts and replicas, because the unique index on (tenant, key) decides, not this process's memory.
    Two creates with one key racing: the loser's flush raises IntegrityError, and the caller runs this again in a
    new transaction, which finds the winner's run. (No savepoint here: on SQLite a savepoint opened after a read
    would make the insert fail at once with "database is locked" whenever another writer committed meanwhile.)

    Raises:
        IdempotencyConflict: the key was used before for a different request (409).
        IntegrityError: a concurrent create with the same key committed first (retry in a new transaction).
    """
    if idempotency_key is None:
        return create_flow_run(
            session, tenant_id, payload, retried_from=retried_from, max_task_runs=max_task_runs
        ), True
    digest = request_hash(payload, retried_from)
    existing = _run_with_key(session, tenant_id, idempotency_key)
    if existing is None:
        run = create_flow_run(
            session,
            tenant_id,
            payload,
            idempotency=(idempotency_key, digest),
            retried_from=retried_from,
            max_task_runs=max_task_runs,
        )
        session.flush()
        return run, True
    if existing.idempotency_hash != digest:
        raise IdempotencyConflict(
            f"Idempotency-Key {idempotency_key!r} was used for a different request (flow run {existing.id}); "
            "use a new key for a new run"
        )
    return existing, False


def _run_with_key(session: Session, tenant_id: str, key: str) -> FlowRun | None:
    return session.scalar(select(FlowRun).where(FlowRun.tenant_id == tenant_id, FlowRun.idempotency_key == key))


def create_flow_run(
    session: Session,
    tenant_id: str,
    payload: FlowRunCreate,
    idempotency: tuple[str, str] | None = None,
    retried_from: str | None = None,
    max_task_runs: int = 10_000,
) -> FlowRun:
    """A Scheduled run of the flow; ``max_task_runs`` bounds a Prefect 1 flow's task runs made with it."""
    if payload.flow_id:
        flow = flow_queries.get_flow(session, tenant_id, payload.flow_id, source=False)
    else:
        assert payload.flow_name is not None  # guaranteed by FlowRunCreate's validator
        flow = flow_queries.find_flow(session, tenant_id, payload.flow_name, payload.flow_version, source=False)
    if flow.kind == flow_queries.PREFECT1_KIND:
        # A run for Prefect 1's agents, made as Prefect 1's client makes one (Baton's agents never take it).
        from baton.server.models import prefect1_runs  # imports this module

        asked = {
            "flow_id": flow.id,
            "parameters": payload.parameters,
            "labels": payload.labels,
            "flow_run_name": payload.name,
            "scheduled_start_time": payload.scheduled_start_time,
            "idempotency_key": idempotency[0] if idempotency else None,
        }
        digest = idempotency[1] if idempotency else None
        return prefect1_runs.create_flow_run(session, tenant_id, asked, max_task_runs, digest=digest)
    check_parameters(flow.parameters_schema, payload.parameters)
    labels = resolve_run_labels(payload.labels, flow)
    now = utcnow()
    run = FlowRun(
        tenant_id=tenant_id,
        flow_id=flow.id,
        flow_name=flow.name,
        name=payload.name or random_run_name(),
        parameters=payload.parameters,
        labels=labels,
        label_count=len(labels),
        run_config={**flow.run_config, "executor": payload.executor} if payload.executor else flow.run_config,
        scheduled_start_time=payload.scheduled_start_time or now,
        state=StateName.SCHEDULED.value,
        state_message=None,
        state_version=0,
        created=now,
        updated=now,
        idempotency_key=idempotency[0] if idempotency else None,
        idempotency_hash=idempotency[1] if idempotency else None,
        retried_from=retried_from,
    )
    session.add(run)
    session.flush()
    session.add_all(FlowRunLabel(**row) for row in label_rows(run.id, tenant_id, now, labels))
    session.add(FlowRunState(flow_run_id=run.id, name=run.state, message=None, timestamp=now))
    return run


# Built once, with bind parameters, like the other hottest statements: building a statement and its cache key cost
# about as much as running it (~60-80 of ~120-150 us per query here, issue 12).
_RUN_OF_TENANT = select(FlowRun).where(FlowRun.tenant_id == bindparam("tenant_id"), FlowRun.id == bindparam("id"))


def get_flow_run(session: Session, tenant_id: str, flow_run_id: str) -> FlowRun:
    flow_run_id = checked_id("flow run", flow_run_id)
    run = session.scalar(_RUN_OF_TENANT, {"tenant_id": tenant_id, "id": flow_run_id})
    if run is None:
        raise ObjectNotFound(f"flow run {flow_run_id} not found")
    return run


_RUN_ID_OF_TENANT = select(FlowRun.id).where(FlowRun.tenant_id == bindparam("tenant_id"), FlowRun.id == bindparam("id"))


def require_flow_run(session: Session, tenant_id: str, flow_run_id: str) -> None:
    """:func:`get_flow_run`'s check alone (ObjectNotFound), reading no column but the id."""
    flow_run_id = checked_id("flow run", flow_run_id)
    if session.connection().execute(_RUN_ID_OF_TENANT, {"tenant_id": tenant_id, "id": flow_run_id}).first() is None:
        raise ObjectNotFound(f"flow run {flow_run_id} not found")


@dataclass(frozen=True)
class RunFilter:
    state: str | None = None
    flow_name: str | None = None
    late_before: datetime | None = None  # only late runs: claimable and due before this time
    label: str | None = None  # only runs carrying this label
    created_after: datetime | None = None  # only runs created at or after this time


@dataclass
class RunPage:
    runs: list[FlowRun]
    next_cursor: str | None  # where the next page starts; None when this one is the last


# Every answer item carries this much besides its JSON columns (ids, names, times): the budget's estimate.
_ITEM_OVERHEAD = 600
# The heavy fields a list item leaves out unless asked for (``?include=``).
HEAVY_FIELDS = frozenset({"parameters", "states"})


def encode_cursor(run: FlowRun) -> str:
    return cursors.encode(run.created.isoformat(), run.id)


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises InvalidRequest for anything :func:`encode_cursor` did not make."""
    created, run_id = cursors.decode(cursor, str, str)
    try:
        return cursors.aware_timestamp(cursor, created), checked_id("flow run", run_id)
    except ObjectNotFound as exc:
        raise cursors.invalid(cursor) from exc


def _json_size(column: Any) -> Any:
    return func.coalesce(func.length(cast(column, Text)), 0)


def _item_size(include: frozenset[str]) -> Any:
    """SQL estimate of one run's bytes in a list answer, from the lengths of its JSON columns."""
    size = _json_size(FlowRun.run_config) + _json_size(FlowRun.labels) + _json_size(FlowRun.deployment)
    if "parameters" in include:
        size = size + _json_size(FlowRun.parameters)
    if "states" in include:
        per_state = _json_size(FlowRunState.data) + func.coalesce(func.length(FlowRunState.message), 0) + 100
        states = select(func.coalesce(func.sum(per_state), 0)).where(FlowRunState.flow_run_id == FlowRun.id)
        size = size + states.scalar_subquery()
    return size + _ITEM_OVERHEAD


Walked = QueryableAttribute[Any]  # a column the list walks in order: the run's, or its label row's copy


def _walk(tenant_id: str, where: RunFilter, include: frozenset[str]) -> tuple[Select[Any], Walked, Walked]:
    """The list's query before its cursor and order, and the (created, run id) columns it walks newest first.

    Each filter that grows with the history has an index that walks its runs newest first, so that a page reads
    about a page of rows however many runs the tenant has (issue 12): (tenant_id, flow_name, created) on the run's
    copy of its flow's name, (tenant_id, label, created) on the label rows' copies of their run's tenant and creation
    time, (tenant_id, state, created). With several filters, the one walked is the one that surely narrows most,
    as SQLite (never analyzed) cannot tell: a state not final (the runs in flight: few, however long the history),
    else the flow (labels mostly come from their flow), else the label.
    """
    stmt = select(FlowRun.id, FlowRun.created, _item_size(include)).where(FlowRun.tenant_id == tenant_id)
    created: Walked = FlowRun.created
    run_id: Walked = FlowRun.id
    in_flight = bool(where.state) and where.state not in FINAL_STATES
    if where.state:
        stmt = stmt.where(FlowRun.state == where.state)
    if where.label is not None and not (in_flight or where.flow_name):
        stmt = stmt.join(FlowRunLabel, FlowRunLabel.flow_run_id == FlowRun.id).where(
            FlowRunLabel.tenant_id == tenant_id, FlowRunLabel.label == where.label
        )
        created, run_id = FlowRunLabel.created, FlowRunLabel.flow_run_id  # equal to the run's
    elif where.label is not None:
        # Per run, a lookup of the label row's key; the tenant lets PostgreSQL, which knows a label is rare, start
        # from the label's index instead.
        labelled = select(FlowRunLabel.flow_run_id).where(
            FlowRunLabel.flow_run_id == FlowRun.id,
            FlowRunLabel.tenant_id == tenant_id,
            FlowRunLabel.label == where.label,
        )
        stmt = stmt.where(labelled.exists())
    if where.flow_name:
        # In flight, the flow's name is tested per run (``|| ''`` keeps SQLite off the flow's index, which it would
        # otherwise prefer): walking the flow would read its whole history for the few runs in that state.
        flow_name = FlowRun.flow_name.concat("") if in_flight else FlowRun.flow_name
        stmt = stmt.where(flow_name == where.flow_name)
    if where.late_before is not None:
        claimable = [state.value for state in CLAIMABLE_STATES]
        stmt = stmt.where(FlowRun.state.in_(claimable), FlowRun.scheduled_start_time < where.late_before)
    if where.created_after is not None:
        stmt = stmt.where(created >= where.created_after)
    return stmt, created, run_id


def list_flow_runs(
    session: Session,
    tenant_id: str,
    where: RunFilter,
    *,
    limit: int = 50,
    offset: int = 0,
    cursor: str | None = None,
    include: frozenset[str] = frozenset(),
    max_bytes: int = 4 * 1024 * 1024,
) -> RunPage:
    """Newest first: up to ``limit`` runs, fewer when their estimated size passes ``max_bytes`` (at least one).

    The sizes are read first (one query of lengths), then only the rows that fit, without the heavy columns not in
    ``include``: a page never loads more than its budget, whatever the rows hold.
    """
    # No label or flow name holds NUL (NAME_FIELD), and PostgreSQL refuses to compare with one.
    if "\x00" in (where.label or "") or "\x00" in (where.flow_name or ""):
        return RunPage([], None)
    stmt, created, run_id = _walk(tenant_id, where, include)
    if cursor is not None:
        after, after_id = decode_cursor(cursor)
        stmt = stmt.where(or_(created < after, and_(created == after, run_id > after_id)))
        offset = 0
    stmt = stmt.order_by(created.desc(), run_id).limit(limit + 1).offset(offset)
    sizes = session.execute(stmt).all()
    chosen: list[str] = []
    total = 0
    for chosen_id, _created, size in sizes[:limit]:
        if chosen and total + int(size) > max_bytes:
            break
        chosen.append(chosen_id)
        total += int(size)
    query = select(FlowRun).where(FlowRun.id.in_(chosen))
    if "parameters" not in include:
        query = query.options(defer(FlowRun.parameters))
    by_id = {run.id: run for run in session.scalars(query)}
    runs = [by_id[chosen_id] for chosen_id in chosen if chosen_id in by_id]
    more = len(chosen) < len(sizes)
    return RunPage(runs, encode_cursor(runs[-1]) if more and runs else None)


def _validation_problem(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    return f"{'.'.join(str(part) for part in first['loc']) or 'value'}: {first['msg']}"


def stored_json_problems(run: FlowRun, omit: frozenset[str] = frozenset()) -> dict[str, str]:
    """The run's stored JSON fields that cannot be served as they are, with why (empty when all can).

    Input is checked before it is stored (``MAX_JSON_DEPTH``, finite numbers, storable text), but rows written
    before those checks, or straight into the database, may hold anything: one such row must not make every list
    and claim of its tenant fail (issue 8, item 3).
    """
    return _checked(run, omit)[0]


def _checked(run: FlowRun, omit: frozenset[str]) -> tuple[dict[str, str], RunConfig]:
    """The run's stored-field problems, and its run config as served (empty when it has a problem): validated once,
    as a list serves each run's config from this same check."""
    problems: dict[str, str] = {}
    checked: list[tuple[str, Any]] = [("deployment", run.deployment)]
    if "parameters" not in omit:  # an omitted field is not loaded (a list defers it): looking would load it
        parameters: Any = run.parameters  # typed dict, but a row written by hand may hold any JSON
        if not isinstance(parameters, dict):
            problems["parameters"] = "not a JSON object"
        checked.append(("parameters", parameters))
    for name, value in checked:
        problem = json_value_problem(value)
        if problem is not None:
            problems[name] = problem
    try:
        run_config = RunConfig.model_validate(run.run_config)
    except ValidationError as exc:
        problems["run_config"] = _validation_problem(exc)
        run_config = RunConfig()
    return problems, run_config


class _StateRow(Protocol):
    """What ``_state_read`` reads of a state-history row (``_STATE_HISTORIES``'s, or a ``FlowRunState``)."""

    flow_run_id: str
    name: str
    message: str | None
    timestamp: datetime
    data: Any


def _state_read(row: _StateRow) -> StateRead:
    """A state-history row as served."""
    data = row.data
    problem = json_value_problem(data)
    if problem is not None or not isinstance(data, dict | None):
        logger.warning(
            "flow run %s: stored data of state %s cannot be served (%s): left out", row.flow_run_id, row.name, problem
        )
        data = None
    return StateRead(name=row.name, message=row.message, timestamp=row.timestamp, data=data)


# What ``to_read`` reads beside the runs, built once: Core rows, no ORM objects, no statement built per answer
# (a GET of one run spent ~10% of its CPU building and loading these through the ORM).
_FLOW_NAMES = select(Flow.id, Flow.name, Flow.version).where(Flow.id.in_(bindparam("ids", expanding=True)))
_AGENT_NAMES = select(Agent.id, Agent.name).where(Agent.id.in_(bindparam("ids", expanding=True)))
_STATE_HISTORIES = (
    select(FlowRunState.flow_run_id, FlowRunState.name, FlowRunState.message, FlowRunState.timestamp, FlowRunState.data)
    .where(FlowRunState.flow_run_id.in_(bindparam("ids", expanding=True)))
    .order_by(FlowRunState.id)
)


def to_read(session: Session, runs: Sequence[FlowRun], omit: frozenset[str] = frozenset()) -> list[FlowRunRead]:
    """Convert runs to their API form, loading their flows and state histories in two queries.

    The fields named in ``omit`` (of :data:`HEAVY_FIELDS`) are left empty and listed in the item's ``omitted``.
    A stored JSON field that cannot be served (:func:`stored_json_problems`) is served empty and logged with the
    run's id, so the other runs of a list or a claim are served as usual; claims never hand out such a run
    (``claims.claim_runs`` fails it instead).
    """
    if not runs:
        return []
    run_ids = [run.id for run in runs]
    flow_ids = {run.flow_id for run in runs}
    # The flows' names and versions: (name, version) by id; a claim has the flows loaded, so no query.
    flows = {flow_id: (flow.name, flow.version) for flow_id, flow in already_loaded(session, Flow, flow_ids).items()}
    if flow_ids - flows.keys():
        rows = session.execute(_FLOW_NAMES, {"ids": list(flow_ids - flows.keys())})
        flows.update((flow_id, (name, version)) for flow_id, name, version in rows)
    agent_ids = {run.agent_id for run in runs if run.agent_id}
    # Lists show agents by name (issue 9): one query for all of them (none for a claiming agent's own).
    agent_names = {agent_id: agent.name for agent_id, agent in already_loaded(session, Agent, agent_ids).items()}
    if agent_ids - agent_names.keys():
        agent_rows = session.execute(_AGENT_NAMES, {"ids": list(agent_ids - agent_names.keys())})
        agent_names.update((agent_id, name) for agent_id, name in agent_rows)
    history: dict[str, list[StateRead]] = defaultdict(list)
    if "states" not in omit:
        for row in session.execute(_STATE_HISTORIES, {"ids": run_ids}):
            history[row.flow_run_id].append(_state_read(row))
    reads = []
    for run in runs:
        problems, run_config = _checked(run, omit)
        if problems:
            logger.warning("flow run %s: stored fields cannot be served, served empty: %s", run.id, problems)
        reads.append(
            FlowRunRead(
                id=run.id,
                name=run.name,
                flow_id=run.flow_id,
                flow_name=flows[run.flow_id][0],
                flow_version=flows[run.flow_id][1],
                state=run.state,
                state_message=run.state_message,
                labels=run.labels,
                parameters={} if "parameters" in omit or "parameters" in problems else run.parameters,
                agent_id=run.agent_id,
                agent_name=agent_names.get(run.agent_id) if run.agent_id else None,
                scheduled_start_time=run.scheduled_start_time,
                created=run.created,
                start_time=run.start_time,
                end_time=run.end_time,
                deployment=None if "deployment" in problems else run.deployment,
                run_config=run_config,
                attempt=run.attempt,
                retried_from=run.retried_from,
                states=history[run.id],
                auto_scheduled=run.schedule_key is not None,
                schedule_key=run.schedule_key,
                kind=run.kind,
                omitted=sorted(omit),
            )
        )
    return reads


def _side_effects(run: FlowRun, new_state: StateName, data: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """Columns that change with the state, besides the state itself."""
    values: dict[str, Any] = {}
    if new_state == StateName.SUBMITTED:
        # Deployment counts as the first sign of life: recovery measures silence from here until Running.
        values.update(deployment=data or {}, lease_expires_at=None, heartbeat_at=now)
    elif new_state == StateName.RUNNING:
        values.update(start_time=run.start_time or now, heartbeat_at=now)
    elif new_state in CLAIMABLE_STATES:
        # Back in the queue: whoever held it lets go, and its token dies with the claim.
        values.update(agent_id=None, lease_expires_at=None, run_token_hash=None, deployment=None)
    if new_state in FINAL_STATES:
        # Clearing the hash revokes the run token (DESIGN.md §2).
        values.update(end_time=now, run_token_hash=None, lease_expires_at=None)
    return values


_FLOW_RUNS = table_of(FlowRun)
_INSERT_STATE = table_of(FlowRunState).insert()


def transition(
    session: Session,
    run: FlowRun,
    new_state: StateName,
    message: str | None = None,
    data: dict[str, Any] | None = None,
    extra_values: dict[str, Any] | None = None,
    *,
    retry: bool = True,
) -> FlowRun:
    """Move ``run`` to ``new_state`` in the caller's transaction.

    A run asked to become Failed that has attempts left (``@flow(retries=N)``, ``models/retries.py``) becomes
    Retrying instead, unless ``retry`` is False (a failure marked by hand, or one a retry would only repeat): the
    failure is kept in the state history, and the run is back in the queue for its next attempt.

    Raises:
        IllegalTransitionError: the state machine forbids it (409).
        StaleState: another writer moved the run since it was read; re-read and decide again.
    """
    check_transition(run.state, new_state)
    # What the caller left pending goes first, as an autoflush did: the writes below bypass the ORM's unit of work
    # (Core statements on the session's connection, ~40% cheaper per state change than ORM objects and flushes).
    session.flush()
    now = utcnow()
    failure: tuple[str | None, dict[str, Any] | None] | None = None
    plan = retries.plan_retry(session, run, message, now) if new_state == StateName.FAILED and retry else None
    if plan is not None:
        check_transition(run.state, StateName.RETRYING)
        failure = (message, data)
        new_state, message, data = StateName.RETRYING, plan.message, None
        extra_values = {**(extra_values or {}), **plan.values}
    if new_state in FINAL_STATES:
        # Whoever ends the run, its final message says how many log lines were dropped (issue 8, item 8).
        message = with_dropped_note(message, run.logs_dropped or 0)
    values = {
        "state": new_state.value,
        "state_message": message,
        "state_version": run.state_version + 1,
        "updated": now,
        **_side_effects(run, new_state, data, now),
        **(extra_values or {}),
    }
    connection = session.connection()
    result = connection.execute(
        update(_FLOW_RUNS).where(_FLOW_RUNS.c.id == run.id, _FLOW_RUNS.c.state_version == run.state_version),
        values,
    )
    if result.rowcount != 1:
        # Nothing was written: callers retry or skip the run without a savepoint to roll back.
        raise StaleState(f"flow run {run.id} changed while this request was handled")
    for column, value in values.items():
        set_committed_value(run, column, value)
    history = [{"name": new_state.value, "message": message, "data": data}]
    if failure is not None:  # the failed attempt stays in the history, before the Retrying that follows it
        history.insert(0, {"name": StateName.FAILED.value, "message": failure[0], "data": failure[1]})
    for row in history:
        connection.execute(_INSERT_STATE, {**row, "flow_run_id": run.id, "timestamp": now})
    if new_state == StateName.CANCELLED and run.kind == flow_queries.PREFECT1_KIND:
        # Prefect Server 1 cancelled a cancelled run's unfinished task runs, whoever cancelled it.
        prefect1_task_runs.cancel_unfinished(session, run.id, prefect1_states.make("Cancelled", message))
    # Notification events go in this same transaction (an outbox): committed with the state, or not at all.
    notifications.enqueue_for_transition(session, run, new_state, message)
    return run


def record_heartbeat(session: Session, run: FlowRun) -> None:
    session.execute(
        update(FlowRun)
        .where(FlowRun.id == run.id)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
