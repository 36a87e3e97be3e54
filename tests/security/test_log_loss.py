"""Issue 8, item 8: logs are never dropped silently.

A flow printing 1,000,000 lines ended Success with 66,500 lines stored and no sign of the rest: the flow process's
shipper dropped the oldest lines of a full buffer. Now the printing thread waits for the shipper, so up to the
server's quota every line arrives once and in order; past the quota one stored marker line and the run's final
state message say how many were dropped. (The 1,000,000-line figures: ``bench/logs.py``.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from baton.client import Client
from security.input_support import run_chatty_flow, start_server
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
