"""The one place where rows become answers: what a principal may see of each object, redaction included.

Handlers (and any later transport: GraphQL, the web UI) return what these functions build and never convert or
redact by hand, so no route can forget to mask a secret. Conversions of single rows live beside their queries
(``models/*.to_read``) and are called from here only.

What is redacted: ``read`` keys never get the values of a run config's ``env``. Run-config environment variables
often carry secrets (database passwords, tokens). Admins, users, runners (their agents must hand the values to the
flow-run process) and run tokens see them as registered; any other principal (the ``read`` role, and any role added
later until it is listed here) sees every value replaced by :data:`MASK`, keys kept, so it can still tell which
variables are set. Environment entries of a Kubernetes ``job_template`` (``env: [{name, value}]`` anywhere in it)
are masked the same way.

Usage::

    return shaping.flow_run(session, principal, run)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from baton.schemas.core import Role, RunConfig
from baton.schemas.notifications import NotificationDeliveryRead, NotificationRuleRead
from baton.schemas.responses import (
    AgentRead,
    ApiKeyCreated,
    ApiKeyRead,
    ClaimedRun,
    ClaimResponse,
    FlowRead,
    FlowRunRead,
    LogRead,
    LogsPage,
    TaskRunRead,
    WhoAmI,
)
from baton.server.database.orm import Agent, ApiKey, Flow, FlowRun, Log, NotificationDelivery, NotificationRule, TaskRun
from baton.server.models import agent_fleet
from baton.server.models import agents as agent_queries
from baton.server.models import flow_runs as run_queries
from baton.server.models import flows as flow_queries
from baton.server.models import notifications as notification_queries
from baton.server.models import task_runs as task_run_queries
from baton.server.models.claims import ClaimResult
from baton.server.models.tenants import Principal

MASK = "********"

# Roles whose keys see run-config env values: they write them, or must pass them on to the flow-run process.
ROLES_SEEING_SECRETS = frozenset({Role.ADMIN, Role.USER, Role.RUNNER})


def sees_secrets(principal: Principal) -> bool:
    return principal.is_run_token or principal.role in ROLES_SEEING_SECRETS


def mask_run_config(run_config: RunConfig) -> RunConfig:
    """A copy of ``run_config`` with every env value replaced by :data:`MASK`."""
    changes: dict[str, Any] = {"env": dict.fromkeys(run_config.env, MASK)}
    if run_config.job_template is not None:
        changes["job_template"] = _mask_template_env(run_config.job_template)
    return run_config.model_copy(update=changes)


def _mask_template_env(node: Any) -> Any:
    """``node`` with the ``value`` of each ``env: [{name, value}]`` entry masked, at any depth."""
    if isinstance(node, list):
        return [_mask_template_env(item) for item in node]
    if not isinstance(node, dict):
        return node
    masked: dict[str, Any] = {}
    for key, value in node.items():
        if key == "env" and isinstance(value, list):
            masked[key] = [_mask_env_entry(entry) for entry in value]
        else:
            masked[key] = _mask_template_env(value)
    return masked


def _mask_env_entry(entry: Any) -> Any:
    if isinstance(entry, dict) and "value" in entry:
        return {**entry, "value": MASK}
    return _mask_template_env(entry)


def prefect1_run_config(principal: Principal, run_config: Any) -> Any:
    """A Prefect 1 run config (``{"type": "LocalRun", "env": {...}, ...}``, as its client serialized it) as
    ``principal`` may see it: the same masking as Baton's run configs (``env`` values, a job template's env)."""
    if sees_secrets(principal) or not isinstance(run_config, dict):
        return run_config
    masked = _mask_template_env(run_config)
    if isinstance(run_config.get("env"), dict):
        masked["env"] = dict.fromkeys(run_config["env"], MASK)
    return masked


def _redact_flow(principal: Principal, flow: FlowRead) -> FlowRead:
    """``flow`` as ``principal`` may see it."""
    if sees_secrets(principal):
        return flow
    return flow.model_copy(update={"run_config": mask_run_config(flow.run_config)})


def _redact_flow_run(principal: Principal, run: FlowRunRead) -> FlowRunRead:
    """``run`` as ``principal`` may see it."""
    if sees_secrets(principal):
        return run
    return run.model_copy(update={"run_config": mask_run_config(run.run_config)})


# --- answers -------------------------------------------------------------------------------------------------


def flow(principal: Principal, row: Flow, include_source: bool = False) -> FlowRead:
    return _redact_flow(principal, flow_queries.to_read(row, include_source))


def flows(principal: Principal, rows: Sequence[Flow]) -> list[FlowRead]:
    return [flow(principal, row) for row in rows]


def flow_runs(
    session: Session, principal: Principal, rows: Sequence[FlowRun], omit: frozenset[str] = frozenset()
) -> list[FlowRunRead]:
    """``rows`` as ``principal`` may see them, without the heavy fields named in ``omit`` (list answers)."""
    return [_redact_flow_run(principal, read) for read in run_queries.to_read(session, rows, omit)]


def flow_run(session: Session, principal: Principal, row: FlowRun) -> FlowRunRead:
    return flow_runs(session, principal, [row])[0]


# Agents read a claimed run's state, never its history, from the claim (one query less per claim).
_CLAIM_OMITS = frozenset({"states"})


def claimed(session: Session, principal: Principal, result: ClaimResult) -> ClaimResponse:
    """The runs an agent claimed, each with its flow and run token (without their state history: ``omitted``)."""
    runs = [run for run, _token in result.runs]
    flow_reads = {row.id: flow(principal, row) for row in result.flows}
    return ClaimResponse(
        runs=[
            ClaimedRun(flow_run=read, flow=flow_reads[read.flow_id], run_token=token)
            for read, (_run, token) in zip(flow_runs(session, principal, runs, _CLAIM_OMITS), result.runs, strict=True)
        ]
    )


def agent(row: Agent) -> AgentRead:
    return agent_queries.to_read(row)


def agents(rows: Sequence[Agent]) -> list[AgentRead]:
    return [agent(row) for row in rows]


def fleet(session: Session, rows: Sequence[Agent], stale_seconds: float) -> list[AgentRead]:
    """``rows`` with their liveness and the runs each holds (the fleet view: ``GET /api/agents``)."""
    return agent_fleet.fleet_reads(session, rows, stale_seconds)


def task_run(row: TaskRun) -> TaskRunRead:
    return task_run_queries.to_read(row)


def task_runs(rows: Sequence[TaskRun]) -> list[TaskRunRead]:
    return [task_run(row) for row in rows]


def log(row: Log) -> LogRead:
    return LogRead(
        id=row.id,
        flow_run_id=row.flow_run_id,
        task_run_id=row.task_run_id,
        timestamp=row.timestamp,
        level=row.level,
        name=row.name,
        message=row.message,
    )


def logs_page(rows: Sequence[Log], offset: int) -> LogsPage:
    return LogsPage(logs=[log(row) for row in rows], next_offset=rows[-1].id if rows else offset)


def whoami(principal: Principal) -> WhoAmI:
    return WhoAmI(
        tenant_id=principal.tenant_id,
        tenant_name=principal.tenant_name,
        role=principal.role,
        key_id=principal.key_id,
        key_name=principal.key_name,
        flow_run_id=principal.flow_run_id,
    )


def api_key(row: ApiKey) -> ApiKeyRead:
    """A key as listed: its prefix, never the key (only its hash is stored)."""
    return ApiKeyRead(
        id=row.id, tenant_id=row.tenant_id, name=row.name, role=Role(row.role), prefix=row.prefix, created=row.created
    )


def api_key_created(row: ApiKey, secret: str) -> ApiKeyCreated:
    """A new key, with the key itself: this answer is the only place it ever appears."""
    return ApiKeyCreated(**api_key(row).model_dump(), key=secret)


def notification_rules(session: Session, rules: Sequence[NotificationRule]) -> list[NotificationRuleRead]:
    """Rules with their recent deliveries. The webhook URL is shown as ``scheme://host[:port]/…`` to every
    principal, its author included: its path and query are often a credential (Slack's are)."""
    return notification_queries.rule_reads(session, rules)


def notification_delivery(session: Session, delivery: NotificationDelivery) -> NotificationDeliveryRead:
    return notification_queries.delivery_reads(session, [delivery])[0]
