"""First start of a local server (tenant ``default``, an admin key in config.toml) and tenant creation."""

from __future__ import annotations

import stat
import tomllib
from collections.abc import Callable

import pytest

from baton.client import Client
from baton.exceptions import AuthenticationError, NotFoundError
from baton.schemas.core import Role
from baton.server.bootstrap import client_url, create_tenant
from baton.server.models.errors import InvalidRequest
from baton.settings import load_settings
from server.harness import TenantContext, database_settings, unique
from support import ServerProcess


def test_first_start_creates_default_tenant_and_admin_key_in_config(api_server: ServerProcess) -> None:
    # api_server started on an empty $BATON_HOME: this is its first start.
    server = api_server
    config_file = server.home / "config.toml"

    config = tomllib.loads(config_file.read_text())["api"]

    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert config["key"].startswith("bat_")
    assert len(config["key"]) >= len("bat_") + 32
    assert config["url"] == server.url
    with Client(config["url"], config["key"]) as client:
        me = client.whoami()
    assert me.tenant_name == "default"
    assert me.tenant_id == config["tenant_id"]
    assert me.role == Role.ADMIN
    assert me.flow_run_id is None


def test_restart_keeps_the_tenant_and_the_key(start_server: Callable[..., ServerProcess]) -> None:
    # Given a server that started once and wrote its admin key
    first = start_server()
    key = first.admin_key
    with first.client() as client:
        tenant_id = client.whoami().tenant_id
    first.stop()

    # When a server starts again on the same $BATON_HOME
    second = start_server(home=first.home)

    # Then it creates no new tenant and the old key still works
    assert second.admin_key == key
    with second.client() as client:
        me = client.whoami()
    assert (me.tenant_id, me.tenant_name) == (tenant_id, "default")


def test_create_tenant_makes_a_working_admin_key_for_a_new_tenant(api_server: ServerProcess) -> None:
    name = unique("acme")

    created = create_tenant(database_settings(api_server), name)

    assert created.name == name
    assert created.admin_key.startswith("bat_")
    with Client(api_server.url, created.admin_key) as client:
        me = client.whoami()
    assert (me.tenant_id, me.tenant_name, me.role) == (created.id, name, Role.ADMIN)


def test_create_tenant_refuses_a_taken_name(tenant: TenantContext, api_server: ServerProcess) -> None:
    with pytest.raises(InvalidRequest, match=f"tenant '{tenant.name}' already exists"):
        create_tenant(database_settings(api_server), tenant.name)


@pytest.mark.parametrize("name", ["", "-leading-dash", "has/slash", "x" * 201])
def test_create_tenant_refuses_an_invalid_name(api_server: ServerProcess, name: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid tenant name"):
        create_tenant(database_settings(api_server), name)


def test_tenants_cannot_see_each_others_objects(tenant: TenantContext, other_tenant: TenantContext) -> None:
    # Given a flow and a run in the first tenant
    flow = tenant.register_flow()
    run = tenant.admin.create_flow_run(flow_name=flow.name)

    # Then the other tenant's admin key finds neither, by id or by name, nor in its lists
    other = other_tenant.admin
    with pytest.raises(NotFoundError):
        other.get_flow_run(run.id)
    with pytest.raises(NotFoundError):
        other.get_flow(flow.id)
    with pytest.raises(NotFoundError, match="flow 'hello' not found"):
        other.create_flow_run(flow_name="hello")
    with pytest.raises(NotFoundError):
        other.create_flow_run(flow_id=flow.id)
    assert other.list_flow_runs() == []
    assert other.list_flows() == []
    assert [k.tenant_id for k in other.list_api_keys()] == [other_tenant.id]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "http://127.0.0.1:4200"),
        ("0.0.0.0", "http://127.0.0.1:4200"),
        ("::", "http://127.0.0.1:4200"),
        ("::1", "http://[::1]:4200"),
        ("baton.example.com", "http://baton.example.com:4200"),
    ],
)
def test_client_url_turns_the_bind_address_into_a_reachable_url(baton_home: object, host: str, expected: str) -> None:
    assert client_url(load_settings(server={"host": host, "port": 4200})) == expected


def test_revoked_tenant_key_is_unknown(api_server: ServerProcess) -> None:
    with Client(api_server.url, "bat_" + "x" * 43) as client, pytest.raises(AuthenticationError):
        client.whoami()
