"""What a principal may see of run configs: ``read`` keys never get the values of a run config's ``env``.

Run-config environment variables often carry secrets (database passwords, tokens). Admins, users, runners (their
agents must hand the values to the flow-run process) and run tokens see them as registered; any other principal
(the ``read`` role, and any role added later until it is listed here) sees every value replaced by :data:`MASK`,
keys kept, so it can still tell which variables are set. Environment entries of a Kubernetes ``job_template``
(``env: [{name, value}]`` anywhere in it) are masked the same way.

Usage::

    return redact_flow_run(principal, flow_runs.to_read(session, [run])[0])
"""

from __future__ import annotations

from typing import Any

from baton.schemas.core import Role, RunConfig
from baton.schemas.responses import FlowRead, FlowRunRead
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


def redact_flow(principal: Principal, flow: FlowRead) -> FlowRead:
    """``flow`` as ``principal`` may see it."""
    if sees_secrets(principal):
        return flow
    return flow.model_copy(update={"run_config": mask_run_config(flow.run_config)})


def redact_flow_run(principal: Principal, run: FlowRunRead) -> FlowRunRead:
    """``run`` as ``principal`` may see it."""
    if sees_secrets(principal):
        return run
    return run.model_copy(update={"run_config": mask_run_config(run.run_config)})
