"""``baton server``: start the API server, create tenants, migrate the database.

Usage::

    baton server start --port 4200
    baton server create-tenant acme --json
"""

from __future__ import annotations

import click

from baton.cli.context import CliState, pass_state
from baton.cli.output import LOG_LEVELS, InputError, echo_json, print_fields
from baton.exits import shut_down_cleanly

_database_url_option = click.option(
    "--database-url",
    metavar="URL",
    help="SQLAlchemy database URL. Default: $BATON__SERVER__DATABASE_URL, then SQLite in $BATON_HOME.",
)


def _check_tenant_name(name: str) -> None:
    """Apply the API's name rules here, so a bad name is one line, not a validation dump."""
    from pydantic import ValidationError

    from baton.schemas.actions import TenantCreate

    try:
        TenantCreate(name=name)
    except ValidationError as exc:
        problems = "; ".join(str(error["msg"]) for error in exc.errors(include_url=False))
        raise InputError(f"invalid tenant name {name!r}: {problems}") from None


@click.group()
def server() -> None:
    """Run and administer the API server."""


@server.command()
@click.option("--host", help="Interface to listen on. Default: 127.0.0.1 (from settings).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on. Default: 4200 (from settings).")
@_database_url_option
@click.option("--log-level", type=LOG_LEVELS, help="Server log level. Default: from settings.")
@click.option(
    "--forwarded-allow-ips",
    metavar="IPS",
    help="Comma-separated addresses (or CIDRs, or '*') of reverse proxies whose X-Forwarded-For is believed. "
    "Default: none, so clients are known by their real address.",
)
@pass_state
def start(
    state: CliState,
    host: str | None,
    port: int | None,
    database_url: str | None,
    log_level: str | None,
    forwarded_allow_ips: str | None,
) -> None:
    """Start the API server (blocks until stopped).

    On its first start with no tenant, the server creates tenant `default` and an admin key, and writes the
    key into $BATON_HOME/config.toml, so the CLI and local agents work without set-up.
    """
    trusted = None
    if forwarded_allow_ips is not None:
        trusted = [ip.strip() for ip in forwarded_allow_ips.split(",") if ip.strip()]
    settings = state.settings(
        server={"host": host, "port": port, "database_url": database_url, "forwarded_allow_ips": trusted},
        logging={"level": log_level.upper() if log_level else None},
    )
    from baton.server.main import serve

    serve(settings, log_level=settings.logging.level)
    shut_down_cleanly()


@server.command("create-tenant")
@click.argument("name")
@_database_url_option
@click.option("--json", "as_json", is_flag=True, help="Print the tenant as JSON.")
@pass_state
def create_tenant(state: CliState, name: str, database_url: str | None, as_json: bool) -> None:
    """Create tenant NAME and print its id and admin key (shown once).

    Works on the database directly, so it needs no running server and no key.
    """
    _check_tenant_name(name)
    settings = state.settings(server={"database_url": database_url})
    from baton.server.bootstrap import create_tenant as create

    tenant = create(settings, name)
    if as_json:
        echo_json(tenant)
        return
    print_fields([("tenant", tenant.name), ("id", tenant.id), ("admin key", tenant.admin_key)])
    click.echo("Keep the admin key: it is shown only once.", err=True)


@server.command()
@_database_url_option
@pass_state
def migrate(state: CliState, database_url: str | None) -> None:
    """Upgrade the database schema to the latest version (`server start` does this too)."""
    settings = state.settings(server={"database_url": database_url})
    from sqlalchemy.engine import make_url

    from baton.server.database.connection import create_database_engine, database_errors
    from baton.server.database.migrate import upgrade

    engine = create_database_engine(settings.database_url(), pool_size=settings.server.database_pool_size)
    try:
        with database_errors(settings.database_url()):
            upgrade(engine)
    finally:
        engine.dispose()
    shown = make_url(settings.database_url()).render_as_string(hide_password=True)
    click.echo(f"Database {shown} is up to date.")
