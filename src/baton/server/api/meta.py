"""Health, identity and API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sqlalchemy import text

from baton import __version__
from baton.schemas.actions import ApiKeyCreate
from baton.schemas.responses import ApiKeyCreated, ApiKeyRead, Health, WhoAmI
from baton.server import shaping
from baton.server.access import Action, Public, allow
from baton.server.api.deps import Db, transaction
from baton.server.errors import error_responses
from baton.server.json_body import JsonRoute
from baton.server.models import tenants
from baton.server.models.tenants import Principal

router = APIRouter(tags=["meta"], route_class=JsonRoute)


@router.get("/health", response_model=Health, dependencies=[Depends(Public(Action.HEALTH))])
def health(request: Request, db: Db) -> Health:
    """The server itself; no authentication. 503 when the database does not answer."""
    from fastapi import HTTPException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with transaction(db) as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise HTTPException(503, f"database unavailable: {type(exc).__name__}") from exc
    return Health(status="healthy", version=__version__, database=request.app.state.database_kind)


@router.get("/whoami", response_model=WhoAmI)
def whoami(principal: Annotated[Principal, allow(Action.WHOAMI)]) -> WhoAmI:
    return shaping.whoami(principal)


@router.post("/keys", response_model=ApiKeyCreated, status_code=201)
def create_key(
    payload: ApiKeyCreate, principal: Annotated[Principal, allow(Action.KEY_CREATE)], db: Db
) -> ApiKeyCreated:
    """Create a key in the caller's tenant (admin only). The key is in this answer and nowhere else."""
    with transaction(db) as session:
        key, secret = tenants.create_api_key(session, principal.tenant_id, payload.role, payload.name)
        return shaping.api_key_created(key, secret)


@router.get("/keys", response_model=list[ApiKeyRead])
def list_keys(principal: Annotated[Principal, allow(Action.KEY_LIST)], db: Db) -> list[ApiKeyRead]:
    with transaction(db) as session:
        return [shaping.api_key(k) for k in tenants.list_api_keys(session, principal.tenant_id)]


@router.delete("/keys/{key_id}", response_model=ApiKeyRead, responses=error_responses(409))
def revoke_key(key_id: str, principal: Annotated[Principal, allow(Action.KEY_REVOKE)], db: Db) -> ApiKeyRead:
    """Revoke a key of the caller's tenant (admin only): it stops working at once, and the agents it registered
    may be registered again by another key (key rotation)."""
    with transaction(db) as session:
        return shaping.api_key(tenants.revoke_api_key(session, principal.tenant_id, key_id, principal.key_id))
