"""The environment of a flow-run process (DESIGN.md §6), the same for every agent type.

Precedence, lowest first: the agent's ``--env`` values, then the run config's ``env``, then the ``BATON_`` values
the agent sets, which always win: a run config must not be able to point its run at another API or key.

Usage::

    env = build_run_env(claimed, api_url=url, tenant_id=tenant, agent_env={"A": "1"})
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from baton.schemas.responses import ClaimedRun


def build_run_env(
    claimed: ClaimedRun,
    *,
    api_url: str,
    tenant_id: str,
    agent_env: Mapping[str, str] | None = None,
    agent_labels: list[str] | None = None,
    send_logs_to_api: bool = True,
) -> dict[str, str]:
    """Environment variables for one claimed run.

    Args:
        claimed: the run as the claim returned it (its run config and its run token).
        api_url: the API the run talks to (the agent's).
        tenant_id: the tenant, from the agent's ``whoami``.
        agent_env: the agent's ``--env`` values.
        agent_labels: the agent's labels, passed on as a JSON list.
        send_logs_to_api: False under ``--no-cloud-logs``.

    Returns:
        Only the variables Baton decides; a driver adds its platform's base environment under them.
    """
    env: dict[str, str] = {}
    env.update(agent_env or {})
    env.update(claimed.flow_run.run_config.env)
    env.update(
        {
            "BATON__API__URL": api_url,
            # The run token, scoped to this one run: the agent's own key never leaves the agent.
            "BATON__API__KEY": claimed.run_token,
            "BATON_FLOW_RUN_ID": claimed.flow_run.id,
            "BATON_FLOW_ID": claimed.flow.id,
            "BATON_TENANT_ID": tenant_id,
            "BATON__AGENT__LABELS": json.dumps(sorted(agent_labels or [])),
            "BATON__LOGGING__SEND_TO_API": "true" if send_logs_to_api else "false",
        }
    )
    return env
