"""Runs of Prefect 1 flows (issue 13): Baton flow runs of kind ``prefect1``, moved by Prefect 1's agents and runners.

The mapping (docs/design.md §11):

* A run is a Baton run: its Baton state follows the Prefect 1 states its agent and flow runner set
  (``prefect1_states``), through Baton's state machine and its history, notifications and counts. Prefect 1's own
  serialized state, its version and its context are kept beside (``prefect1_flow_runs``).
* Baton's agents never claim such a run (``claims`` skips the kind); Prefect 1's agents find it with
  :func:`runs_in_queue`, with the label rule Baton and Prefect 1 share.
* Taken from the queue, a run passes Pending on its way to Submitted, as every Baton run does; a flow runner started
  without an agent passes Pending and Submitted on its way to Running, each saying so.
* A state Baton set itself (recovery, a cancel through REST) is what Prefect 1 reads next (``from_baton``), and it
  counts in the version: a runner holding an older version meets Prefect 1's version lock.
* Task runs: ``prefect1_task_runs``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, exists, func, select, update
from sqlalchemy.orm import Session

from baton.exceptions import IllegalTransitionError
from baton.labels import MAX_LABELS, normalize_labels
from baton.schemas.core import json_value_problem
from baton.schemas.states import CLAIMABLE_STATES, FINAL_STATES, StateName
from baton.server.database.orm import Flow, FlowRun, FlowRunLabel, FlowRunState, Prefect1Flow, Prefect1FlowRun, utcnow
from baton.server.models import prefect1_flows, prefect1_task_runs
from baton.server.models import prefect1_states as states
from baton.server.models.concurrency import ClaimGate
from baton.server.models.errors import Conflict, IdempotencyConflict, InvalidRequest, ObjectNotFound, StaleState
from baton.server.models.flow_runs import MAX_TRANSITION_ATTEMPTS, label_rows, transition
from baton.server.models.flows import PREFECT1_KIND
from baton.server.models.ids import checked_id
from baton.server.models.names import random_run_name
from baton.server.models.prefect1_flows import checked_text

KIND = PREFECT1_KIND
MAX_INPUT_BYTES = 1024 * 1024  # parameters, context, run config of one run
MAX_QUEUE = 100  # flow runs one queue read returns (Prefect Server's queued_runs_returned_limit was 25)
_S = StateName


class VersionLocked(Conflict):
    """A runner's state change named a version the run has passed (Prefect 1's VERSION_LOCKING_ERROR)."""


@dataclass(frozen=True)
class Served:
    """A run's Prefect 1 state and version as its runners read them."""

    serialized_state: dict[str, Any]
    version: int
    state_start_time: datetime | None


def served(run: FlowRun, side: Prefect1FlowRun) -> Served:
    """The Prefect 1 state of ``run``: what its runners set last, or, when Baton moved the run since, Baton's."""
    if side.state_version == run.state_version:
        return Served(side.serialized_state, side.version, side.state_start_time)
    state = states.from_baton(run.state, run.state_message, run.scheduled_start_time)
    start = run.scheduled_start_time if run.state in CLAIMABLE_STATES else None
    return Served(state, side.version + run.state_version - side.state_version, start)


