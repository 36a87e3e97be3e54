"""Run policies end to end (issue 9): a flow that raises is retried by a real local agent, `baton run --watch`
follows the attempts, and the CLI's `runs retry`, `runs get` and `runs list --late`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from integration.conftest import Cli, wait_for_state
from support import register_source_flow

FLAKY_FLOW = """
from pathlib import Path
from baton import flow

MARKER = Path({marker!r})

@flow(retries=2, retry_delay_seconds=0)
def flaky():
    if not MARKER.exists():
        MARKER.write_text("failed once")
        raise RuntimeError("the first attempt fails")
    print("the second attempt works", flush=True)
"""

DOOMED_FLOW = """
from baton import flow

@flow(retries=1)
def doomed(name: str = "x"):
    raise RuntimeError(f"always fails for {name}")
"""

SLOW_FLOW = """
import time
from baton import flow

@flow(retries=1, timeout_seconds=1)
def slow():
    time.sleep(60)
"""


def test_a_run_the_agent_times_out_is_retried_then_fails(cli: Cli, start_agent, flow_file) -> None:
    cli("register", str(flow_file("slow", SLOW_FLOW)))
    start_agent()
    run = cli.json("run", "slow")

    final = wait_for_state(cli, run["id"], {"Failed"}, timeout=90)

    assert final["attempt"] == 2
    failures = [s["message"] for s in final["states"] if s["name"] == "Failed"]
    assert len(failures) == 2
    assert all("timed out after 1 s" in message for message in failures)
    assert [s["name"] for s in final["states"]].count("Retrying") == 1


def test_a_flow_that_raises_is_retried_by_the_agent_and_watch_follows_the_attempts(
    cli: Cli, start_agent, flow_file, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    cli("register", str(flow_file("flaky", FLAKY_FLOW.format(marker=str(marker)))))
    start_agent()

    # `baton run --watch` follows the run through Retrying to its final state (exit 0: Success)
    watched = cli("run", "flaky", "--watch", "--poll-interval", "0.2", timeout=120)

    assert "state Retrying: attempt 1 of 3 failed:" in watched.stdout
    assert "the first attempt fails" in watched.stdout
    assert "the second attempt works" in watched.stdout
    run_id = watched.stdout.split()[0]
    run = cli.json("runs", "get", run_id)
    assert (run["state"], run["attempt"]) == ("Success", 2)
    states = [s["name"] for s in run["states"]]
    assert states.count("Pending") == 2
    assert states.count("Running") == 2
    failed = next(s for s in run["states"] if s["name"] == "Failed")
    assert "the first attempt fails" in failed["message"]
    table = cli("runs", "get", run_id).stdout
    assert any(line.split()[:2] == ["attempt", "2"] for line in table.splitlines())


def test_runs_retry_reruns_a_failed_run_as_a_new_linked_run(cli: Cli, start_agent, flow_file) -> None:
    cli("register", str(flow_file("doomed", DOOMED_FLOW)))
    start_agent()
    first = cli.json("run", "doomed", "--param", "name=Ada")
    failed = wait_for_state(cli, first["id"], {"Failed"}, timeout=90)
    assert failed["attempt"] == 2
    assert [s["message"] for s in failed["states"] if s["name"] == "Failed"][-1].endswith("always fails for Ada")

    retried = json.loads(cli("runs", "retry", first["id"], "--json").stdout)

    assert retried["retried_from"] == first["id"]
    assert retried["attempt"] == 1
    again = wait_for_state(cli, retried["id"], {"Failed"}, timeout=90)
    assert "always fails for Ada" in (again["state_message"] or "")
    shown = cli("runs", "get", retried["id"]).stdout
    assert first["id"] in shown


def test_runs_retry_of_a_run_still_going_exits_1_with_the_reason(cli: Cli) -> None:
    register_source_flow(cli.server.client())
    run = cli.server.client().create_flow_run(flow_name="hello", labels=["nobody-serves-this"])

    result = cli("runs", "retry", run.id, check=False)

    assert result.returncode == 1
    assert "is Scheduled: only a Failed or Cancelled run can be retried" in result.stderr
    assert cli("runs", "retry", "no-such-run", check=False).returncode == 1


def test_runs_list_late_shows_only_late_runs(cli: Cli) -> None:
    client = cli.server.client()
    register_source_flow(client)
    past = datetime.now(UTC) - timedelta(minutes=30)
    late = client.create_flow_run(flow_name="hello", labels=["nobody"], scheduled_start_time=past)
    later = client.create_flow_run(flow_name="hello", labels=["nobody"], scheduled_start_time=past + timedelta(hours=2))

    listed = {run["id"] for run in cli.json("runs", "list", "--late")}

    assert late.id in listed
    assert later.id not in listed
    assert "No late flow runs." not in cli("runs", "list", "--late").stdout
