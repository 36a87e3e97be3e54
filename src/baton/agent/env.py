"""The environment of a flow-run process (DESIGN.md §6), the same for every agent type.

Precedence, lowest first: the agent's ``--env`` values, then the run config's ``env``, then the ``BATON_`` values
the agent sets, which always win: a run config must not be able to point its run at another API or key.

"Win" has to hold case-insensitively: the flow-run process reads its settings with pydantic-settings, which
matches variable names without regard to case, so a run config's ``baton__api__url`` would compete with the
agent's ``BATON__API__URL`` (and which one is read depends on dict order). Agent and run-config variables whose
upper-cased name starts with ``BATON_`` are therefore dropped, and a driver that passes on its own environment drops
the case-variants of the reserved names from it (:func:`without_case_variants`).

A driver that starts processes on the agent's host (the local agent) passes on only an allow-list of its own
environment (:data:`INHERITED_NAMES`, ``LC_*``, ``BATON__LOGGING__*``) with the HOME, USER and LOGNAME of the user
the flow runs as (:func:`inherited_environment`): nothing else of the agent's (``BATON_HOME``, other ``BATON__*``,
its key, supervisord's variables, whatever its shell held) reaches flow code. What a flow needs beyond that is given
with ``--env``.

Usage::

    env = build_run_env(claimed, api_url=url, tenant_id=tenant, agent_env={"A": "1"})
    base = inherited_environment(os.environ, home="/home/flows", user="flows")
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping

from baton.schemas.responses import ClaimedRun

logger = logging.getLogger("baton.agent")

# The variables the agent sets on every flow run (DESIGN.md §6).
RESERVED_NAMES = frozenset(
    {
        "BATON__API__URL",
        "BATON__API__KEY",
        "BATON_FLOW_RUN_ID",
        "BATON_FLOW_ID",
        "BATON_TENANT_ID",
        "BATON__AGENT__LABELS",
        "BATON__LOGGING__SEND_TO_API",
    }
)


# What a flow-run process of the local agent inherits from the agent's environment: how to find programs and
# Python, the locale and time zone, temp files, proxies and CA certificates (the flow talks to the API as the
# agent does). Documented in docs/design.md §6 "Flow-run environment".
INHERITED_NAMES = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONUNBUFFERED",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONHASHSEED",
        "PYTHONFAULTHANDLER",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        *(name for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY") for name in (proxy, proxy.lower())),
    }
)
# BATON__LOGGING__*: the engine's log level and batching follow the agent's environment (no secret in them; the
# reserved BATON__LOGGING__SEND_TO_API still wins).
INHERITED_PREFIXES = ("LC_", "BATON__LOGGING__")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def inherited_environment(environ: Mapping[str, str], *, home: str, user: str) -> dict[str, str]:
    """The allow-listed part of ``environ``, with ``HOME``, ``USER`` and ``LOGNAME`` of the flow's user."""
    env = {
        name: value for name, value in environ.items() if name in INHERITED_NAMES or name.startswith(INHERITED_PREFIXES)
    }
    env.setdefault("PATH", DEFAULT_PATH)
    env.update({"HOME": home, "USER": user, "LOGNAME": user})
    return env


def _is_baton_name(name: str) -> bool:
    return name.upper().startswith("BATON_")


def without_case_variants(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without variables that spell a reserved name in another case (``baton__api__url``).

    The exact reserved names stay: the run's own values replace them.
    """
    return {name: value for name, value in env.items() if name in RESERVED_NAMES or name.upper() not in RESERVED_NAMES}


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
        Only the variables Baton decides; a driver adds its platform's base environment under them (without the
        case-variants of the reserved names: :func:`without_case_variants`).
    """
    env: dict[str, str] = {}
    dropped: list[str] = []
    for source in (agent_env or {}, claimed.flow_run.run_config.env):
        for name, value in source.items():
            if _is_baton_name(name):
                dropped.append(name)
            else:
                env[name] = value
    if dropped:
        logger.warning(
            "run %s: ignoring %s from the agent's --env or the run config: BATON_ variables are set by the agent",
            claimed.flow_run.id,
            ", ".join(sorted(set(dropped))),
        )
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


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (of an API URL) is this machine's loopback: unreachable as such from a container or pod."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
