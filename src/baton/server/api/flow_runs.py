"""Flow runs: create, read, change state, cancel, explain, and the flow-run process's heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, TypeVar

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from baton.exceptions import IllegalTransitionError
from baton.schemas.actions import IDEMPOTENCY_KEY_PATTERN, MAX_INT, FlowRunCreate, StateSet
from baton.schemas.responses import (
    NEXT_CURSOR_HEADER,
    PREFER_MINIMAL,
    FlowRunHeartbeatResponse,
    FlowRunRead,
    FlowRunWithFlow,
    RunExplanation,
    StateChanged,
)
from baton.schemas.states import CLAIMABLE_STATES, FINAL_STATES, StateName
from baton.server import shaping
from baton.server.access import Action, Kind, allow, check_state_allowed, kind_of, run_holder
from baton.server.api.deps import CursorQuery, Db, NotifierDep, ReadDb, transaction
from baton.server.database.orm import FlowRun, utcnow
from baton.server.errors import error_responses
from baton.server.json_body import JsonRoute
from baton.server.limits import leave_admission
from baton.server.models import agents, concurrency, flow_runs, flows, logs, state_changes
from baton.server.models.errors import InvalidRequest
from baton.server.models.tenants import Principal
from baton.server.notifier import RunNotifier
from baton.server.prefer import parse_prefer
from baton.server.worker_threads import run_in_worker
from baton.settings import ServerSettings

router = APIRouter(prefix="/flow_runs", tags=["flow runs"], route_class=JsonRoute)

# A Running waiting for its agent's Submitted looks at the run again this often even if nothing woke it (a Submitted
# written by another replica wakes nobody here).
_LOOK_AGAIN_SECONDS = 1.0
# What a state change answers: the run (``/state``), the run with its flow (``/start``).
_Answer = TypeVar("_Answer", FlowRunRead, FlowRunWithFlow)


IDEMPOTENCY_KEY = Header(
    alias="Idempotency-Key",
    min_length=1,
    max_length=200,
    pattern=IDEMPOTENCY_KEY_PATTERN,
    description="The client's name for this one logical create (e.g. a UUID), sent again on a retry: a create "
    "with a key this tenant used before returns that run (200) instead of making a second one; a key reused "
    "for a different request is refused (409).",
)


@router.post(
    "",
    response_model=FlowRunRead,
    status_code=201,
    responses={
        200: {"model": FlowRunRead, "description": "A retry: the run made earlier with this Idempotency-Key."},
        **error_responses(404, 409),
    },
)
def create_flow_run(
    payload: FlowRunCreate,
    principal: Annotated[Principal, allow(Action.FLOW_RUN_CREATE)],
    db: Db,
    notifier: NotifierDep,
    response: Response,
    request: Request,
    idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None,
) -> FlowRunRead:
    limit = request.app.state.settings.server.max_task_runs_per_run  # a Prefect 1 flow's run gets its task runs
    try:
        with transaction(db) as session:
            run, created = flow_runs.create_flow_run_once(
                session, principal.tenant_id, payload, idempotency_key, max_task_runs=limit
            )
            result = shaping.flow_run(session, principal, run)
    except IntegrityError:
        if idempotency_key is None:
            raise
        # A concurrent create with the same key committed first: this one is its retry, and now finds its run.
        with transaction(db) as session:
            run, created = flow_runs.create_flow_run_once(
                session, principal.tenant_id, payload, idempotency_key, max_task_runs=limit
            )
            result = shaping.flow_run(session, principal, run)
    if created and result.scheduled_start_time <= utcnow():
        # After the commit (the woken agent must see the run): one waiting agent that can take it, not all of them.
        notifier.notify_run_threadsafe(principal.tenant_id, result.labels)
    elif created:
        notifier.notify_threadsafe(principal.tenant_id)  # due later: every waiter learns when (its next_due)
    else:
        response.status_code = 200
    return result


def _aware_time(text: str | None) -> datetime | None:
    """An ISO 8601 time with its offset (a bare number is not a time here, whatever pydantic would allow)."""
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidRequest(f"created_after: {text[:64]!r} is not an ISO 8601 time with an offset (e.g. ...Z)")
    return parsed


def _include(include: str | None) -> frozenset[str]:
    asked = frozenset(part.strip() for part in (include or "").split(",") if part.strip())
    unknown = asked - flow_runs.HEAVY_FIELDS
    if unknown:
        raise InvalidRequest(f"unknown include {sorted(unknown)}: choose from {sorted(flow_runs.HEAVY_FIELDS)}")
    return asked


@router.get("", response_model=list[FlowRunRead])
def list_flow_runs(
    principal: Annotated[Principal, allow(Action.FLOW_RUN_LIST)],
    db: ReadDb,
    request: Request,
    response: Response,
    state: Annotated[StateName | None, Query()] = None,
    flow_name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    cursor: CursorQuery = None,
    include: Annotated[
        str | None, Query(max_length=100, description="heavy fields to include: parameters,states")
    ] = None,
    late: Annotated[
        bool, Query(description="only late runs: Scheduled or Retrying, and due more than late_after_seconds ago")
    ] = False,
    label: Annotated[str | None, Query(max_length=128, description="only runs carrying this label")] = None,
    created_after: Annotated[
        str | None,
        Query(max_length=64, description="only runs created at or after this ISO 8601 time (with its offset)"),
    ] = None,
) -> list[FlowRunRead]:
    """Newest first. Items leave out ``parameters`` and ``states`` unless ``include`` names them; an answer stops
    at ``limit`` items or at the server's byte budget, and then ``X-Next-Cursor`` says where the next page starts."""
    wanted = _include(include)
    settings = request.app.state.settings.server
    late_before = utcnow() - timedelta(seconds=settings.late_after_seconds) if late else None
    with transaction(db) as session:
        page = flow_runs.list_flow_runs(
            session,
            principal.tenant_id,
            flow_runs.RunFilter(
                state.value if state else None, flow_name, late_before, label, _aware_time(created_after)
            ),
            limit=limit,
            offset=offset,
            cursor=cursor,
            include=wanted,
            max_bytes=request.app.state.settings.server.max_list_bytes,
        )
        items = shaping.flow_runs(session, principal, page.runs, flow_runs.HEAVY_FIELDS - wanted)
    if page.next_cursor is not None:
        response.headers[NEXT_CURSOR_HEADER] = page.next_cursor
    return items