def _storable(what: str, value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        raise InvalidRequest(f"{what} must be a JSON {'object' if kind is dict else 'list'}")
    problem = json_value_problem(value)
    if problem is not None:
        raise InvalidRequest(f"{what}: {problem}")
    if len(json.dumps(value)) > MAX_INPUT_BYTES:
        raise InvalidRequest(f"{what} is at most {MAX_INPUT_BYTES} bytes of JSON")
    return value


def _flow_to_run(
    session: Session, tenant_id: str, flow_id: str | None, version_group_id: str | None
) -> tuple[Flow, Prefect1Flow]:
    joined = (
        select(Flow, Prefect1Flow)
        .join(Prefect1Flow, Prefect1Flow.flow_id == Flow.id)
        .where(Flow.tenant_id == tenant_id, Flow.kind == KIND)
    )
    if flow_id:
        found = session.execute(joined.where(Flow.id == checked_id("flow", flow_id))).first()
        if found is None:
            raise ObjectNotFound(f"Flow {flow_id} not found")
        if found[1].archived:
            raise InvalidRequest(f"Flow {flow_id} is archived.")
        return found[0], found[1]
    if not version_group_id:
        raise InvalidRequest("One of flow_id or version_group_id must be provided.")
    latest = joined.where(Prefect1Flow.version_group_id == version_group_id, Prefect1Flow.archived.is_(False))
    found = session.execute(latest.order_by(Flow.version.desc()).limit(1)).first()
    if found is None:
        raise ObjectNotFound(f"Version group {version_group_id} has no unarchived flows.")
    return found[0], found[1]


def _labels(asked: list[Any] | None, run_config: dict[str, Any] | None, flow: Prefect1Flow) -> list[str]:
    """Prefect Server 1's order: the labels asked for, else the run config's, else the flow's run config's, else
    its environment's."""
    serialized = flow.serialized_flow
    for candidate in (
        asked,
        None if run_config is None else run_config.get("labels") or [],
        None if serialized.get("run_config") is None else (serialized["run_config"] or {}).get("labels") or [],
        (serialized.get("environment") or {}).get("labels") or [],
    ):
        if candidate is not None:
            if not isinstance(candidate, list) or not all(isinstance(label, str) for label in candidate):
                raise InvalidRequest("labels must be a list of strings")
            if len(candidate) > MAX_LABELS:
                raise InvalidRequest(f"a run has at most {MAX_LABELS} labels")
            try:
                return normalize_labels(candidate)
            except ValueError as exc:
                raise InvalidRequest(f"labels: {exc}") from exc
    return []


def _parameters(asked: dict[str, Any], flow: Prefect1Flow) -> dict[str, Any]:
    """The flow's defaults overridden by ``asked``; every required Parameter must be given (Prefect Server 1)."""
    declared = [p for p in flow.serialized_flow.get("parameters") or [] if isinstance(p, dict)]
    values = {p["name"]: p["default"] for p in declared if p.get("default") is not None}
    values.update(asked)
    missing = sorted(p["name"] for p in declared if p.get("required") and p["name"] not in values)
    if missing:
        raise InvalidRequest(f"Required parameters were not supplied: {set(missing)}")
    return values


def _request_hash(asked: dict[str, Any], flow_id: str) -> str:
    canonical = json.dumps({**asked, "flow_id": flow_id}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_flow_run(
    session: Session, tenant_id: str, asked: dict[str, Any], max_task_runs: int, *, digest: str | None = None
) -> FlowRun:
    """Prefect 1's ``create_flow_run``: a Scheduled run of the flow (or of its version group's latest version),
    with a Pending task run per task; the run of an earlier create with the same idempotency key when there is one.

    ``digest``: what a REST create asked for, hashed as REST hashes it (REST's retries compare with it).

    Raises:
        IdempotencyConflict: the key was used for another request (409).
        IntegrityError: a concurrent create with the same key committed first (retry in a new transaction).
    """
    checked_text("version_group_id", asked.get("version_group_id"), prefect1_flows.MAX_KEY_LENGTH)
    key = checked_text("idempotency_key", asked.get("idempotency_key"), prefect1_flows.MAX_KEY_LENGTH)
    name = checked_text("flow_run_name", asked.get("flow_run_name"), 200)
    if key == "" or name == "":
        raise InvalidRequest("idempotency_key and flow_run_name must not be empty")
    flow, data = _flow_to_run(session, tenant_id, asked.get("flow_id"), asked.get("version_group_id"))
    digest = digest or _request_hash(asked, flow.id)
    if key is not None:
        existing = session.scalar(select(FlowRun).where(FlowRun.tenant_id == tenant_id, FlowRun.idempotency_key == key))
        if existing is not None:
            if existing.idempotency_hash != digest:
                raise IdempotencyConflict(f"idempotency key {key!r} was used for another run ({existing.id})")
            return existing
    parameters = _parameters(_storable("parameters", asked.get("parameters") or {}, dict), data)
    context = _storable("context", asked.get("context") or {}, dict)
    run_config = asked.get("run_config")
    if run_config is not None:
        _storable("run_config", run_config, dict)
    elif data.serialized_flow.get("run_config") is not None:
        run_config = data.serialized_flow["run_config"]
    labels = _labels(asked.get("labels"), asked.get("run_config"), data)
    now = utcnow()
    start = asked.get("scheduled_start_time") or now
    run = FlowRun(
        tenant_id=tenant_id,
        flow_id=flow.id,
        flow_name=flow.name,
        name=name or random_run_name(),
        parameters=parameters,
        labels=labels,
        label_count=len(labels),
        run_config={},  # Baton's run config: none; Prefect 1's is beside
        scheduled_start_time=start,
        state=_S.SCHEDULED.value,
        state_message="Flow run scheduled.",
        state_version=0,
        created=now,
        updated=now,
        idempotency_key=key,
        idempotency_hash=digest if key is not None else None,
        kind=KIND,
    )
    session.add(run)
    session.flush()
    session.add_all(FlowRunLabel(**row) for row in label_rows(run.id, tenant_id, now, labels))
    session.add(FlowRunState(flow_run_id=run.id, name=run.state, message=run.state_message, timestamp=now))
    scheduled = states.make("Scheduled", "Flow run scheduled.", start)
    session.add(
        Prefect1FlowRun(
            flow_run_id=run.id,
            tenant_id=tenant_id,
            version=1,
            state_version=0,
            state="Scheduled",
            serialized_state=scheduled,
            state_start_time=start,
            context=context,
            run_config=run_config,
        )
    )
    tasks = [task for task in data.serialized_flow.get("tasks") or [] if isinstance(task, dict)]
    prefect1_task_runs.create_for_run(session, tenant_id, run.id, tasks, max_task_runs, now)
    return run


def get(
    session: Session, tenant_id: str, flow_run_id: str, *, for_update: bool = False
) -> tuple[FlowRun, Prefect1FlowRun]:
    flow_run_id = checked_id("flow run", flow_run_id)
    query = (
        select(FlowRun, Prefect1FlowRun)
        .join(Prefect1FlowRun, Prefect1FlowRun.flow_run_id == FlowRun.id)
        .where(FlowRun.tenant_id == tenant_id, FlowRun.id == flow_run_id)
    )
    if for_update:
        query = query.with_for_update(of=FlowRun)
    found = session.execute(query.execution_options(populate_existing=True)).first()
    if found is None:
        raise ObjectNotFound(f"flow run {flow_run_id} not found")
    return found[0], found[1]


def runs_in_queue(session: Session, tenant_id: str, labels: list[str], before: datetime) -> list[str]:
    """Prefect 1's ready queue: the tenant's Scheduled (or Retrying) runs due by ``before`` whose labels the agent's
    cover (a run without labels only for an agent without labels), earliest start first."""
    start = _due()
    gate = ClaimGate.open(session, tenant_id)  # Baton's concurrency limits: runs of a full limit wait in the queue
    foreign = exists().where(FlowRunLabel.flow_run_id == FlowRun.id, FlowRunLabel.label.not_in(labels or [""]))
    label_rule = and_(FlowRun.label_count > 0, ~foreign) if labels else FlowRun.label_count == 0
    query = (
        select(FlowRun.id)
        .join(Prefect1FlowRun, Prefect1FlowRun.flow_run_id == FlowRun.id)
        .where(
            FlowRun.tenant_id == tenant_id,
            FlowRun.kind == KIND,
            FlowRun.state.in_([state.value for state in CLAIMABLE_STATES]),
            start <= before,
            label_rule,
            *gate.excluded(),
        )
        .order_by(start, FlowRun.created)
        .limit(MAX_QUEUE)
    )
    return [str(run_id) for run_id in session.scalars(query)]


def _due() -> Any:
    """When a waiting run is due: its Prefect 1 state's start time when its runners set the state it is in, else
    Baton's (a run Baton put back in the queue)."""
    return case(
        (
            Prefect1FlowRun.state_version == FlowRun.state_version,
            func.coalesce(Prefect1FlowRun.state_start_time, FlowRun.scheduled_start_time),
        ),
        else_=FlowRun.scheduled_start_time,
    )


def _steps(current: StateName, target: StateName, who: str) -> list[tuple[StateName, str | None]]:
    """The Baton transitions that take a run from ``current`` to ``target``: Pending on the way to Submitted
    (taken from the queue), Pending and Submitted on the way to Running for a runner started without an agent."""
    if target == _S.SUBMITTED and current in CLAIMABLE_STATES:
        return [(_S.PENDING, f"taken from the queue by {who}"), (_S.SUBMITTED, None)]
    if target == _S.RUNNING and current in CLAIMABLE_STATES:
        return [
            (_S.PENDING, "taken by a Prefect 1 flow runner started without an agent"),
            (_S.SUBMITTED, "no deployment: the flow runner was started by hand"),
            (_S.RUNNING, None),
        ]
    return [(target, None)]


def set_state(
    session: Session,
    tenant_id: str,
    flow_run_id: str,
    state: Any,
    version: int | None,
    agent_id: str | None,
    *,
    held_by: str | None = None,
) -> int:
    """Set a Prefect 1 state on the run; returns the run's new version. ``agent_id``: the agent taking it from the
    queue, if it is taken now.

    ``held_by``: the agent of a runner key (access decided which): the run must be that agent's, or be taken from
    the queue now (by ``agent_id``); a run another agent took meanwhile is not changed (StaleState).

    Raises:
        VersionLocked: a Running state naming a version that is not the run's (VERSION_LOCKING_ERROR).
        IllegalTransitionError: Baton's state machine refuses (e.g. the run ended).
    """
    checked = states.checked(state, states.FLOW_RUN_STATES)
    for _attempt in range(MAX_TRANSITION_ATTEMPTS):
        run, side = get(session, tenant_id, flow_run_id, for_update=True)
        now_served = served(run, side)
        if _unchanged_end(run, now_served, checked):
            return now_served.version  # the same end told twice (a runner repeating itself): nothing changes
        target, current = states.FLOW_RUN_STATES[states.type_of(checked)], StateName(run.state)
        _check(session, run, now_served, checked, version, held_by)
        message = states.message_of(checked)
        try:
            if target is not None and target != current:
                who = f"Prefect 1 agent {agent_id}" if agent_id else "a Prefect 1 agent"
                for step, note in _steps(current, target, who):
                    extra = {"agent_id": agent_id} if step == _S.PENDING and agent_id else None
                    transition(session, run, step, note or message, None, extra, retry=False)
        except StaleState:
            session.expire_all()
            continue
        start = states.start_time(checked)
        if target in CLAIMABLE_STATES and start is not None:
            run.scheduled_start_time = min(run.scheduled_start_time, start)
        new_version = now_served.version + 1
        session.execute(
            update(Prefect1FlowRun)
            .where(Prefect1FlowRun.flow_run_id == run.id)
            .values(
                version=new_version,
                state_version=run.state_version,
                state=states.type_of(checked),
                serialized_state=checked,
                state_start_time=start,
            )
        )
        if target in (_S.RUNNING, _S.SUBMITTED):
            run.heartbeat_at = utcnow()
        return new_version
    raise StaleState(f"flow run {flow_run_id} kept changing; try again")


def _unchanged_end(run: FlowRun, now_served: Served, checked: dict[str, Any]) -> bool:
    return run.state in FINAL_STATES and states.type_of(checked) == states.type_of(now_served.serialized_state)


def _check(
    session: Session,
    run: FlowRun,
    now_served: Served,
    checked: dict[str, Any],
    version: int | None,
    held_by: str | None,
) -> None:
    """Refuse what must not change the run (see :func:`set_state`)."""
    # Prefect 1's version lock guards entering Running (a run runs once): its agents send the version they read
    # before their own Submitted with a later Failed, which the lock must not refuse.
    if version is not None and states.is_running(checked) and version != now_served.version:
        raise VersionLocked(
            f"State update failed: flow run {run.id} is at version {now_served.version}, not {version} "
            "(another process changed its state)"
        )
    target, current = states.FLOW_RUN_STATES[states.type_of(checked)], StateName(run.state)
    if current in FINAL_STATES:
        raise IllegalTransitionError(current, states.type_of(checked), f"the run already ended ({current})")
    if target == _S.SUBMITTED and current not in CLAIMABLE_STATES:
        raise Conflict("State update failed: this run has already been submitted.")
    taking = target in (_S.SUBMITTED, _S.RUNNING) and current in CLAIMABLE_STATES
    if held_by is not None and not taking and run.agent_id != held_by:
        raise StaleState(f"flow run {run.id} is another agent's now")
    if taking and not ClaimGate.open(session, run.tenant_id).admit(run):
        # "State update failed": Prefect 1's agent then leaves the run in the queue for a later poll.
        raise Conflict(f"State update failed: flow run {run.id} waits for a slot of its concurrency limits")


def cancel(session: Session, tenant_id: str, flow_run_id: str, message: str | None) -> str:
    """Prefect Server 1's ``cancel_flow_run``: a running run becomes Cancelling (its flow runner stops it), one not
    started yet Cancelled; an ended run stays as it is. Returns the Prefect 1 type the run is in."""
    run, side = get(session, tenant_id, flow_run_id)
    current = served(run, side).serialized_state
    if states.is_finished(current):
        return states.type_of(current)
    kind = "Cancelling" if states.is_running(current) else "Cancelled"
    default = "Flow run is cancelling" if kind == "Cancelling" else "Flow run is cancelled"
    set_state(session, tenant_id, flow_run_id, states.make(kind, message or default), None, None)
    return kind


def heartbeat(session: Session, tenant_id: str, flow_run_id: str) -> None:
    flow_run_id = checked_id("flow run", flow_run_id)
    result = session.execute(
        update(FlowRun)
        .where(FlowRun.tenant_id == tenant_id, FlowRun.id == flow_run_id, FlowRun.kind == KIND)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ObjectNotFound(f"flow run {flow_run_id} not found")


def note_deployment(session: Session, run: FlowRun, deployment: str) -> None:
    """The agent's "Submitted for execution: <what>" line: what it deployed becomes the run's deployment, as a
    Baton agent's Submitted carries it."""
    if run.state in FINAL_STATES or run.deployment:
        return
    run.deployment = {"prefect1": deployment[:500]}


def rename(session: Session, tenant_id: str, flow_run_id: str, name: str) -> None:
    if not checked_text("name", name, 200):
        raise InvalidRequest("a flow run's name must not be empty")
    run, _side = get(session, tenant_id, flow_run_id)
    run.name = name


def state_type() -> Any:
    """SQL: the Prefect 1 type of a run's state as :func:`served` gives it (for ``where: {state: ...}``)."""
    from_baton = case(*((FlowRun.state == name.value, kind) for name, kind in states.FROM_BATON.items()))
    return case((Prefect1FlowRun.state_version == FlowRun.state_version, Prefect1FlowRun.state), else_=from_baton)
