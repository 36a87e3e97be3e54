"""Prefect 1.4.1 registers flows into Baton: ``flow.register(project_name=...)``, ``prefect register --project P
--path flows/`` (unchanged code makes no new version), and ``prefect get flows`` lists them; Baton sees the same
flows (names, versions, parameters, labels)."""

from __future__ import annotations

import json
import socket

from prefect1.conftest import Prefect1
from support import ServerProcess

FLOW = """
from datetime import timedelta

from prefect import Flow, Parameter, task
from prefect.run_configs import LocalRun
from prefect.storage import Local


@task(max_retries=1, retry_delay=timedelta(seconds=1))
def double(x):
    return 2 * x


with Flow("doubler", run_config=LocalRun(labels=["p1"]), storage=Local(directory=STORE)) as flow:
    n = Parameter("n", default=2)
    double(n)
"""


def logged_in(prefect1: Prefect1, project: str) -> None:
    assert prefect1.cli("auth", "login", "--key", prefect1.server.admin_key).returncode == 0
    created = prefect1.cli("create", "project", project)
    assert created.returncode == 0 and f"{project} created" in created.stdout, created.stdout + created.stderr


def test_flow_register_makes_versions_that_prefect_get_flows_and_baton_list(
    prefect1: Prefect1, server: ServerProcess
) -> None:
    logged_in(prefect1, "numbers")
    store = prefect1.home / "store"
    script = FLOW.replace("STORE", repr(str(store))) + (
        "\nimport json\n"
        "ids = [flow.register(project_name='numbers', no_url=True) for _ in range(2)]\n"
        "print(json.dumps(ids))\n"
    )

    ran = prefect1.python(script)
    listed = prefect1.cli("get", "flows")
    every = prefect1.cli("get", "flows", "--all-versions")

    assert ran.returncode == 0, ran.stdout + ran.stderr
    first, second = json.loads(ran.stdout.strip().splitlines()[-1])
    assert first != second
    rows = [line.split() for line in listed.stdout.splitlines()[1:] if line.strip()]
    assert [(row[0], row[1], row[-2], row[-1]) for row in rows] == [("doubler", "2", second, "numbers")]
    assert len([line for line in every.stdout.splitlines()[1:] if line.strip()]) == 2
    versions = server.client().list_flows(name="doubler", all_versions=True)
    assert sorted(flow.version for flow in versions) == [1, 2]
    latest = server.client().get_flow(second)
    # flow.register() adds the machine's name to a Local storage's labels, as with Prefect Cloud 1
    assert latest.labels == sorted(["p1", socket.gethostname()])
    assert latest.parameters_schema["properties"]["n"] == {"default": 2}
    assert sorted(latest.tasks) == ["double", "n"]


def test_prefect_register_makes_no_new_version_of_unchanged_code(prefect1: Prefect1, server: ServerProcess) -> None:
    logged_in(prefect1, "numbers")
    flows = prefect1.home / "flows"
    flows.mkdir()
    script = flows / "doubler.py"
    # Stored as a script, the flow serializes the same each time (pickled, its file name would carry the build time)
    storage = f"Local(path={str(script)!r}, stored_as_script=True)"
    script.write_text(FLOW.replace("Local(directory=STORE)", storage))

    first = prefect1.cli("register", "--project", "numbers", "--path", str(flows))
    second = prefect1.cli("register", "--project", "numbers", "--path", str(flows))

    assert first.returncode == 0, first.stdout + first.stderr
    assert "Registering 'doubler'... Done" in first.stdout and "Version: 1" in first.stdout
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Registering 'doubler'... Skipped (metadata unchanged)" in second.stdout
    assert [flow.version for flow in server.client().list_flows(name="doubler", all_versions=True)] == [1]
