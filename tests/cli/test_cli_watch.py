"""`baton run --watch` and `baton runs logs --follow` against a scripted client: what is printed, in which
order, and the exit codes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cli_support import FakeClient, make_log, make_run

SUCCESS_HISTORY = [
    ("Scheduled", None),
    ("Pending", None),
    ("Submitted", "PID: 1234"),
    ("Running", None),
    ("Success", "All tasks succeeded"),
]


def _script(final: str, final_message: str) -> FakeClient:
    """A run seen Scheduled, then Running, then final; two log lines written while it runs."""
    history = [*SUCCESS_HISTORY[:4], (final, final_message)]
    return FakeClient(
        runs=[make_run("Scheduled"), make_run("Running", history[:4]), make_run(final, history)],
        logs=[make_log(0, "Making a greeting for Ada", 3.5), make_log(1, "HELLO, ADA!", 3.7)],
        log_visible_after=[2, 3],
    )


def test_run_prints_the_run_id_first_and_passes_params_labels_and_version(invoke: Any, fake_client: Any) -> None:
    client = fake_client(FakeClient(runs=[make_run("Scheduled", labels=["dev"])]))
    result = invoke("run", "hello", "--param", "name=Ada", "--param", "n=3", "-l", "dev", "--version", "2")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["run-1"]
    assert "Created flow run brave-otter of hello v2: Scheduled" in result.stderr
    assert client.created["flow_name"] == "hello"
    assert client.created["parameters"] == {"name": "Ada", "n": 3}
    assert client.created["labels"] == ["dev"]
    assert client.created["flow_version"] == 2
    assert client.created["scheduled_start_time"] is None


def test_run_without_labels_lets_the_server_choose(invoke: Any, fake_client: Any) -> None:
    client = fake_client(FakeClient(runs=[make_run("Scheduled")]))
    assert invoke("run", "hello").exit_code == 0
    assert client.created["labels"] is None
    assert client.created["parameters"] == {}


def test_run_json_prints_the_run_object_only(invoke: Any, fake_client: Any) -> None:
    fake_client(FakeClient(runs=[make_run("Scheduled")]))
    result = invoke("run", "hello", "--json")
    assert result.exit_code == 0
    body = json.loads(result.stdout)
    assert body["id"] == "run-1"
    assert body["state"] == "Scheduled"
    assert body["states"][0]["name"] == "Scheduled"


def test_watch_streams_every_state_and_log_line_in_time_order_and_exits_0_on_success(
    invoke: Any, fake_client: Any
) -> None:
    fake_client(_script("Success", "All tasks succeeded"))
    result = invoke("run", "hello", "--watch", "--poll-interval", "0.05")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "run-1"
    # Pending and Submitted happened between two polls: the state history still shows them.
    events = [line.split("  ", 1)[1].strip() for line in lines[1:]]
    assert events == [
        "state Scheduled",
        "state Pending",
        "state Submitted: PID: 1234",
        "state Running",
        "INFO     baton.flow: Making a greeting for Ada",
        "INFO     baton.flow: HELLO, ADA!",
        "state Success: All tasks succeeded",
    ]


@pytest.mark.parametrize("final", ["Failed", "Cancelled"])
def test_watch_exits_1_when_the_run_does_not_succeed(invoke: Any, fake_client: Any, final: str) -> None:
    fake_client(_script(final, "boom"))
    result = invoke("run", "hello", "--watch", "--poll-interval", "0.05")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1].endswith(f"state {final}: boom")


def test_watch_with_json_keeps_stdout_pure_json_of_the_final_run(invoke: Any, fake_client: Any) -> None:
    fake_client(_script("Failed", "boom"))
    result = invoke("run", "hello", "--watch", "--json", "--poll-interval", "0.05")
    assert result.exit_code == 1
    final = json.loads(result.stdout)
    assert final["state"] == "Failed"
    assert [s["name"] for s in final["states"]][-1] == "Failed"
    assert result.stderr.splitlines()[0] == "run-1"
    assert "HELLO, ADA!" in result.stderr


def test_user_text_is_printed_as_written_not_as_markup(invoke: Any, fake_client: Any) -> None:
    client = FakeClient(runs=[make_run("Success", [("Success", "[bold]done[/bold]")])])
    client.logs = [make_log(0, "a [red]literal[/red] line", 1)]
    fake_client(client)
    result = invoke("runs", "logs", "run-1")
    assert result.exit_code == 0
    assert "baton.flow: a [red]literal[/red] line" in result.stdout


def test_runs_logs_prints_logs_only_and_follow_waits_for_a_final_state(invoke: Any, fake_client: Any) -> None:
    client = fake_client(_script("Success", "ok"))
    result = invoke("runs", "logs", "run-1", "--follow", "--poll-interval", "0.05")
    assert result.exit_code == 0
    assert [line.split("  ", 1)[1] for line in result.stdout.splitlines()] == [
        "INFO     baton.flow: Making a greeting for Ada",
        "INFO     baton.flow: HELLO, ADA!",
    ]
    assert client.reads == 3


def test_runs_logs_without_follow_reads_once(invoke: Any, fake_client: Any) -> None:
    client = fake_client(_script("Success", "ok"))
    result = invoke("runs", "logs", "run-1")
    assert result.exit_code == 0
    assert result.stdout == ""  # no line is visible at the first read
    assert client.reads == 1
