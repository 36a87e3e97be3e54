"""Request bodies (what clients send). Unknown fields are refused, and so are values of another JSON type than the
documented one (``strict=True`` on numbers and booleans: ``true`` is not an exit code, ``"5"`` not a limit)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import Field, field_validator, model_validator

from baton.labels import MAX_LABELS, normalize_labels, validate_label
from baton.schemas.core import (
    EXECUTOR_SPEC,
    MAX_CONCURRENT_RUNS,
    MAX_FLOW_RETRIES,
    MAX_TIMEOUT_SECONDS,
    Role,
    RunConfig,
    Storage,
    StrictModel,
)
from baton.schemas.json_schema import json_schema_problem
from baton.schemas.schedules import Schedule, schedule_problem
from baton.schemas.states import StateName, TaskRunState
from baton.schemas.storage_rules import storage_problem

NAME_FIELD = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.\-]*$")
# An agent process: a random id the agent makes at each start and sends with its claims and its deregistration, so the
# server can tell this process's stop from the stop of an earlier process under the same identity (migration 0014).
INSTANCE_MAX_LENGTH = 64
INSTANCE_PATTERN = r"^[A-Za-z0-9_-]+$"
MAX_SOURCE_BYTES = 5 * 1024 * 1024
MAX_LOGS_PER_BATCH = 1000
MAX_MESSAGE_LENGTH = 100_000
RESERVED_LOG_KEY_PREFIX = "baton:"


MAX_INT = 2**31 - 1  # fits every database's INTEGER: larger numbers are refused with 422, not stored


def _labels(value: list[str] | None) -> list[str] | None:
    return None if value is None else normalize_labels(value)


def _timestamp_text(value: Any) -> Any:
    """JSON has no timestamps: a number would be taken for seconds since 1970, which no client means to send."""
    if isinstance(value, int | float):
        raise ValueError("a timestamp is an ISO 8601 string with a timezone (e.g. 2026-01-01T09:00:00Z)")
    return value


def _utc(value: datetime | None) -> datetime | None:
    """Timestamps must carry an offset; they are stored in UTC, so one that leaves UTC's range is invalid."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("a timestamp needs a timezone (e.g. 2026-01-01T09:00:00Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("timestamp out of range") from exc


class TenantCreate(StrictModel):
    name: str = NAME_FIELD


# What an idempotency key may be: printable ASCII without spaces (the Idempotency-Key header, the UI's forms).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"


class ApiKeyCreate(StrictModel):
    role: Role
    name: str | None = Field(default=None, max_length=200)


class FlowCreate(StrictModel):
    name: str = NAME_FIELD
    entrypoint: str = Field(min_length=1, max_length=200, description="name of the @flow function in the source")
    source: str | None = Field(default=None, max_length=MAX_SOURCE_BYTES)
    source_filename: str | None = Field(default=None, max_length=4096)
    storage: Storage = Field(default_factory=Storage)
    run_config: RunConfig = Field(default_factory=RunConfig)
    labels: list[str] = Field(default_factory=list, max_length=MAX_LABELS)
    parameters_schema: dict[str, Any] = Field(default_factory=dict)
    tasks: list[str] = Field(default_factory=list, max_length=10_000)
    # Also a cron string, {"cron": ...}, {"interval": N} or a list of clocks: normalized (schemas/schedules.py).
    schedule: Schedule | None = None
    description: str | None = Field(default=None, max_length=10_000)
    timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        strict=True,
        description="the agent kills a run of this flow still going after this long and fails it (None: no limit)",
    )
    retries: int = Field(
        default=0, ge=0, le=MAX_FLOW_RETRIES, strict=True, description="failed attempts run again this many times"
    )
    retry_delay_seconds: int = Field(
        default=0, ge=0, le=MAX_TIMEOUT_SECONDS, strict=True, description="a retry is due this long after a failure"
    )
    max_lateness_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        strict=True,
        description="a run not started this long after it was due is skipped (Cancelled); None: never skipped",
    )
    max_concurrent_runs: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CONCURRENT_RUNS,
        strict=True,
        description="at most this many runs of the flow's name (any version) hold a slot at once (None: no limit)",
    )

    _norm_labels = field_validator("labels")(_labels)

    @field_validator("parameters_schema")
    @classmethod
    def _valid_json_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = json_schema_problem(value)
        if problem is not None:
            raise ValueError(f"not a valid JSON Schema {problem}")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule_fires(cls, value: Schedule | None) -> Schedule | None:
        problem = None if value is None else schedule_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _source_for_api_storage(self) -> FlowCreate:
        if self.storage.type == "api" and not self.source:
            raise ValueError("storage 'api' needs the flow's source")
        if self.storage.type == "local" and not self.storage.path:
            raise ValueError("storage 'local' needs a path")
        problem = storage_problem(self.storage, self.run_config)
        if problem is not None:
            raise ValueError(problem)
        self.run_config.labels = normalize_labels(self.run_config.labels)
        return self


