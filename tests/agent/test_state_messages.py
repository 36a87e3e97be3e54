"""A state message the agent sends never exceeds the API's limit: a platform error quoting a huge run config
(a Docker daemon does) would otherwise make the Failed state itself refused, and the run would stay un-failed."""

from __future__ import annotations

import asyncio
from typing import Any

from baton.agent.health import AgentStatus
from baton.agent.loops import ErrorPolicy
from baton.agent.protocol import ApiCalls
from baton.schemas.actions import MAX_MESSAGE_LENGTH, StateSet


class _RecordingClient:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def change_flow_run_state(self, run_id: str, state: str, message: str, data: Any = None) -> Any:
        StateSet.model_validate({"name": state, "message": message})  # what the server would check
        self.sent.append((run_id, state, message))
        return None


def test_a_huge_deployment_error_is_cut_to_the_apis_limit() -> None:
    client = _RecordingClient()
    calls = ApiCalls(client, ErrorPolicy(), AgentStatus())  # type: ignore[arg-type]
    asyncio.run(calls.set_state("run-1", "Failed", "invalid reference format: " + "x" * 300_000))
    ((_run, _state, message),) = client.sent
    assert len(message) == MAX_MESSAGE_LENGTH
    assert message.startswith("invalid reference format: xxx") and message.endswith("[... cut short]")


def test_a_short_message_is_sent_as_it_is() -> None:
    client = _RecordingClient()
    calls = ApiCalls(client, ErrorPolicy(), AgentStatus())  # type: ignore[arg-type]
    asyncio.run(calls.set_state("run-1", "Failed", "no such image"))
    assert client.sent == [("run-1", "Failed", "no such image")]
