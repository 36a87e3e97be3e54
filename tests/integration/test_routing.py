"""Label routing between real agents (DESIGN.md §4) and exactly-once claiming under competition."""

from __future__ import annotations

from baton.schemas.states import FINAL_STATES
from integration.conftest import Cli, wait_for_state
from support import register_source_flow, wait_for


def _agent_ids_by_name(cli: Cli, count: int) -> dict[str, str]:
    """Wait until ``count`` agents have registered; map their names to ids."""

    def registered() -> dict[str, str] | None:
        found = {agent.name: agent.id for agent in cli.server.client().list_agents()}
        return found if len(found) == count else None

    return wait_for(registered, what=f"{count} agents to register")


def test_runs_go_only_to_agents_whose_labels_cover_them(cli: Cli, start_agent) -> None:
    # Given agents with labels [dev], [dev, gpu] and none (no hostname label, to keep the sets exact)
    client = cli.server.client()
    register_source_flow(client)
    start_agent("--no-hostname-label", "--label", "dev")  # agent-0
    start_agent("--no-hostname-label", "--label", "dev", "--label", "gpu")  # agent-1
    start_agent("--no-hostname-label")  # agent-2
    ids = _agent_ids_by_name(cli, 3)

    # When runs with various labels are created
    gpu_run = client.create_flow_run(flow_name="hello", labels=["gpu", "dev"])
    plain_run = client.create_flow_run(flow_name="hello", labels=[])
    orphan_run = client.create_flow_run(flow_name="hello", labels=["dev", "tpu"])

    # Then each one lands where the rule says, and the orphan is explained
    assert wait_for_state(cli, gpu_run.id, set(FINAL_STATES))["agent_id"] == ids["agent-1"]
    assert wait_for_state(cli, plain_run.id, set(FINAL_STATES))["agent_id"] == ids["agent-2"]
    assert client.get_flow_run(orphan_run.id).state == "Scheduled"
    explained = cli("runs", "explain", orphan_run.id).stdout
    assert "tpu" in explained
    explanation = client.explain_flow_run(orphan_run.id)
    assert not any(agent.can_take for agent in explanation.agents)
    assert {tuple(agent.missing_labels) for agent in explanation.agents} == {("tpu",), ("dev", "tpu")}


def test_dev_labelled_run_goes_to_either_dev_agent_but_never_the_unlabelled_one(cli: Cli, start_agent) -> None:
    client = cli.server.client()
    register_source_flow(client)
    start_agent("--no-hostname-label")  # agent-0: unlabelled
    start_agent("--no-hostname-label", "--label", "dev")  # agent-1
    ids = _agent_ids_by_name(cli, 2)
    runs = [client.create_flow_run(flow_name="hello", labels=["dev"]) for _ in range(3)]
    for run in runs:
        assert wait_for_state(cli, run.id, set(FINAL_STATES))["agent_id"] == ids["agent-1"]


def test_four_agents_competing_deploy_every_run_exactly_once(cli: Cli, start_agent) -> None:
    # Given 8 runs waiting and 4 agents started at once (real flow processes: bench/chaos.py has the load form)
    client = cli.server.client()
    register_source_flow(client)
    runs = [client.create_flow_run(flow_name="hello") for _ in range(8)]
    for _ in range(4):
        start_agent("--no-hostname-label")

    # Then every run finishes, each was claimed once and submitted once
    for run in runs:
        final = wait_for_state(cli, run.id, set(FINAL_STATES), timeout=90)
        names = [state["name"] for state in final["states"]]
        assert final["state"] == "Success", final
        assert names.count("Pending") == 1 and names.count("Submitted") == 1 and names.count("Running") == 1