@router.get("/{flow_run_id}", response_model=FlowRunRead)
def get_flow_run(
    flow_run_id: str, principal: Annotated[Principal, allow(Action.FLOW_RUN_READ)], db: ReadDb
) -> FlowRunRead:
    with transaction(db) as session:
        return shaping.flow_run(session, principal, flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id))


@router.get("/{flow_run_id}/with_flow", response_model=FlowRunWithFlow)
def get_flow_run_with_flow(
    flow_run_id: str, principal: Annotated[Principal, allow(Action.FLOW_RUN_READ)], db: ReadDb
) -> FlowRunWithFlow:
    """The run and its flow with its source: the flow-run process's first read, one request instead of two.

    Whoever may read a run may read its flow (a run token: its own run's flow only, as ``GET /api/flows/{id}``).
    """
    with transaction(db) as session:
        return _with_flow(session, principal, flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id))


def _with_flow(session: Session, principal: Principal, run: FlowRun) -> FlowRunWithFlow:
    flow = flows.get_flow(session, principal.tenant_id, run.flow_id)
    # Without the run's state history (``omitted``): the process reads its state, never its history.
    read = shaping.flow_runs(session, principal, [run], omit=frozenset({"states"}))[0]
    return FlowRunWithFlow(flow_run=read, flow=shaping.flow(principal, flow, include_source=True))


