"""An agent's options: explicit arguments over settings over defaults, its name, logging and identity checks.

Usage::

    settings = resolve_settings(None, api={"url": "http://127.0.0.1:4200"}, agent={"labels": ["dev"]})
    name = default_agent_name("local")
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from pydantic import BaseModel, ValidationError

from baton.exceptions import ConfigurationError
from baton.labels import hostname_label
from baton.schemas.core import Role
from baton.schemas.responses import WhoAmI
from baton.settings import BatonSettings, load_settings

_AGENT_ROLES = {Role.RUNNER, Role.ADMIN}


def _merged(current: BaseModel, overrides: dict[str, Any]) -> BaseModel:
    given = {key: value for key, value in overrides.items() if value is not None}  # None: "not given"
    try:
        return type(current).model_validate({**current.model_dump(), **given})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"invalid agent option: {problems}") from exc


def resolve_settings(settings: BatonSettings | None, *, api: dict[str, Any], agent: dict[str, Any]) -> BatonSettings:
    """``settings`` (loaded from env and config file when None) with the explicit ``api`` and ``agent`` values.

    Values given as None are not explicit: they leave the settings' value in place.

    Raises:
        ConfigurationError: a value is invalid, or the environment or config file is.
    """
    base = settings if settings is not None else load_settings()
    return base.model_copy(update={"api": _merged(base.api, api), "agent": _merged(base.agent, agent)})


def default_agent_name(agent_type: str) -> str:
    """``<type>-agent-<hostname>``, cut to what the API accepts as a name."""
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", hostname_label()) or "host"
    return f"{agent_type}-agent-{host}"[:200]


def configure_agent_logging(level: str) -> None:
    """Set the agent logger's level; give it a handler when nothing else configured logging."""
    agent_logger = logging.getLogger("baton.agent")
    agent_logger.setLevel(level.upper())
    # Programmatic use (`LocalAgent().start()`) with logging unconfigured should still say what it does.
    if not agent_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s | %(message)s"))
        agent_logger.addHandler(handler)


def check_identity(who: WhoAmI, wanted_tenant_id: str | None) -> None:
    """Refuse to start with a key that cannot run an agent, or of another tenant than ``--tenant-id``.

    Raises:
        ConfigurationError: no tenant, a role other than runner/admin, or a tenant mismatch.
    """
    if not who.tenant_id:
        raise ConfigurationError("the API key belongs to no tenant: an agent needs a key of a tenant")
    if who.role not in _AGENT_ROLES:
        role = f"of role {who.role.value}" if who.role else "a run token"
        raise ConfigurationError(f"agents need a key with role runner (or admin); this key is {role}")
    if wanted_tenant_id and wanted_tenant_id != who.tenant_id:
        raise ConfigurationError(
            f"--tenant-id {wanted_tenant_id} does not match the key's tenant {who.tenant_id} ({who.tenant_name})"
        )
