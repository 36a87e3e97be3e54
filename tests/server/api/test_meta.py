"""Health, identity (whoami) and API keys."""

from __future__ import annotations

import pytest

from baton import __version__
from baton.client import Client
from baton.exceptions import AuthenticationError, ClientError, PermissionDeniedError
from baton.schemas.core import Role
from baton.schemas.responses import ClaimedRun
from server.harness import TenantContext
from support import ServerProcess, local_get


def test_health_needs_no_key(api_server: ServerProcess) -> None:
    response = local_get(f"{api_server.url}/api/health")

    assert response.status_code == 200
    backend = "postgresql" if api_server.database_url.startswith("postgresql") else "sqlite"
    assert response.json() == {"status": "healthy", "version": __version__, "database": backend}


@pytest.mark.parametrize("role", ["admin", "user", "runner", "read"])
def test_whoami_names_tenant_and_role_of_the_key(tenant: TenantContext, role: str) -> None:
    me = tenant.client(tenant.key(role)).whoami()

    assert (me.tenant_id, me.tenant_name, me.role) == (tenant.id, tenant.name, Role(role))
    assert me.key_id is not None
    assert me.flow_run_id is None


def test_whoami_of_a_run_token_names_its_run(tenant: TenantContext, claimed: ClaimedRun) -> None:
    me = tenant.client(claimed.run_token).whoami()

    assert me.flow_run_id == claimed.flow_run.id
    assert me.role is None
    assert me.tenant_id == tenant.id


def test_admin_creates_keys_of_every_role_shown_once(admin: Client) -> None:
    created = admin.create_api_key("runner", name="agents")

    assert created.key.startswith("bat_")
    assert len(created.key) >= len("bat_") + 32
    assert created.role == Role.RUNNER
    assert created.name == "agents"
    assert created.prefix == created.key[:8]
    listed = {k.id: k for k in admin.list_api_keys()}
    assert listed[created.id].prefix == created.key[:8]
    assert "key" not in listed[created.id].model_dump()


def test_new_keys_are_different(admin: Client) -> None:
    keys = {admin.create_api_key("read").key for _ in range(5)}

    assert len(keys) == 5


@pytest.mark.parametrize("role", ["user", "runner", "read"])
def test_only_admin_may_create_or_list_keys(tenant: TenantContext, role: str) -> None:
    client = tenant.client(tenant.key(role))

    with pytest.raises(PermissionDeniedError, match=f"this key's role \\({role}\\) may not do this"):
        client.create_api_key("admin")
    with pytest.raises(PermissionDeniedError):
        client.list_api_keys()


def test_run_token_may_not_create_keys(tenant: TenantContext, claimed: ClaimedRun) -> None:
    with pytest.raises(PermissionDeniedError, match="a run token may only act on its own flow run"):
        tenant.client(claimed.run_token).create_api_key("admin")


def test_unknown_role_is_refused(admin: Client) -> None:
    with pytest.raises(ClientError) as excinfo:
        admin.create_api_key("superuser")

    assert excinfo.value.status_code == 422
    assert "role" in excinfo.value.detail


def test_unknown_key_is_refused(api_server: ServerProcess) -> None:
    with (
        Client(api_server.url, "bat_not-a-real-key-0000000000000000000000000") as client,
        pytest.raises(AuthenticationError, match="invalid, revoked or expired API key") as excinfo,
    ):
        client.whoami()
    assert excinfo.value.status_code == 401
