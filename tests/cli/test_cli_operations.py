"""Issue 9, operations gaps, through the CLI against a real `baton server start` (subprocesses, as a user runs them):
`baton agents list|prune`, agents deregistering on a warm stop (a real local agent process), agent names in
`runs list`, `run --watch` saying why nobody takes a run, `register` of several paths, a wrong API base URL,
`--tenant-id NAME`, comma-separated labels from the environment, and `Client()` from the environment."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cli_support import CliServer

from baton.client import Client
from baton.schemas.responses import AgentRead
from support import REPO_ROOT, clean_env, wait_for

pytestmark = pytest.mark.integration

HELLO = str(REPO_ROOT / "examples" / "hello.py")
BATON = (sys.executable, "-m", "baton.cli")
AGENT = (*BATON, "agent", "local", "start")


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)


def agents_named(server: CliServer, name: str) -> list[dict[str, Any]]:
    return [agent for agent in as_json(server.baton("agents", "list", "--json")) if agent["name"] == name]


def start_agent(server: CliServer, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
    with (server.home / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "agent", "local", "start", "-n", name, "--no-hostname-label", *args],
            # A short long-poll: a warm stop waits for the claim call in flight before the agent exits.
            env=clean_env(server.home, BATON__AGENT__POLL_WAIT_SECONDS="1", **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


# --- agents list, warm-stop deregistration, prune ---------------------------------------------------------------


def test_a_warm_stop_deregisters_the_agent_and_prune_deletes_it(cli_server: CliServer) -> None:
    # Given a real local agent, with labels from the environment written comma-separated
    name = unique_name("ops-agent")
    process = start_agent(cli_server, name, BATON__AGENT__LABELS="ops,gpu")
    try:
        # Polled over HTTP: each `baton agents list` subprocess costs ~0.7 s of CPU, which the agent's start needs.
        with Client(cli_server.url, cli_server.admin_key) as client:
            wait_for(lambda: any(a.name == name for a in client.list_agents()), what="the agent to register")
        [listed] = agents_named(cli_server, name)
        assert (listed["labels"], listed["live"], listed["stale"], listed["current_runs"]) == (
            ["gpu", "ops"],
            True,
            False,
            [],
        )
        table = ok(cli_server.baton("agents", "list")).stdout
        row = next(line for line in table.splitlines() if name in line)
        assert (row.split()[1], row.split()[-3:-1]) == ("local", ["live", "0"]), table

        # And a run it took, listed by agent name
        ok(cli_server.baton("register", HELLO))
        run_id = ok(cli_server.baton("run", "hello", "-l", "ops", "--watch")).stdout.splitlines()[0]
        runs_table = ok(cli_server.baton("runs", "list", "--limit", "5")).stdout
        assert any(run_id in line and name in line for line in runs_table.splitlines()), runs_table
        agent_id = listed["id"]
        assert as_json(cli_server.baton("runs", "get", run_id, "--json"))["agent_name"] == name
    finally:
        # When it stops warmly
        assert stop(process) == 0

    # Then it is listed as deregistered, not live
    [gone] = agents_named(cli_server, name)
    assert (gone["live"], gone["stale"]) == (False, True)
    assert gone["deregistered_at"] is not None
    assert "deregistered" in next(
        line for line in ok(cli_server.baton("agents", "list")).stdout.splitlines() if name in line
    )
    assert f"agent {agent_id} deregistered" in (cli_server.home / f"{name}.log").read_text()

    # And `agents prune` asks first (no answer: nothing deleted, exit 1), then deletes it with --yes
    refused = cli_server.baton("agents", "prune")
    assert refused.returncode == 1
    assert name in refused.stdout
    assert agents_named(cli_server, name)
    pruned = as_json(cli_server.baton("agents", "prune", "--yes", "--json"))
    assert agent_id in {agent["id"] for agent in pruned}
    assert agents_named(cli_server, name) == []
    # The run keeps its history, without the agent
    run = as_json(cli_server.baton("runs", "get", run_id, "--json"))
    assert (run["state"], run["agent_id"], run["agent_name"]) == ("Success", None, None)
    assert ok(cli_server.baton("agents", "prune", "--yes")).stdout.strip() == "No agents to prune."


def test_prune_refuses_a_time_below_the_stale_time_exit_2(cli_server: CliServer) -> None:
    result = cli_server.baton("agents", "prune", "--older-than", "5", "--yes")
    assert result.returncode == 2
    assert "at least the server's agent_stale_seconds" in result.stderr
    assert cli_server.baton("agents", "prune", "--older-than", "-1").returncode == 2


def test_tenant_id_may_be_the_tenants_name(cli_server: CliServer) -> None:
    name = unique_name("named")
    result = subprocess.run(
        [*AGENT, "-n", name, "--tenant-id", "default", "--max-polls", "0", "--no-hostname-label"],
        env=clean_env(cli_server.home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert agents_named(cli_server, name)

    wrong = subprocess.run(
        [*AGENT, "--tenant-id", "elsewhere", "--max-polls", "0"],
        env=clean_env(cli_server.home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert wrong.returncode == 2
    assert "does not match the key's tenant, by id or by name" in wrong.stderr


def test_bad_comma_list_variable_is_named_exit_2(cli_server: CliServer) -> None:
    result = cli_server.baton("agents", "list", BATON__AGENT__LABELS='["dev"')
    assert result.returncode == 2
    assert "BATON__AGENT__LABELS: agent.labels:" in result.stderr


# --- run --watch on a run nobody can take -------------------------------------------------------------------------


def test_watch_says_why_no_agent_takes_the_run(cli_server: CliServer) -> None:
    ok(cli_server.baton("register", HELLO))
    env = clean_env(cli_server.home)
    # An agent is registered (whatever ran before): the answer is about labels, not "no agent ever registered"
    agent = [*AGENT, "-n", unique_name("other"), "-l", "other", "--max-polls", "0", "--no-hostname-label"]
    registered = subprocess.run(agent, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert registered.returncode == 0, registered.stderr
    env.pop("COLUMNS", None)
    with subprocess.Popen(
        [*BATON, "run", "hello", "-l", unique_name("nobody"), "--watch", "--poll-interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        # A user's Ctrl-C: under nohup or a shell's background job (as CI may run) SIGINT starts ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - no threads hold locks here
    ) as process:
        try:
            assert process.stdout is not None
            lines = []
            # A loaded machine (the whole suite on two cores) may take seconds to start the CLI and answer explain
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = process.stdout.readline()
                lines.append(line)
                if "waiting for an agent" in line or not line:
                    break
            assert "waiting for an agent: no registered agent can take this run" in lines[-1], lines
            run_id = lines[0].strip()
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(30)
    assert process.returncode == 130
    ok(cli_server.baton("runs", "cancel", run_id))


# --- register several paths ----------------------------------------------------------------------------------------


FLOW_FILE = """
from baton import flow