class LabelLimitSet(StrictModel):
    """`baton limits set LABEL N`: at most N runs carrying LABEL hold a slot at once in the tenant."""

    label: str = Field(min_length=1, max_length=128)
    max_concurrent_runs: int = Field(ge=1, le=MAX_CONCURRENT_RUNS, strict=True)

    @field_validator("label")
    @classmethod
    def _valid_label(cls, value: str) -> str:
        return validate_label(value)


class FlowRunCreate(StrictModel):
    flow_id: str | None = Field(default=None, max_length=64)
    flow_name: str | None = Field(default=None, max_length=200)
    flow_version: int | None = Field(default=None, ge=1, le=MAX_INT, strict=True)
    name: str | None = Field(default=None, max_length=200)
    parameters: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] | None = Field(default=None, max_length=MAX_LABELS)
    scheduled_start_time: datetime | None = None
    # The run's executor for its submitted tasks (EXECUTOR_SPEC), over the flow's; kept in the run's run config.
    executor: str | None = Field(default=None, max_length=256, pattern=EXECUTOR_SPEC)

    _norm_labels = field_validator("labels")(_labels)

    _text_start = field_validator("scheduled_start_time", mode="before")(_timestamp_text)
    _utc_start = field_validator("scheduled_start_time")(_utc)

    @model_validator(mode="after")
    def _one_flow(self) -> FlowRunCreate:
        if not (self.flow_id or self.flow_name):
            raise ValueError("give flow_id or flow_name")
        return self


class LogEntry(StrictModel):
    # Chosen by the sender so a retried batch does not store its lines twice.
    key: str | None = Field(default=None, max_length=64)
    timestamp: datetime
    level: int = Field(default=20, ge=0, le=100, strict=True)
    name: str = Field(default="baton", max_length=500)
    message: str = Field(max_length=MAX_MESSAGE_LENGTH)
    # A task run id is a UUID (36 characters, the column's width: PostgreSQL refuses longer values with a 500).
    task_run_id: str | None = Field(default=None, max_length=36)

    _text_timestamp = field_validator("timestamp", mode="before")(_timestamp_text)
    _utc_timestamp = field_validator("timestamp")(_utc)

    @field_validator("key")
    @classmethod
    def _not_the_servers(cls, key: str | None) -> str | None:
        # The server's own lines (the log-quota marker) use keys under "baton:": a sender's line must not take one.
        if key is not None and key.startswith(RESERVED_LOG_KEY_PREFIX):
            raise ValueError(f"log keys starting with {RESERVED_LOG_KEY_PREFIX!r} are the server's")
        return key


class LogsCreate(StrictModel):
    logs: list[LogEntry] = Field(max_length=MAX_LOGS_PER_BATCH)


class StateSet(StrictModel):
    name: StateName
    message: str | None = Field(default=None, max_length=MAX_MESSAGE_LENGTH)
    data: dict[str, Any] | None = None
    logs: list[LogEntry] = Field(
        default_factory=list,
        max_length=MAX_LOGS_PER_BATCH,
        description="log lines of the run stored with the state change, in its transaction, as POST "
        ".../logs would store them (keys, quota, grace): a flow-run process sends its last lines with its final "
        "state. Refused with it (409), they are not stored.",
    )


class AgentRegister(StrictModel):
    name: str = NAME_FIELD
    type: str = Field(min_length=1, max_length=50, pattern=r"^[a-z][a-z0-9_-]*$")
    labels: list[str] = Field(default_factory=list, max_length=MAX_LABELS)
    agent_config_id: str | None = Field(default=None, max_length=200)
    version: str | None = Field(default=None, max_length=50)

    _norm_labels = field_validator("labels")(_labels)


