"""``prefect auth`` of Prefect 1.4.1 against Baton: the tenant is found from the key, as the seed says agents do."""

from __future__ import annotations

import tomllib

from prefect1.conftest import Prefect1
from support import ServerProcess


def test_login_with_a_baton_key_finds_its_tenant_and_saves_the_key(prefect1: Prefect1, server: ServerProcess) -> None:
    me = server.client().whoami()

    login = prefect1.cli("auth", "login", "--key", server.admin_key)
    listed = prefect1.cli("auth", "list-tenants")

    assert login.returncode == 0, login.stdout + login.stderr
    assert f"Logged in to Prefect Cloud tenant {me.tenant_name!r} ({me.tenant_name})" in login.stdout
    saved = tomllib.loads((prefect1.home / ".prefect" / "auth.toml").read_text())
    assert [entry["tenant_id"] for entry in saved.values()] == [me.tenant_id]
    assert listed.returncode == 0, listed.stdout + listed.stderr
    row = [line.split() for line in listed.stdout.splitlines() if me.tenant_id in line]
    assert row == [[me.tenant_name, me.tenant_name, me.tenant_id, "*"]]


def test_login_with_a_key_baton_does_not_know_is_refused_as_unauthorized(prefect1: Prefect1) -> None:
    login = prefect1.cli("auth", "login", "--key", "bt_" + "x" * 43)

    assert login.returncode == 1
    assert "Unauthorized. Invalid Prefect Cloud API key." in login.stdout + login.stderr
    assert not (prefect1.home / ".prefect" / "auth.toml").exists()
