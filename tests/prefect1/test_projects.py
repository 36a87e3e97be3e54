"""Prefect 1.4.1's ``prefect create project`` and ``prefect get projects``, and ``Client.create_project``, against
Baton: projects are the tenant's, found by name."""

from __future__ import annotations

import json

from prefect1.conftest import Prefect1
from support import ServerProcess


def test_create_project_then_get_projects_lists_it_with_its_description(prefect1: Prefect1) -> None:
    assert prefect1.cli("auth", "login", "--key", prefect1.server.admin_key).returncode == 0

    created = prefect1.cli("create", "project", "etl", "--description", "nightly loads")
    again = prefect1.cli("create", "project", "etl", "--skip-if-exists")
    listed = prefect1.cli("get", "projects")

    assert created.returncode == 0, created.stdout + created.stderr
    assert "etl created" in created.stdout
    assert "etl already exists" in again.stdout
    rows = [line.split() for line in listed.stdout.splitlines()[1:] if line.strip()]
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert [(row[0], row[1], " ".join(row[-2:])) for row in rows] == [("etl", "0", "nightly loads")]


def test_the_clients_create_project_returns_the_existing_one_on_a_second_call(
    prefect1: Prefect1, server: ServerProcess
) -> None:
    script = """
import json, prefect
from prefect.client import Client
client = Client(api_key=KEY)
first = client.create_project("reports")
second = client.create_project("reports")
print(json.dumps([first, second]))
""".replace("KEY", repr(server.admin_key))

    ran = prefect1.python(script)

    assert ran.returncode == 0, ran.stdout + ran.stderr
    first, second = json.loads(ran.stdout.strip().splitlines()[-1])
    assert first == second
