"""Prefect 1's agent configurations (issue 13, migration 0018): named JSON settings of a tenant that an agent started
with ``--agent-config-id`` reads, and that ``register_agent`` names."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from baton.schemas.core import json_value_problem
from baton.server.database.orm import Prefect1AgentConfig
from baton.server.models.errors import Conflict, InvalidRequest, ObjectNotFound
from baton.server.models.ids import checked_id
from baton.server.models.prefect1_flows import checked_text

MAX_PER_TENANT = 1000
MAX_SETTINGS_BYTES = 64 * 1024


def _settings(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("settings must be a JSON object")
    problem = json_value_problem(value)
    if problem is not None:
        raise InvalidRequest(f"settings: {problem}")
    if len(json.dumps(value)) > MAX_SETTINGS_BYTES:
        raise InvalidRequest(f"settings are at most {MAX_SETTINGS_BYTES} bytes of JSON")
    return value


def create(session: Session, tenant_id: str, name: str | None, settings: Any) -> Prefect1AgentConfig:
    checked_text("name", name, 200)
    count = session.scalar(select(func.count()).where(Prefect1AgentConfig.tenant_id == tenant_id)) or 0
    if count >= MAX_PER_TENANT:
        raise Conflict(f"this tenant has {count} agent configs, the most it may have")
    config = Prefect1AgentConfig(tenant_id=tenant_id, name=name, settings=_settings(settings))
    session.add(config)
    session.flush()
    return config


def get(session: Session, tenant_id: str, config_id: str) -> Prefect1AgentConfig:
    config_id = checked_id("agent config", config_id)
    found = session.scalar(
        select(Prefect1AgentConfig).where(
            Prefect1AgentConfig.tenant_id == tenant_id, Prefect1AgentConfig.id == config_id
        )
    )
    if found is None:
        raise ObjectNotFound(f"agent config {config_id} not found")
    return found


def update(session: Session, tenant_id: str, config_id: str, settings: Any) -> None:
    get(session, tenant_id, config_id).settings = _settings(settings)


def delete(session: Session, tenant_id: str, config_id: str) -> None:
    session.delete(get(session, tenant_id, config_id))
