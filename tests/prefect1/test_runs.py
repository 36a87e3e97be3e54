"""Prefect 1.4.1's local agent and flow runner run Prefect 1 flows from a Baton server: `prefect run` (and --watch), the
client, a version group, idempotency keys and a plain mutation; Baton keeps runs, task runs and logs as its own."""

from __future__ import annotations

import json

from prefect1.conftest import Prefect1, log_lines
from prefect1.runs_support import local_agent, registered, wait_final
from support import ServerProcess


def test_local_agent_runs_a_flow_with_parameters_mapping_retries_and_case(
    prefect1: Prefect1, server: ServerProcess
) -> None:
    registered(prefect1)
    marker = prefect1.home / "flaky-ran"
    created = prefect1.cli(
        "run", "--name", "pipeline", "--project", "p", "--param", f"marker={marker}", "--param", "n=4"
    )
    assert created.returncode == 0, created.stdout + created.stderr
    run_id = next(line.split()[-1] for line in created.stdout.splitlines() if "UUID:" in line)

    with local_agent(prefect1):
        final = wait_final(server, run_id, prefect1)

    run = server.client().get_flow_run(run_id)
    assert final == "Success", run.state_message
    assert [state.name for state in run.states][:4] == ["Scheduled", "Pending", "Submitted", "Running"]
    assert run.deployment is not None and run.deployment["prefect1"].startswith("PID: ")
    assert run.parameters["n"] == 4
    tasks = {task.task_name: task for task in server.client().list_task_runs(run_id)}
    mapped = sorted(name for name in tasks if name.startswith("scale-1["))
    assert mapped == [f"scale-1[{i}]" for i in range(4)]
    assert tasks["flaky-1"].state == "Success" and tasks["flaky-1"].attempt == 2
    assert tasks["big-1"].state == "Success" and tasks["small-1"].state == "Success"  # Skipped counts as done
    assert tasks["cleanup-1"].state == "Success"  # its trigger: all upstream finished
    lines = log_lines(server, run_id, "Flow run SUCCESS")
    assert any("flaky saw [0, 2, 4, 6]" in line for line in lines), lines
    assert any("first attempt fails" in line for line in lines), lines


def test_prefect_run_watch_follows_the_run_and_its_logs_to_the_end(prefect1: Prefect1, server: ServerProcess) -> None:
    registered(prefect1)
    marker = prefect1.home / "flaky-ran"

    with local_agent(prefect1):
        watched = prefect1.cli(
            "run", "--name", "pipeline", "--project", "p", "--param", f"marker={marker}", "--watch", timeout=100
        )

    print(watched.stdout[-4000:], watched.stderr[-3000:])
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "Entered state <Success>" in watched.stdout


def test_runs_created_by_the_client_and_a_plain_mutation_are_listed_by_prefect_get(
    prefect1: Prefect1, server: ServerProcess
) -> None:
    registered(prefect1)
    script = """
import json
from prefect import Client
client = Client()
group = client.graphql('{ flow(where: {name: {_eq: "pipeline"}}) { version_group_id } }').data.flow[0]
by_group = client.create_flow_run(version_group_id=group.version_group_id, parameters={"marker": "m"}, run_name="one")
again = client.create_flow_run(version_group_id=group.version_group_id, parameters={"marker": "m"}, run_name="one",
                               idempotency_key="k")
same = client.create_flow_run(version_group_id=group.version_group_id, parameters={"marker": "m"}, run_name="one",
                              idempotency_key="k")
flow_id = client.graphql('{ flow { id } }').data.flow[0].id
plain = client.graphql(
    'mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }',
    variables={"input": {"flow_id": flow_id, "parameters": {"marker": "m", "n": 1}, "flow_run_name": "plain"}},
).data.create_flow_run.id
print(json.dumps([by_group, again, same, plain]))
"""
    done = prefect1.python(script)
    assert done.returncode == 0, done.stdout + done.stderr
    by_group, again, same, plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert again == same and len({by_group, again, plain}) == 3

    listed = prefect1.cli("get", "flow-runs", "--flow", "pipeline", "--project", "p")
    names = {row.split()[0] for row in listed.stdout.splitlines()[1:] if row.strip()}
    assert names == {"one", "plain"}, listed.stdout + listed.stderr
    assert server.client().get_flow_run(plain).parameters == {"n": 1, "marker": "m"}
    logs = prefect1.cli("get", "logs", "--id", plain)
    assert logs.returncode == 0, logs.stdout + logs.stderr