@router.post(
    "/{flow_run_id}/state",
    # Two answers, by the request's Prefer header: documented as either (the handler builds each as its model).
    response_model=None,
    responses={
        **error_responses(409),
        200: {
            "model": FlowRunRead | StateChanged,
            "description": f"The run; with `Prefer: {PREFER_MINIMAL}`, its id and state only (`StateChanged`).",
        },
    },
)
async def set_state(
    flow_run_id: str,
    payload: StateSet,
    principal: Annotated[Principal, allow(Action.FLOW_RUN_SET_STATE)],
    db: Db,
    notifier: NotifierDep,
    request: Request,
    prefer: Annotated[str | None, Header(alias="Prefer")] = None,
) -> FlowRunRead | JSONResponse:
    """Move the run to a new state; 409 with the reason when the state machine does not allow it.

    ``Prefer`` (RFC 7240) takes two preferences:

    - ``return=minimal``: the answer is the run's id and new state only, without the history, flow and agent that
      the whole run takes three more queries to read. The flow-run process and the agents send it.
    - ``wait=N``: a run token's Running, asked while its run is still Pending, waits up to N seconds (at most the
      server's ``max_state_wait_seconds``) for its agent's Submitted instead of a 409 at once: the process often
      starts before its agent has reported it, and under load a 409 and a retry cost more than the wait.
    """
    preferences = parse_prefer(prefer)
    answer = None if preferences.get("return") == "minimal" else shaping.flow_run
    run, result = await _set_state_waiting(db, notifier, request, principal, flow_run_id, payload, answer, preferences)
    if result is None:
        changed = StateChanged(id=run.id, state=run.state, state_message=run.state_message)
        return JSONResponse(changed.model_dump(mode="json"), headers={"Preference-Applied": PREFER_MINIMAL})
    return result


@router.post("/{flow_run_id}/start", response_model=FlowRunWithFlow, responses=error_responses(409))
async def start_flow_run(
    flow_run_id: str,
    principal: Annotated[Principal, allow(Action.FLOW_RUN_START)],
    db: Db,
    notifier: NotifierDep,
    request: Request,
    prefer: Annotated[str | None, Header(alias="Prefer")] = None,
) -> FlowRunWithFlow:
    """Set the run Running and answer it with its flow and the flow's source: the flow-run process's first call,
    one request where a read (``with_flow``) and a state change were two.

    As a Running through ``/state``: 409 naming the run's state when the state machine refuses (a run still Pending,
    Cancelling, already final or already Running), and ``Prefer: wait=N`` waits for the agent's Submitted first.
    The answer is read in the state change's transaction, so it shows the run Running.
    """
    running = StateSet(name=StateName.RUNNING)
    wanted = parse_prefer(prefer)
    _, result = await _set_state_waiting(db, notifier, request, principal, flow_run_id, running, _with_flow, wanted)
    assert result is not None  # an answer was asked for
    return result


async def _set_state_waiting(
    db: sessionmaker[Session],
    notifier: RunNotifier,
    request: Request,
    principal: Principal,
    flow_run_id: str,
    payload: StateSet,
    answer: Callable[[Session, Principal, FlowRun], _Answer] | None,
    preferences: dict[str, str],
) -> tuple[FlowRun, _Answer | None]:
    """The state change, waiting for the agent's Submitted first when the request may (``_submitted_wait``)."""
    check_state_allowed(principal, payload.name)
    server: ServerSettings = request.app.state.settings.server
    quota = logs.LogQuota.of(server)
    change = functools.partial(_change_state, db, notifier, principal, flow_run_id, payload, answer, quota)
    wait = _submitted_wait(request, principal, payload.name, preferences)
    if wait <= 0 or notifier.watched(flow_run_id):  # one waiting Running per run: another answers at once
        run, result = await run_in_worker(change)
    else:
        run, result = await _change_once_submitted(change, notifier, request, flow_run_id, wait)
    notifier.run_changed(flow_run_id)
    return run, result


def _change_state(
    db: sessionmaker[Session],
    notifier: RunNotifier,
    principal: Principal,
    flow_run_id: str,
    payload: StateSet,
    answer: Callable[[Session, Principal, FlowRun], _Answer] | None,
    quota: logs.LogQuota,
) -> tuple[FlowRun, _Answer | None]:
    """The state change and the log lines it carries, in one transaction (a worker thread): the run, and
    ``answer`` of it (None: no answer)."""
    with transaction(db) as session:
        if payload.logs:
            # Before the change: a final state revokes the token and closes the run to lines (after the grace).
            target = flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id)
            logs.write_logs(session, target, payload.logs, quota)
            session.expire(target)  # its counters changed under the ORM (the final message names dropped lines)
        held_by = run_holder(session, principal, flow_run_id)
        # A user key marks a run Failed by hand: that ends it, whatever retries its flow has left.
        by_hand = kind_of(principal) == Kind.USER
        run = state_changes.set_state(
            session,
            principal.tenant_id,
            flow_run_id,
            payload.name,
            payload.message,
            payload.data,
            held_by,
            retry=not by_hand,
            token_hash=principal.token_hash,
        )
        result = None if answer is None else answer(session, principal, run)
        freed = payload.name in FINAL_STATES and concurrency.is_limited(session, run)
    # Released, or a failed attempt now Retrying; freed: runs waiting for that slot may go now. Here, in the worker
    # thread: on PostgreSQL the news goes to the other replicas with a query.
    if run.state in CLAIMABLE_STATES or freed:
        notifier.notify_threadsafe(principal.tenant_id)
    return run, result


