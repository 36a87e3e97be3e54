"""The CLI against a real server: `baton server start` in a subprocess with its own $BATON_HOME, and every
other command run as a subprocess too (so the console entry point's error handling is what is tested).

The server writes the default tenant's admin key and its URL into config.toml on its first start; the CLI
subprocesses find both there, as a newcomer's CLI would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import CliServer, baton_cli

from baton.client import Client
from support import REPO_ROOT, clean_env, free_port, wait_for

pytestmark = pytest.mark.integration

HELLO = str(REPO_ROOT / "examples" / "hello.py")
FAILING = str(REPO_ROOT / "examples" / "failing.py")
RUN_FIELDS = {
    "id",
    "flow_name",
    "flow_version",
    "state",
    "state_message",
    "labels",
    "parameters",
    "agent_id",
    "scheduled_start_time",
    "states",
}


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.fixture(scope="module")
def registered(cli_server: CliServer) -> dict[str, Any]:
    """hello and failing, registered once for the module."""
    hello = as_json(cli_server.baton("register", HELLO, "--json"))
    failing = as_json(cli_server.baton("register", FAILING, "--json"))
    return {"hello": hello[0], "failing": failing[0]}


def test_first_start_writes_url_and_admin_key_for_the_cli(cli_server: CliServer) -> None:
    with Client(cli_server.url, cli_server.admin_key) as client:
        me = client.whoami()
    assert me.tenant_name == "default"
    assert me.role is not None and me.role.value == "admin"


def test_register_prints_name_version_and_id(cli_server: CliServer, registered: dict[str, Any]) -> None:
    hello = registered["hello"]
    assert hello["name"] == "hello"
    assert hello["version"] == 1
    assert hello["storage"]["type"] == "api"
    assert "name" in hello["parameters_schema"]["properties"]

    # new labels make a new version
    table = ok(cli_server.baton("register", HELLO, "--label", "extra"))
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["flow", "version", "id", "labels", "storage"]
    name, version, flow_id, labels, storage, *bundle = lines[2].split()
    assert (name, version, labels, storage) == ("hello", "2", "extra", "api")
    assert bundle[0] == "(3" and bundle[1] == "files,", lines[2]  # examples/: hello.py, failing.py, parallel.py
    assert flow_id != hello["id"]


def test_register_a_file_that_does_not_import_is_one_line(cli_server: CliServer, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("from baton import flow\n\n@flow\ndef broken(:\n    pass\n")
    result = cli_server.baton("register", str(broken))
    assert result.returncode == 1
    assert "cannot load flows" in one_error_line(result)


def test_run_then_runs_get_json_has_the_contract_fields(cli_server: CliServer, registered: dict[str, Any]) -> None:
    created = as_json(
        cli_server.baton("run", "hello", "--version", "1", "--param", "name=Ada", "-l", "nobody-has-this", "--json")
    )
    assert created["flow_name"] == "hello"
    assert created["parameters"] == {"name": "Ada"}

    run = as_json(cli_server.baton("runs", "get", created["id"], "--json"))
    assert set(run) >= RUN_FIELDS
    assert run["id"] == created["id"]
    assert run["flow_version"] == registered["hello"]["version"]
    assert run["state"] == "Scheduled"
    assert run["labels"] == ["nobody-has-this"]
    assert run["parameters"] == {"name": "Ada"}
    assert run["agent_id"] is None
    assert [(s["name"], set(s)) for s in run["states"]] == [("Scheduled", {"name", "message", "timestamp", "data"})]


def test_run_prints_the_run_id_first(cli_server: CliServer, registered: dict[str, Any]) -> None:
    result = ok(cli_server.baton("run", "hello", "-l", "nobody-has-this"))
    run_id = result.stdout.splitlines()[0]
    assert as_json(cli_server.baton("runs", "get", run_id, "--json"))["id"] == run_id


def test_runs_list_json_is_newest_first_and_filters(cli_server: CliServer, registered: dict[str, Any]) -> None:
    first = as_json(cli_server.baton("run", "failing", "-l", "nobody-has-this", "--json"))
    second = as_json(cli_server.baton("run", "failing", "-l", "nobody-has-this", "--json"))
    runs = as_json(cli_server.baton("runs", "list", "--flow", "failing", "--json"))
    ids = [run["id"] for run in runs]
    assert ids.index(second["id"]) < ids.index(first["id"])
    assert {run["flow_name"] for run in runs} == {"failing"}
    assert all(set(run) >= RUN_FIELDS for run in runs)
    assert len(as_json(cli_server.baton("runs", "list", "--limit", "1", "--json"))) == 1

    ok(cli_server.baton("runs", "cancel", first["id"]))
    cancelled = as_json(cli_server.baton("runs", "list", "--state", "cancelled", "--json"))
    assert first["id"] in [run["id"] for run in cancelled]
    assert second["id"] not in [run["id"] for run in cancelled]

    table = ok(cli_server.baton("runs", "list", "--flow", "failing"))
    assert table.stdout.splitlines()[0].split() == [
        "id",
        "name",
        "flow",
        "version",
        "state",
        "labels",
        "scheduled",
        "agent",
    ]
    assert second["id"] in table.stdout


def test_runs_cancel_a_scheduled_run_then_again_is_a_conflict(
    cli_server: CliServer, registered: dict[str, Any]
) -> None:
    run = as_json(cli_server.baton("run", "hello", "-l", "nobody-has-this", "--json"))
    result = ok(cli_server.baton("runs", "cancel", run["id"]))
    assert result.stdout.strip() == f"Flow run {run['id']} is Cancelled."
    assert as_json(cli_server.baton("runs", "get", run["id"], "--json"))["state"] == "Cancelled"

    again = cli_server.baton("runs", "cancel", run["id"])
    assert again.returncode == 1
    assert "(HTTP 409)" in one_error_line(again)


def test_runs_explain_names_the_missing_labels(cli_server: CliServer, registered: dict[str, Any]) -> None:
    with Client(cli_server.url, cli_server.admin_key) as client:
        client.register_agent("explain-ok", "local", ["explain", "gpu"])
        client.register_agent("explain-short", "local", ["explain"])
    run = as_json(cli_server.baton("run", "hello", "-l", "explain", "-l", "gpu", "--json"))

    explanation = as_json(cli_server.baton("runs", "explain", run["id"], "--json"))
    by_name = {agent["name"]: agent for agent in explanation["agents"]}
    assert by_name["explain-ok"]["can_take"] is True
    assert by_name["explain-short"]["can_take"] is False
    assert by_name["explain-short"]["missing_labels"] == ["gpu"]

    table = ok(cli_server.baton("runs", "explain", run["id"]))
    header = next(line for line in table.stdout.splitlines() if line.startswith("agent"))
    assert header.split() == ["agent", "type", "labels", "last", "seen", "can", "take", "missing", "labels", "reason"]
    short_row = next(line for line in table.stdout.splitlines() if line.startswith("explain-short"))
    assert " no " in short_row and "gpu" in short_row
    assert table.stdout.rstrip().splitlines()[-1] == explanation["summary"]
    ok(cli_server.baton("runs", "cancel", run["id"]))


def test_unknown_flow_and_unknown_run_are_one_line_exit_1(cli_server: CliServer) -> None:
    result = cli_server.baton("run", "no-such-flow", subprocess_=True)  # all a process prints, as it exits too
    assert result.returncode == 1
    assert "no-such-flow" in one_error_line(result)
    assert result.stdout == ""

    result = cli_server.baton("runs", "get", "00000000-0000-0000-0000-000000000000")
    assert result.returncode == 1
    assert "(HTTP 404)" in one_error_line(result)


def test_parameters_the_flow_does_not_take_are_one_line_exit_2(
    cli_server: CliServer, registered: dict[str, Any]
) -> None:
    result = cli_server.baton("run", "hello", "--param", "nope=1")
    assert result.returncode == 2
    assert "nope" in one_error_line(result)


def test_bad_key_is_one_line_exit_4(cli_server: CliServer) -> None:
    result = cli_server.baton("runs", "list", "-k", "bat_not-a-real-key-000000000000000000", subprocess_=True)
    assert result.returncode == 4
    assert one_error_line(result).startswith("Error: the API refused the key")

    result = cli_server.baton("runs", "list", BATON__API__KEY="bat_not-a-real-key-000000000000000000")
    assert result.returncode == 4


def test_unreachable_server_is_one_line_exit_3(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = baton_cli(tmp_path, "runs", "list", "--api", url, "--key", "bat_x", subprocess_=True)
    assert result.returncode == 3
    line = one_error_line(result)
    assert f"cannot reach the API at {url}" in line
    assert "Traceback" not in result.stderr


def test_key_create_and_list(cli_server: CliServer) -> None:
    created = as_json(cli_server.baton("key", "create", "--role", "runner", "--name", "ci-agent", "--json"))
    assert created["key"].startswith("bat_")
    assert created["role"] == "runner"
    with Client(cli_server.url, created["key"]) as client:
        assert client.whoami().role is not None
        assert client.whoami().tenant_name == "default"

    keys = as_json(cli_server.baton("key", "list", "--json"))
    assert created["id"] in [key["id"] for key in keys]
    assert "key" not in keys[0]

    same_tenant = cli_server.baton("key", "create", "--role", "read", "--tenant", "default", "--json")
    assert as_json(same_tenant)["role"] == "read"


def test_key_create_in_another_tenant_is_refused(cli_server: CliServer) -> None:
    result = cli_server.baton("key", "create", "--role", "user", "--tenant", "someone-else")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "creates keys only in its own tenant" in line
    assert "baton server create-tenant" in line


def test_create_tenant_gives_an_admin_key_that_sees_only_its_tenant(cli_server: CliServer) -> None:
    tenant = as_json(cli_server.baton("server", "create-tenant", "acme", "--json"))
    assert tenant["name"] == "acme"
    assert tenant["admin_key"].startswith("bat_")

    keys = as_json(cli_server.baton("-k", tenant["admin_key"], "key", "list", "--json"))
    assert [key["tenant_id"] for key in keys] == [tenant["id"]]
    assert as_json(cli_server.baton("-k", tenant["admin_key"], "runs", "list", "--json")) == []

    again = cli_server.baton("server", "create-tenant", "acme")
    assert again.returncode == 1
    assert "already exists" in one_error_line(again)


def test_migrate_is_idempotent(cli_server: CliServer) -> None:
    assert "is up to date" in ok(cli_server.baton("server", "migrate")).stdout


# --- with a real local agent --------------------------------------------------------------------


AGENT_ARGS = ("agent", "local", "start", "-n", "cli-e2e", "-l", "e2e", "--no-hostname-label")


@pytest.fixture(scope="module")
def local_agent(cli_server: CliServer) -> Iterator[subprocess.Popen[bytes]]:
    """`baton agent local start -l e2e --no-hostname-label`: takes only the runs labelled e2e."""
    log = (cli_server.home / "agent.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "baton.cli", *AGENT_ARGS],
        # A short long-poll: a warm stop waits for the claim call in flight before the agent exits.
        env=clean_env(cli_server.home, BATON__AGENT__POLL_WAIT_SECONDS="1"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    with Client(cli_server.url, cli_server.admin_key) as client:
        wait_for(lambda: any(a.name == "cli-e2e" for a in client.list_agents()), what="the agent to register")
    yield process
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def test_watch_streams_states_and_logs_and_exits_0_on_success(
    cli_server: CliServer, registered: dict[str, Any], local_agent: subprocess.Popen[bytes]
) -> None:
    result = ok(cli_server.baton("run", "hello", "--param", "name=Ada", "-l", "e2e", "--watch"))
    lines = result.stdout.splitlines()
    run_id = lines[0]
    states = [line.split("state ", 1)[1].split(":")[0] for line in lines if "  state " in line]
    assert states == ["Scheduled", "Pending", "Submitted", "Running", "Success"]
    assert any(line.endswith("HELLO, ADA!") for line in lines)
    assert any("Making a greeting for Ada" in line for line in lines)

    run = as_json(cli_server.baton("runs", "get", run_id, "--json"))
    assert run["state"] == "Success"
    assert run["agent_id"] is not None
    logs = ok(cli_server.baton("runs", "logs", run_id)).stdout
    assert "HELLO, ADA!" in logs


def test_watch_exits_1_when_the_run_fails(
    cli_server: CliServer, registered: dict[str, Any], local_agent: subprocess.Popen[bytes]
) -> None:
    result = cli_server.baton("run", "failing", "-l", "e2e", "--watch", "--json")
    assert result.returncode == 1, result.stderr
    final = json.loads(result.stdout)
    assert final["state"] == "Failed"
    assert "something went wrong with 41" in (final["state_message"] or "")
    assert result.stderr.splitlines()[0] == final["id"]


BUNDLED_FLOW = """
from pathlib import Path

