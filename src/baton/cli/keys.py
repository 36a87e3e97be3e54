"""``baton key``: create, list and revoke API keys of the key's own tenant.

Usage::

    baton key create --role runner --name laptop-agent
    baton key list --json
    baton key revoke 3f2c...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from baton.cli.context import CliState, api_options, pass_state
from baton.cli.output import InputError, echo_json, print_fields, print_table
from baton.schemas.core import Role

if TYPE_CHECKING:
    from baton.client.http import Client

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _check_own_tenant(client: Client, tenant: str) -> None:
    """Refuse ``--tenant`` unless it names the key's own tenant: keys are created there only."""
    me = client.whoami()
    if tenant not in (me.tenant_id, me.tenant_name):
        raise InputError(
            f"--tenant {tenant!r}: this key belongs to tenant {me.tenant_name!r} ({me.tenant_id}), and an "
            "admin key creates keys only in its own tenant; use `baton server create-tenant` for a new tenant"
        )


@click.group()
def key() -> None:
    """Manage API keys (an admin key manages the keys of its own tenant)."""


@key.command()
@click.option(
    "--role",
    type=click.Choice([role.value for role in Role]),
    required=True,
    help="admin: everything; user: register, run, cancel, read; runner: agents; read: read only.",
)
@click.option("--name", help="A name to recognise the key by.")
@click.option(
    "--tenant",
    metavar="TENANT",
    help="Tenant id or name; must be the key's own tenant (a new tenant: `baton server create-tenant`).",
)
@_json_option
@api_options
@pass_state
def create(state: CliState, role: str, name: str | None, tenant: str | None, as_json: bool) -> None:
    """Create an API key in the tenant of the key in use, and print it (shown once)."""
    with state.client() as client:
        if tenant is not None:
            _check_own_tenant(client, tenant)
        created = client.create_api_key(role, name=name)
    if as_json:
        echo_json(created)
        return
    print_fields([("key", created.key), ("id", created.id), ("role", created.role.value), ("name", created.name)])
    click.echo("Keep the key: it is shown only once.", err=True)


@key.command("list")
@_json_option
@api_options
@pass_state
def list_keys(state: CliState, as_json: bool) -> None:
    """List the API keys of the tenant (their prefixes; keys themselves are never stored)."""
    with state.client() as client:
        keys = client.list_api_keys()
    if as_json:
        echo_json(keys)
        return
    rows = [(k.id, k.name, k.role.value, f"{k.prefix}...", k.created) for k in keys]
    print_table(["id", "name", "role", "prefix", "created"], rows, empty="No keys.")


@key.command()
@click.argument("key_id", metavar="ID")
@_json_option
@api_options
@pass_state
def revoke(state: CliState, key_id: str, as_json: bool) -> None:
    """Revoke API key ID (see `baton key list`): it stops working at once; agents it registered may then be
    registered with another key."""
    with state.client() as client:
        revoked = client.revoke_api_key(key_id)
    if as_json:
        echo_json(revoked)
        return
    click.echo(f"Revoked key {revoked.id} ({revoked.role.value}, {revoked.prefix}...).")