class AgentPrune(StrictModel):
    """``POST /api/agents/prune``: delete agents not seen for ``older_than_seconds`` (default and least: the server's
    ``agent_stale_seconds``; a live agent is never pruned) or deregistered, that hold no run."""

    older_than_seconds: float | None = Field(default=None, gt=0, le=10 * 365 * 86400, strict=True)
    dry_run: bool = Field(default=False, strict=True)
    # Only these agents (of those the rules above allow): the CLI deletes what it showed and was confirmed.
    agent_ids: list[str] | None = Field(default=None, max_length=10_000)


class ClaimRequest(StrictModel):
    limit: int = Field(default=1, ge=1, le=100, strict=True)
    wait_seconds: float = Field(default=0.0, ge=0, le=120, strict=True)
    prefetch_seconds: float = Field(default=0.0, ge=0, le=3600, strict=True)
    # The agent process asking; None (agents before this field): the server judges by the call's start time.
    instance: str | None = Field(default=None, min_length=1, max_length=INSTANCE_MAX_LENGTH, pattern=INSTANCE_PATTERN)


class DeploymentStatus(StrictModel):
    flow_run_id: str = Field(max_length=64)
    alive: bool = Field(strict=True)
    exit_code: int | None = Field(default=None, strict=True)
    message: str | None = Field(default=None, max_length=MAX_MESSAGE_LENGTH)
    # The attempt this deployment ran: a report of an earlier attempt's end (a heartbeat sent as the run's retry was
    # claimed) must not end the next attempt. None (agents before this field): the run's current attempt.
    attempt: int | None = Field(default=None, ge=1, le=MAX_INT, strict=True)


class AgentHeartbeat(StrictModel):
    deployments: list[DeploymentStatus] = Field(default_factory=list, max_length=10_000)
    # The runs the agent holds claimed and not yet Submitted: only their leases are extended, so a claim the agent
    # does not know of (its answer was lost, or an earlier process of the same agent made it) expires and goes
    # back to the queue. None (agents before this field): every Pending run of the agent is extended.
    claims: list[str] | None = Field(default=None, max_length=10_000)
    # The agent process reporting, as on its claims: a heartbeat of the process that deregistered (one still under way
    # at its warm stop) does not make the agent live again. None (agents before this field): any heartbeat does.
    instance: str | None = Field(default=None, min_length=1, max_length=INSTANCE_MAX_LENGTH, pattern=INSTANCE_PATTERN)


class TaskRunCreate(StrictModel):
    task_name: str = Field(min_length=1, max_length=500)
    state: TaskRunState = TaskRunState.PENDING
    message: str | None = Field(default=None, max_length=MAX_MESSAGE_LENGTH)


# Task runs created in one request: a map's children (engine/reporter.py).
MAX_TASK_RUNS_PER_CREATE = 1000
# A message in a batch (task runs created, states set): 1,000 of them, each escaped to six bytes a character at
# worst, stay under the server's body limit (10 MB), so a batch the schema allows is never refused by size. A
# longer message goes with the one-at-a-time routes.
MAX_BATCH_MESSAGE_LENGTH = 1000


class TaskRunBatchItem(TaskRunCreate):
    message: str | None = Field(default=None, max_length=MAX_BATCH_MESSAGE_LENGTH)


class TaskRunsCreate(StrictModel):
    task_runs: list[TaskRunBatchItem] = Field(min_length=1, max_length=MAX_TASK_RUNS_PER_CREATE)


class TaskRunStateSet(StrictModel):
    state: TaskRunState
    message: str | None = Field(default=None, max_length=MAX_MESSAGE_LENGTH)
    attempt: int | None = Field(default=None, ge=1, le=MAX_INT, strict=True)


# Task-run states in one request: a flow-run process ships them in batches (engine/state_batches.py).
MAX_TASK_RUN_STATES = 1000


class TaskRunStateItem(TaskRunStateSet):
    """One state of a batch: which task run, and when it was entered by the flow process's clock (the server keeps
    it no later than its own now; None: the server's now)."""

    task_run_id: str = Field(min_length=1, max_length=64)
    message: str | None = Field(default=None, max_length=MAX_BATCH_MESSAGE_LENGTH)
    at: datetime | None = None

    @field_validator("at")
    @classmethod
    def _aware_utc(cls, at: datetime | None) -> datetime | None:
        if at is None:
            return None
        if at.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-12-06T10:00:00Z)")
        try:
            return at.astimezone(UTC)
        except OverflowError:
            raise ValueError("outside the range of UTC times") from None


class TaskRunStatesSet(StrictModel):
    states: list[TaskRunStateItem] = Field(min_length=1, max_length=MAX_TASK_RUN_STATES)
