"""Response bodies (what the API returns)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from baton.schemas.core import Role, RunConfig, Storage

# Where the next page of a list starts (an opaque cursor), when the server cut the list short.
NEXT_CURSOR_HEADER = "X-Next-Cursor"


class WhoAmI(BaseModel):
    tenant_id: str
    tenant_name: str
    role: Role | None = None  # None for a run token
    key_id: str | None = None
    key_name: str | None = None
    flow_run_id: str | None = None  # set for a run token


class ApiKeyRead(BaseModel):
    id: str
    tenant_id: str
    name: str | None
    role: Role
    prefix: str
    created: datetime


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="the key itself; shown once, only its hash is stored")


class TenantCreated(BaseModel):
    id: str
    name: str
    admin_key: str


class FlowRead(BaseModel):
    id: str
    name: str
    version: int
    entrypoint: str
    storage: Storage
    run_config: RunConfig
    labels: list[str]
    parameters_schema: dict[str, Any]
    tasks: list[str]
    schedule: dict[str, Any] | None
    description: str | None
    source_filename: str | None
    created: datetime
    timeout_seconds: int | None = None  # @flow(timeout_seconds=...); the agent's --run-timeout may be shorter
    retries: int = 0  # @flow(retries=...): failed attempts run again this many times
    retry_delay_seconds: int = 0
    max_lateness_seconds: int | None = None  # a run later than this is skipped (Cancelled)
    max_concurrent_runs: int | None = None  # @flow(max_concurrent_runs=...); the latest version's value rules
    source: str | None = None  # included only on GET /api/flows/{id}?include_source=true
    # "baton", or "prefect1": registered by Prefect 1's client over GraphQL; its runs are Prefect 1's agents'
    kind: str = "baton"


class StateRead(BaseModel):
    name: str
    message: str | None
    timestamp: datetime
    data: dict[str, Any] | None = None


class FlowRunRead(BaseModel):
    id: str
    name: str
    flow_id: str
    flow_name: str
    flow_version: int
    state: str
    state_message: str | None
    labels: list[str]
    parameters: dict[str, Any]
    agent_id: str | None
    agent_name: str | None = Field(default=None, description="the name of the agent of agent_id (issue 9)")
    scheduled_start_time: datetime
    created: datetime
    start_time: datetime | None
    end_time: datetime | None
    deployment: dict[str, Any] | None
    run_config: RunConfig
    attempt: int = Field(default=1, description="1 for the first attempt; each flow-level retry adds one")
    retried_from: str | None = Field(default=None, description="the run this one re-runs (`baton runs retry`)")
    states: list[StateRead] = Field(default_factory=list)
    auto_scheduled: bool = Field(default=False, description="created by the flow's schedule (or a backfill)")
    schedule_key: str | None = Field(default=None, description="<flow>/<clock id>/<time>: unique per tenant")
    kind: str = Field(default="baton", description="baton, or prefect1: a run Prefect 1's agents take (GraphQL)")
    omitted: list[str] = Field(
        default_factory=list,
        description="heavy fields left empty in this list item (ask with ?include=): parameters, states",
    )


class FlowRunWithFlow(BaseModel):
    """A run and its flow, with the flow's source: what a flow-run process reads to start, in one request."""

    flow_run: FlowRunRead
    flow: FlowRead


class ClaimedRun(BaseModel):
    flow_run: FlowRunRead
    flow: FlowRead
    run_token: str = Field(description="scoped to this run; the agent hands it, never its own key, to the run")


class ClaimResponse(BaseModel):
    runs: list[ClaimedRun]


class AgentRead(BaseModel):
    id: str
    name: str
    type: str
    labels: list[str]
    agent_config_id: str | None
    created: datetime
    last_seen: datetime | None
    # Issue 9 (operations): liveness and the runs it holds. Defaults keep older servers' answers readable.
    live: bool = Field(default=True, description="seen within the server's agent_stale_seconds, not deregistered")
    stale: bool = Field(default=False, description="not live: unseen for agent_stale_seconds, or deregistered")
    deregistered_at: datetime | None = Field(default=None, description="when it deregistered (a warm stop)")
    current_run_count: int = Field(default=0, description="its runs in Pending, Submitted, Running or Cancelling")
    current_runs: list[str] = Field(default_factory=list, description="ids of those runs (at most 20)")


