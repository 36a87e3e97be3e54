"""Claim calls in a daemon thread: awaited, given up on, handed over so that nothing they claim is dropped. Against the
real API server in process, whose claims are real long polls."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from email.message import Message
from typing import Any

import pytest

from baton.agent.polling import ClaimCall, release_in_thread
from baton.agent.testing import InMemoryAgent
from baton.backoff import Backoff
from baton.client import Client
from baton.client.http import is_unreachable, may_have_reached_the_server
from baton.client.transport import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimedOut,
    HttpTransport,
    Response,
    TimedOut,
)
from baton.exceptions import NotFoundError, ServerUnavailableError
from baton.schemas.responses import ClaimResponse

from .app_api import AppApi
from .conftest import AgentThread

MakeAgent = Callable[..., InMemoryAgent]
RunInThread = Callable[[InMemoryAgent], AgentThread]


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


def test_giving_up_on_a_claim_call_hands_what_it_returns_to_its_handler(app_api: AppApi) -> None:
    # Given a claim call still waiting on the server when the agent gives up on it
    agent_id = app_api.register_agent("a", "memory", []).id
    handed: list[ClaimResponse] = []

    async def scenario() -> tuple[ClaimResponse | None, bool]:
        claim = ClaimCall(lambda: app_api.claim(agent_id, limit=5, wait_seconds=10), asyncio.get_running_loop())
        claim.start()
        app_api.wait_for(lambda: app_api.claims_waiting == 1)
        give_up = asyncio.Event()
        give_up.set()
        result = await claim.result(give_up)
        return result, claim.hand_over(handed.append)

    result, handed_over = asyncio.run(scenario())  # returns although the call still waits
    assert result is None and handed_over

    # When a run arrives: the call returns it to the handler, in its own thread
    run_id = app_api.add_run()
    app_api.wait_for(lambda: bool(handed))
    assert [claimed.flow_run.id for claimed in handed[0].runs] == [run_id]
    assert app_api.state(run_id) == "Pending"


def test_release_in_thread_retries_transient_errors_and_releases_each_run(app_api: AppApi) -> None:
    agent_id = app_api.register_agent("a", "memory", []).id
    run_ids = [app_api.add_run(), app_api.add_run()]
    response = app_api.claim(agent_id, limit=5)
    app_api.fail_next("set_flow_run_state", ServerUnavailableError("HTTP 503"))

    release_in_thread(app_api, "a", response)

    released = ("Scheduled", "released by agent a on shutdown")
    assert [app_api.last_state(run_id)[:2] for run_id in run_ids] == [released] * 2


# --- claims named in heartbeats, and the API coming back (the poll loop of a running agent) -----------


def _unreachable() -> ServerUnavailableError:
    error = ServerUnavailableError("cannot reach the API at http://127.0.0.1:9: [Errno 111] Connection refused")
    error.__cause__ = ConnectFailed("[Errno 111] Connection refused")
    return error


def test_heartbeats_name_the_claims_held_and_not_yet_submitted(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given an agent whose deploys take a while: each claimed run is held, not yet Submitted, meanwhile
    run_id = app_api.add_run()
    agent = make_app_agent(deploy_seconds=1.0)  # heartbeats every 0.1 s (the fixture's settings)
    running = run_in_thread(agent)

    # Then a heartbeat sent during the deploy names the claim (only named claims keep their lease on the server)
    app_api.wait_for_state(run_id, "Submitted", timeout=10)
    named = [claims for claims in app_api.heartbeat_claims if claims]
    assert named and all(claims == [run_id] for claims in named)
    # And once the run is Submitted, heartbeats name no claim: the run is reported as a deployment instead
    heartbeats_before = len(app_api.heartbeat_claims)
    app_api.wait_for(lambda: len(app_api.heartbeat_claims) > heartbeats_before + 1)
    assert app_api.heartbeat_claims[-1] == []
    agent.stop()
    agent.finish(run_id)
    running.join()


def test_the_api_answering_again_cuts_the_poll_loops_backoff_short(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given an agent whose claim found the API unreachable, and whose backoff would now wait 15-30 s
    run_id = app_api.add_run()
    app_api.fail_next("claim", _unreachable())
    agent = make_app_agent()
    agent.policy.backoff = Backoff(base_seconds=30.0, max_seconds=30.0)
    started = time.monotonic()
    running = run_in_thread(agent)

    # When another of its calls (a heartbeat) is answered: the API is back
    # Then the poll loop claims at once, not after its backoff
    app_api.wait_for_state(run_id, "Submitted", timeout=10)
    assert time.monotonic() - started < 10
    agent.stop()
    agent.finish(run_id)
    running.join()


class _Answering(HttpTransport):
    """A transport whose every request is answered (or failed) by ``handler``, without a network."""

    def __init__(self, handler: Callable[[str, str], Response]) -> None:
        super().__init__("http://127.0.0.1:9")
        self.handler = handler

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        return self.handler(method, path)


def _client_answering(handler: Callable[[str, str], Response]) -> Client:
    return Client("http://127.0.0.1:9", "bat_test", transport=_Answering(handler))


def _answer(status: int, body: dict[str, Any], **headers: str) -> Response:
    message = Message()
    for name, value in headers.items():
        message[name] = value
    return Response(status, "", message, json.dumps(body).encode())


def test_a_429_is_transient_for_the_client_so_an_agent_backs_off_instead_of_dying() -> None:
    client = _client_answering(
        lambda method, path: _answer(429, {"detail": "too many failed authentications"}, **{"Retry-After": "7"})
    )
    with pytest.raises(ServerUnavailableError, match="HTTP 429 too many failed authentications; retry after 7 s"):
        client.whoami()


@pytest.mark.parametrize(
    ("error", "reached"),
    [
        (ConnectFailed("[Errno 111] Connection refused"), False),
        (ConnectTimedOut("no connection in 30 s"), False),
        (TimedOut("no answer in 30 s"), True),
        (ConnectionLost("Remote end closed connection without response"), True),
    ],
)
def test_only_a_failure_to_connect_proves_a_request_never_reached_the_server(error: Exception, reached: bool) -> None:
    def fail(method: str, path: str) -> Response:
        raise error

    with pytest.raises(ServerUnavailableError) as caught:
        _client_answering(fail).claim("agent-1", limit=1)
    assert may_have_reached_the_server(caught.value) is reached
    assert is_unreachable(caught.value)