def _submitted_wait(request: Request, principal: Principal, name: StateName, preferences: dict[str, str]) -> float:
    """How long this request may wait for the run's Submitted: only a run token's Running that asks to."""
    if name != StateName.RUNNING or kind_of(principal) != Kind.RUN_TOKEN:
        return 0.0
    try:
        asked = float(preferences.get("wait", "0"))
    except ValueError:
        return 0.0
    most: float = request.app.state.settings.server.max_state_wait_seconds
    return min(asked, most) if math.isfinite(asked) else 0.0


async def _change_once_submitted(
    change: Callable[[], tuple[FlowRun, _Answer | None]],
    notifier: RunNotifier,
    request: Request,
    flow_run_id: str,
    wait: float,
) -> tuple[FlowRun, _Answer | None]:
    """``change`` (a Running); while it is refused because the run is still Pending, wait for the run to change and
    try again, until ``wait`` seconds have passed. Watched before the first try: a Submitted committed between the
    refusal and the wait is not missed. A Submitted made on another replica is seen at the next look
    (``_LOOK_AGAIN_SECONDS``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    with notifier.watch(flow_run_id) as changed:
        while True:
            changed.clear()
            try:
                return await run_in_worker(change)
            except IllegalTransitionError as exc:
                remaining = deadline - loop.time()
                if exc.current != StateName.PENDING or remaining <= 0 or notifier.closing:
                    raise
            # Waiting for the agent, not for the server: the request gives back its place among those in flight,
            # so that waiting processes cannot keep out their agents' Submitted (its body's bytes stay counted).
            leave_admission(request.scope)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, _LOOK_AGAIN_SECONDS))
            if await request.is_disconnected():  # the process is gone, or gave up: it must not be set Running now
                raise IllegalTransitionError(StateName.PENDING, StateName.RUNNING, "the request was abandoned")


@router.post("/{flow_run_id}/cancel", response_model=FlowRunRead, responses=error_responses(409))
def cancel_flow_run(
    flow_run_id: str, principal: Annotated[Principal, allow(Action.FLOW_RUN_CANCEL)], db: Db
) -> FlowRunRead:
    """Cancel: at once when not deployed yet; otherwise Cancelling until the agent stops the deployment."""
    with transaction(db) as session:
        return shaping.flow_run(session, principal, state_changes.cancel(session, principal.tenant_id, flow_run_id))


@router.get("/{flow_run_id}/explain", response_model=RunExplanation)
def explain_flow_run(
    flow_run_id: str, principal: Annotated[Principal, allow(Action.FLOW_RUN_EXPLAIN)], db: Db, request: Request
) -> RunExplanation:
    # An agent is live if it registered, long-polled or heartbeat within agent_stale_seconds (issue 9).
    stale_after = request.app.state.settings.server.agent_stale_seconds
    with transaction(db) as session:
        late_after = request.app.state.settings.server.late_after_seconds
        return agents.explain_run(session, principal.tenant_id, flow_run_id, stale_after, late_after)


@router.post("/{flow_run_id}/heartbeat", response_model=FlowRunHeartbeatResponse)
def flow_run_heartbeat(
    flow_run_id: str, principal: Annotated[Principal, allow(Action.FLOW_RUN_HEARTBEAT)], db: Db
) -> FlowRunHeartbeatResponse:
    """The flow-run process is alive; the answer's state tells it when it is being cancelled."""
    with transaction(db) as session:
        run = flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id)
        flow_runs.record_heartbeat(session, run)
        return FlowRunHeartbeatResponse(state=run.state)
