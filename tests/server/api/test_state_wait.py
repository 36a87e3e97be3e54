"""A flow-run process's Running asked while its run is still Pending waits for its agent's Submitted
(``Prefer: wait=N``, RFC 7240) instead of a 409 at once: the process often starts before its agent has reported it.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from baton.client import Client
from baton.schemas.responses import AgentRead, ClaimedRun
from server.harness import TenantContext
from support import ServerProcess, register_source_flow


@dataclass
class _Answer:
    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


def _running_in_the_background(
    tenant: TenantContext, claimed: ClaimedRun, prefer: str
) -> tuple[threading.Thread, list[_Answer]]:
    """Ask for Running with ``Prefer`` from another thread; return once the request is written whole, so that what
    the test sends next reaches the server after it (a thread that had not yet sent it let a test's Failed revoke
    the token first: a 401 from authentication, not the wait's)."""
    answers: list[_Answer] = []
    sent = threading.Event()
    address = urlsplit(tenant.server.url)
    headers = {"Authorization": f"Bearer {claimed.run_token}", "Content-Type": "application/json", "Prefer": prefer}

    def ask() -> None:
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
        try:
            connection.request("POST", f"/api/flow_runs/{claimed.flow_run.id}/state", '{"name": "Running"}', headers)
            sent.set()
            answer = connection.getresponse()
            answers.append(_Answer(answer.status, answer.read()))
        finally:
            sent.set()
            connection.close()

    asking = threading.Thread(target=ask)
    asking.start()
    assert sent.wait(30), "the background Running was never sent"
    return asking, answers


def _refused_at_least_once(tenant: TenantContext, claimed: ClaimedRun) -> None:
    """Until the waiting Running has met the Pending run (a plain Running asked meanwhile is refused)."""
    # The background request's first try happens within milliseconds; this one's refusal shows the run is Pending.
    with pytest.raises(Exception, match="Pending"):
        tenant.client(claimed.run_token).set_flow_run_state(claimed.flow_run.id, "Running")


def test_running_waits_for_the_agents_submitted_and_then_starts(
    tenant: TenantContext, runner: Client, claimed: ClaimedRun
) -> None:
    # Given a Running asked with Prefer: wait=10 while the run is still Pending
    asking, answers = _running_in_the_background(tenant, claimed, "return=minimal, wait=10")
    _refused_at_least_once(tenant, claimed)

    # When the agent reports the run Submitted
    runner.set_flow_run_state(claimed.flow_run.id, "Submitted", "PID: 7", {"pid": 7})
    asking.join(15)

    # Then the waiting Running went through, after the Submitted
    assert [answer.status_code for answer in answers] == [200]
    assert answers[0].json()["state"] == "Running"
    assert [s.name for s in tenant.run(claimed.flow_run.id).states] == ["Scheduled", "Pending", "Submitted", "Running"]


def test_a_running_whose_wait_runs_out_is_refused_naming_pending(tenant: TenantContext, claimed: ClaimedRun) -> None:
    answer = tenant.raw(claimed.run_token).post(
        f"/api/flow_runs/{claimed.flow_run.id}/state", json={"name": "Running"}, headers={"Prefer": "wait=0.3"}
    )

    assert answer.status_code == 409
    assert answer.json()["current_state"] == "Pending"
    assert tenant.run(claimed.flow_run.id).state == "Pending"


def test_a_deployment_failure_ends_the_wait_with_the_refusal(
    tenant: TenantContext, runner: Client, claimed: ClaimedRun
) -> None:
    asking, answers = _running_in_the_background(tenant, claimed, "wait=10")
    _refused_at_least_once(tenant, claimed)

    runner.set_flow_run_state(claimed.flow_run.id, "Failed", "the image is missing")
    asking.join(15)

    # Then the wait ends with the refusal a new request would get: the failure revoked the run's token
    assert [answer.status_code for answer in answers] == [401]
    assert "no longer" in answers[0].json()["detail"]
    assert tenant.run(claimed.flow_run.id).state == "Failed"


def test_a_wait_outlived_by_its_token_does_not_start_the_runs_next_claim(
    tenant: TenantContext, runner: Client, agent: AgentRead, claimed: ClaimedRun
) -> None:
    # Given a Running waiting with the token of a claim that the agent then gives back (the run is Scheduled again)
    asking, answers = _running_in_the_background(tenant, claimed, "wait=10")
    _refused_at_least_once(tenant, claimed)
    runner.set_flow_run_state(claimed.flow_run.id, "Scheduled", "released")

    # When the run is claimed again and submitted under the new claim
    again = TenantContext.claim_one(runner, agent.id, claimed.flow_run.id)
    runner.set_flow_run_state(claimed.flow_run.id, "Submitted", "PID: 8", {"pid": 8})
    asking.join(15)

    # Then the old claim's waiting Running is refused (its token is not the run's), and the new claim's process
    # starts the run
    assert [answer.status_code for answer in answers] == [401]
    assert tenant.client(again.run_token).set_flow_run_state(claimed.flow_run.id, "Running").state == "Running"


@pytest.mark.parametrize("prefer", ["wait=abc", "wait=nan", "wait=-3", "wait=inf"])
def test_a_wait_that_is_not_a_number_of_seconds_is_no_wait(
    tenant: TenantContext, claimed: ClaimedRun, prefer: str
) -> None:
    answer = tenant.raw(claimed.run_token).post(
        f"/api/flow_runs/{claimed.flow_run.id}/state", json={"name": "Running"}, headers={"Prefer": prefer}
    )

    assert (answer.status_code, answer.json()["current_state"]) == (409, "Pending")


def test_waiting_runnings_do_not_keep_their_agents_submitted_out(
    start_server: Callable[..., ServerProcess],
) -> None:
    # Given a server that handles one request at a time (the others queue), and a Running waiting there
    server = start_server(BATON__SERVER__MAX_REQUESTS_IN_FLIGHT="1")
    admin = server.client()
    register_source_flow(admin)
    runner = server.client(admin.create_api_key("runner", name="runner").key)
    try:
        agent = runner.register_agent("a", "local", [])
        run = admin.create_flow_run(flow_name="hello")
        claimed = runner.claim(agent.id).runs[0]
        answers: list[httpx.Response] = []
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {claimed.run_token}"}) as token:
            path = f"/api/flow_runs/{run.id}/state"
            asking = threading.Thread(
                target=lambda: answers.append(token.post(path, json={"name": "Running"}, headers={"Prefer": "wait=20"}))
            )
            asking.start()
            with Client(server.url, claimed.run_token) as plain, pytest.raises(Exception, match="Pending"):
                plain.set_flow_run_state(run.id, "Running")  # the waiting Running has met the Pending run

            # When the agent reports Submitted: had the waiting Running kept its place, this would queue behind it
            # until its 20 s ran out, and the Running would be refused
            runner.set_flow_run_state(run.id, "Submitted", "PID: 7", {"pid": 7})
            asking.join(30)

        # Then both went through
        assert [answer.status_code for answer in answers] == [200]
        assert admin.get_flow_run(run.id).state == "Running"
    finally:
        runner.close()


def test_the_api_document_names_both_answers_of_a_state_change(tenant: TenantContext) -> None:
    document = tenant.raw().get("/api/openapi.json").json()
    answer = document["paths"]["/api/flow_runs/{flow_run_id}/state"]["post"]["responses"]["200"]
    schemas = answer["content"]["application/json"]["schema"]["anyOf"]
    assert sorted(schema["$ref"].rsplit("/", 1)[1] for schema in schemas) == ["FlowRunRead", "StateChanged"]
    assert set(document["components"]["schemas"]["StateChanged"]["properties"]) == {"id", "state", "state_message"}
    assert "current_state" in document["components"]["schemas"]["ErrorDetail"]["properties"]
