"""First start of a local server, and tenant creation from the command line."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from baton.schemas.core import Role
from baton.schemas.responses import TenantCreated
from baton.server.database.connection import (
    create_database_engine,
    create_session_factory,
    database_errors,
    transaction,
)
from baton.server.database.migrate import upgrade
from baton.server.models import tenants
from baton.server.models.errors import InvalidRequest
from baton.settings import BatonSettings, write_config_values

logger = logging.getLogger("baton.server")
DEFAULT_TENANT = "default"


def client_url(settings: BatonSettings) -> str:
    """The URL local clients should use to reach a server bound to host:port."""
    host = settings.server.host
    if host in ("0.0.0.0", "", "::"):  # noqa: S104 - we are turning a wildcard bind into a loopback URL
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}"


def ensure_default_tenant(factory: sessionmaker[Session], settings: BatonSettings) -> TenantCreated | None:
    """With no tenant at all: create ``default`` and an admin key, and write them to config.toml (0600)."""
    with transaction(factory) as session:
        if tenants.count_tenants(session):
            return None
        tenant = tenants.create_tenant(session, DEFAULT_TENANT)
        _key, secret = tenants.create_api_key(session, tenant.id, Role.ADMIN, "default admin")
        created = TenantCreated(id=tenant.id, name=tenant.name, admin_key=secret)
    path = write_config_values("api", {"key": secret, "url": client_url(settings), "tenant_id": created.id})
    logger.info("first start: created tenant 'default' and an admin key, written to %s", path)
    return created


def create_tenant(settings: BatonSettings, name: str) -> TenantCreated:
    """Create a tenant and its first admin key directly in the database (a server-side admin command)."""
    from pydantic import ValidationError

    from baton.schemas.actions import TenantCreate

    try:
        TenantCreate(name=name)  # the same name rules as everywhere else
    except ValidationError as exc:
        message = exc.errors(include_url=False)[0]["msg"]
        raise InvalidRequest(f"invalid tenant name {name!r}: {message}") from exc
    engine = create_database_engine(settings.database_url(), 2)
    try:
        with database_errors(settings.database_url()):
            upgrade(engine)
            with transaction(create_session_factory(engine)) as session:
                tenant = tenants.create_tenant(session, name)
                _key, secret = tenants.create_api_key(session, tenant.id, Role.ADMIN, f"{name} admin")
                return TenantCreated(id=tenant.id, name=tenant.name, admin_key=secret)
    finally:
        engine.dispose()