@flow
def {name}() -> int:
    return 1
"""


def test_register_takes_files_and_directories(cli_server: CliServer, tmp_path: Path) -> None:
    # Given a directory of two flow files and a helper without flows, and a flow file elsewhere
    first, second, third = (unique_name("f").replace("-", "_") for _ in range(3))
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "one.py").write_text(FLOW_FILE.format(name=first))
    (flows / "two.py").write_text(FLOW_FILE.format(name=second))
    (flows / "helpers.py").write_text("VALUE = 1\n")
    (flows / "nested").mkdir()
    (flows / "nested" / "deep.py").write_text(FLOW_FILE.format(name="not_registered"))
    extra = tmp_path / "extra.py"
    extra.write_text(FLOW_FILE.format(name=third))

    registered = as_json(cli_server.baton("register", str(flows), str(extra), "--json"))

    assert [flow["name"] for flow in registered] == [first, second, third]


def test_register_checks_every_file_before_registering_any(cli_server: CliServer, tmp_path: Path) -> None:
    name = unique_name("f").replace("-", "_")
    good = tmp_path / "good.py"
    good.write_text(FLOW_FILE.format(name=name))
    empty = tmp_path / "empty.py"
    empty.write_text("VALUE = 1\n")
    broken = tmp_path / "broken" / "bad.py"
    broken.parent.mkdir()
    broken.write_text("def broken(:\n")

    no_flows = cli_server.baton("register", str(good), str(empty))
    does_not_load = cli_server.baton("register", str(good), str(broken.parent))

    assert no_flows.returncode == 1
    assert f"no flows found in {empty}" in no_flows.stderr
    assert does_not_load.returncode == 1
    assert "cannot load flows" in does_not_load.stderr
    assert all(flow["name"] != name for flow in as_json(cli_server.baton("register", HELLO, "--json")))
    with Client(cli_server.url, cli_server.admin_key) as client:
        assert client.list_flows(name=name) == []


# --- a wrong API URL, and Client() from the environment ---------------------------------------------------------


def test_an_api_url_ending_in_api_says_to_use_the_servers_root(cli_server: CliServer) -> None:
    result = cli_server.baton("-a", f"{cli_server.url}/api", "runs", "list")

    assert result.returncode == 1
    assert f"the API URL must be the server's root (e.g. {cli_server.url}), not .../api" in result.stderr


def test_client_with_no_arguments_reads_the_environment_and_config_file(
    cli_server: CliServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_HOME", str(cli_server.home))  # config.toml there holds the URL and the admin key
    with Client() as client:
        assert client.whoami().tenant_name == "default"
        agents: list[AgentRead] = client.list_agents()
        assert isinstance(agents, list)

    monkeypatch.setenv("BATON__API__KEY", "bat_not-a-real-key-0000000000000000000000000")
    with Client() as client:
        assert client.health().status == "healthy"
        with pytest.raises(Exception, match="invalid, revoked or expired API key"):
            client.whoami()

    # explicit arguments still win, and mean exactly what they say
    with Client(cli_server.url, cli_server.admin_key) as client:
        assert client.whoami().role is not None
