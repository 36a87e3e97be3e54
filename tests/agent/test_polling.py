"""Claim calls in a daemon thread: awaited, given up on, handed over so that nothing they claim is dropped."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from baton.agent.polling import ClaimCall, release_in_thread
from baton.exceptions import NotFoundError, ServerUnavailableError
from baton.schemas.responses import ClaimResponse

from .fake_api import FakeApi


def test_a_claim_call_returns_its_result_or_raises_its_error_from_a_daemon_thread() -> None:
    daemons: list[bool] = []

    def work() -> ClaimResponse:
        daemons.append(threading.current_thread().daemon)
        return ClaimResponse(runs=[])

    def broken() -> ClaimResponse:
        raise NotFoundError(404, "gone")

    async def scenario(call: Callable[[], ClaimResponse]) -> ClaimResponse | None:
        return await ClaimCall(call, asyncio.get_running_loop()).start().result(asyncio.Event())

    assert asyncio.run(scenario(work)) == ClaimResponse(runs=[])
    assert daemons == [True]
    with pytest.raises(NotFoundError):
        asyncio.run(scenario(broken))


def test_giving_up_on_a_claim_call_hands_what_it_returns_to_its_handler() -> None:
    # Given a claim call still waiting on the server when the agent gives up on it
    api = FakeApi()
    agent_id = api.register_agent("a", "memory", []).id
    handed: list[ClaimResponse] = []

    async def scenario() -> tuple[ClaimResponse | None, bool]:
        claim = ClaimCall(lambda: api.claim(agent_id, limit=5, wait_seconds=10), asyncio.get_running_loop()).start()
        api.wait_for(lambda: api.claims_waiting == 1)
        give_up = asyncio.Event()
        give_up.set()
        result = await claim.result(give_up)
        return result, claim.hand_over(handed.append)

    result, handed_over = asyncio.run(scenario())  # returns although the call still waits
    assert result is None and handed_over

    # When a run arrives: the call returns it to the handler, in its own thread
    run_id = api.add_run()
    api.wait_for(lambda: bool(handed))
    assert [claimed.flow_run.id for claimed in handed[0].runs] == [run_id]


def test_release_in_thread_retries_transient_errors_and_releases_each_run() -> None:
    api = FakeApi()
    agent_id = api.register_agent("a", "memory", []).id
    run_ids = [api.add_run(), api.add_run()]
    response = api.claim(agent_id, limit=5)
    api.fail_next("set_flow_run_state", ServerUnavailableError("HTTP 503"))

    release_in_thread(api, "a", response)

    assert [api.last_state(run_id)[:2] for run_id in run_ids] == [("Scheduled", "released by agent a on shutdown")] * 2