from baton import flow

import local_mod
from helpers.text import shout


@flow
def bundled() -> str:
    here = Path(__file__).parent
    # What .batonignore and the hidden-file rule left behind did not travel
    assert not (here / "data").exists() and not (here / ".env").exists(), sorted(p.name for p in here.iterdir())
    print(shout(local_mod.GREETING), flush=True)
    return shout(local_mod.GREETING)
"""


def test_a_flow_runs_with_its_folders_modules_and_packages_and_unchanged_code_is_no_new_version(
    cli_server: CliServer, local_agent: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    for name, text in {
        "bundled_flow.py": BUNDLED_FLOW,
        "local_mod.py": "GREETING = 'hello from a sibling'\n",
        "helpers/__init__.py": "",
        "helpers/text.py": "def shout(text):\n    return text.upper() + '!'\n",
        "data/big.csv": "x,y\n" * 1000,
        ".batonignore": "data/\n",
        ".env": "SECRET=do-not-ship\n",
    }.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)

    [first] = as_json(cli_server.baton("register", str(project / "bundled_flow.py"), "--json"))
    assert first["storage"]["path"] == "bundled_flow.py" and len(first["storage"]["bundle"]) == 64
    watched = ok(cli_server.baton("run", "bundled", "-l", "e2e", "--watch")).stdout
    assert "HELLO FROM A SIBLING!" in watched, watched

    # Unchanged code: the same version; a changed helper alone: a new one, which the next run uses
    [again] = as_json(cli_server.baton("register", str(project / "bundled_flow.py"), "--json"))
    assert (again["version"], again["storage"]["bundle"]) == (first["version"], first["storage"]["bundle"])
    (project / "helpers" / "text.py").write_text("def shout(text):\n    return text.upper() + '?!'\n")
    table = ok(cli_server.baton("register", str(project / "bundled_flow.py"))).stdout
    assert "api (4 files," in table, table
    watched = ok(cli_server.baton("run", "bundled", "-l", "e2e", "--watch")).stdout
    assert "HELLO FROM A SIBLING?!" in watched, watched
