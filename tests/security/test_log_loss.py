"""Issue 8, item 8: logs are never dropped silently.

A flow printing 1,000,000 lines ended Success with 66,500 lines stored and no sign of the rest: the flow process's
shipper dropped the oldest lines of a full buffer. Now the printing thread waits for the shipper, so up to the
server's quota every line arrives once and in order; past the quota one stored marker line and the run's final
state message say how many were dropped. (The 1,000,000-line figures: ``bench/logs.py``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from baton.client import Client
from baton.engine.runner import FlowRunner
from baton.exceptions import ClientError
from baton.settings import load_settings
from engine.fakes import FakeApi, flow_read
from security.input_support import CHATTY_SOURCE, run_chatty_flow, start_server
from support import ServerProcess

QUOTA = 40_000


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def loss_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from start_server(request, tmp_path_factory, BATON__SERVER__MAX_LOG_LINES_PER_RUN=str(QUOTA))


@pytest.fixture
def loss_admin(loss_server: ServerProcess) -> Client:
    return loss_server.client()


def test_every_printed_line_under_the_quota_is_stored_once_and_in_order(
    loss_admin: Client, loss_server: ServerProcess
) -> None:
    # Given a flow that prints faster than any API takes lines (the old shipper's buffer held 20,000)
    printed = 30_000

    # When it runs in a real flow-run process
    chatty = run_chatty_flow(loss_server, loss_admin, printed)

    # Then it ends Success with every line stored once and in order, and nothing said about dropped lines
    assert chatty.exit_code == 0, chatty.run.state_message
    assert chatty.run.state == "Success"
    stdout = [log.message for log in chatty.logs if log.name == "stdout"]
    assert stdout == [f"line {number}" for number in range(printed)]
    assert "dropped" not in (chatty.run.state_message or "")


def test_lines_past_the_quota_leave_a_marker_line_and_a_note_in_the_final_message(
    loss_admin: Client, loss_server: ServerProcess
) -> None:
    # Given a flow that prints more lines than the run's quota
    printed = QUOTA + 5_000

    # When it runs
    chatty = run_chatty_flow(loss_server, loss_admin, printed)

    # Then the first lines are stored up to the quota, in order; one marker line counts the rest; and the final
    # state message says how many were dropped
    assert chatty.run.state == "Success"
    stored = [log for log in chatty.logs if log.name != "baton.server"]
    assert len(stored) == QUOTA
    stdout = [log.message for log in stored if log.name == "stdout"]
    assert stdout == [f"line {number}" for number in range(len(stdout))]
    (marker,) = [log for log in chatty.logs if log.name == "baton.server"]
    count = int(marker.message.split()[0])
    assert count >= printed - len(stdout)
    assert "log quota" in marker.message
    assert marker.level == 30
    assert f"[{count} log lines dropped: over the run's log quota]" in (chatty.run.state_message or "")


# --- the flow process's side, with the in-memory API -----------------------------------------------------------


def test_lines_the_api_refused_are_named_in_the_final_state_message(baton_home: Path) -> None:
    # Given an API that refuses every log batch (e.g. 409: the run ended long ago)
    api = FakeApi(flow_read(CHATTY_SOURCE, "chatty"), parameters={"lines": 5})
    api.fail["write_logs"] = [ClientError(409, "logs are taken until 60 s after a run ends")] * 100
    # (one line a batch: all but the last are sent while the flow runs; the last goes with the final state)
    settings = load_settings(logging={"batch_interval_seconds": 0.05, "batch_size": 1})

    # When the flow runs and prints
    exit_code = FlowRunner(cast(Client, api), "run-1", settings, start_timeout=2).run()

    # Then the run still ends as the flow did, and its final message counts the lines that could not be sent
    assert exit_code == 0
    state, message = api.states[-1]
    assert state == "Success"
    assert message is not None
    assert "log lines could not be sent to the API" in message
    assert "refused by the API" in message