class AgentsPruned(BaseModel):
    pruned: list[AgentRead] = Field(description="the agents deleted (or, with dry_run, that would be)")
    dry_run: bool
    older_than_seconds: float


class HeartbeatResponse(BaseModel):
    cancel: list[str] = Field(description="flow runs whose deployments the agent must stop")
    failed: list[str] = Field(default_factory=list, description="runs this heartbeat marked Failed")


class FlowRunHeartbeatResponse(BaseModel):
    state: str


# A client that needs only the outcome of a state change sends this, and gets a StateChanged instead of the run.
PREFER_MINIMAL = "return=minimal"


class StateChanged(BaseModel):
    """The answer to a state change sent with ``Prefer: return=minimal`` (RFC 7240): the run's state after it (a
    Failed with retries left is Retrying). An older server answers the whole run, which reads as this too."""

    id: str
    state: str
    state_message: str | None = None


class LogRead(BaseModel):
    id: int
    flow_run_id: str
    task_run_id: str | None
    timestamp: datetime
    level: int
    name: str
    message: str


class LogsPage(BaseModel):
    logs: list[LogRead]
    next_offset: int = Field(description="pass as ?offset= to get the lines after these")


class LogsWritten(BaseModel):
    written: int
    # Lines of the batch not stored because the run's log quota is spent (counted in the run's marker line).
    dropped: int = 0


class TaskRunStatesSet(BaseModel):
    """What a batch of task-run states did: how many were applied, in order, and the task runs not found (not of
    this run, or no such id); those are skipped, the others applied."""

    applied: int
    missing: list[str] = Field(default_factory=list)


class TaskRunRead(BaseModel):
    id: str
    flow_run_id: str
    task_name: str
    state: str
    message: str | None
    attempt: int
    start_time: datetime | None
    end_time: datetime | None
    created: datetime


class AgentExplanation(BaseModel):
    agent_id: str
    name: str
    type: str
    labels: list[str]
    last_seen: datetime | None
    seconds_since_seen: float | None
    can_take: bool
    missing_labels: list[str]
    reason: str


class RunExplanation(BaseModel):
    flow_run_id: str
    state: str
    labels: list[str]
    scheduled_start_time: datetime
    late: bool
    summary: str
    agents: list[AgentExplanation] = Field(description="the live agents (stale ones are only counted)")
    stale_agents: int = Field(default=0, description="agents left out: unseen for agent_stale_seconds, or deregistered")
    stale_after_seconds: float | None = Field(default=None, description="the server's agent_stale_seconds")


class LabelLimitRead(BaseModel):
    """A tenant's limit on one label, and the runs that hold its slots now (Pending to Cancelling)."""

    label: str
    max_concurrent_runs: int
    active: int = Field(description="runs with this label that hold a slot now")
    created: datetime
    updated: datetime


class ErrorDetail(BaseModel):
    """An error answer: what went wrong, in one message (request validation's 422 lists the invalid fields instead)."""

    detail: str
    # A state change refused by the state machine (409): the run's state then, so that the caller need not read the
    # run to learn it (e.g. the flow-run process's Running, refused while its agent's Submitted is on its way).
    current_state: str | None = None


class Health(BaseModel):
    status: str
    version: str
    database: str


class ClockRead(BaseModel):
    id: str = Field(description="stable id of the clock's content; part of its runs' schedule_key")
    type: str
    summary: str
    clock: dict[str, Any] = Field(description="the clock as registered (schemas/schedules.py)")
    next_times: list[datetime] = Field(description="its next run times from now (paused or not)")


class ScheduleRead(BaseModel):
    flow_name: str
    flow_id: str
    flow_version: int
    active: bool = Field(description="false while paused (baton flows schedule pause)")
    clocks: list[ClockRead]
    next_run_time: datetime | None = Field(description="the earliest of the clocks' next times; None when paused")
    problem: str | None = Field(default=None, description="why a stored schedule is not used (it does not parse)")
    deleted_runs: int | None = Field(default=None, description="pause: the not-yet-started scheduled runs deleted")
    created_runs: int | None = Field(default=None, description="resume: the runs created at once")


class BackfillResult(BaseModel):
    flow_name: str
    start: datetime
    end: datetime
    created: int = Field(description="runs created by this request")
    existing: int = Field(description="times that already had their run (an earlier backfill or the scheduler)")
