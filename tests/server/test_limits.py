"""Server limits: request bodies over ``max_body_bytes`` are refused, claims wait at most ``max_claim_wait_seconds``.

These tests run a server of their own with a 4 KiB body limit and a 0.5 s claim-wait cap.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from baton.client import Client
from baton.schemas.responses import AgentRead
from server.harness import TenantContext
from support import ServerProcess

MAX_BODY = 4096


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("limited-server"),
        BATON__SERVER__MAX_BODY_BYTES=str(MAX_BODY),
        BATON__SERVER__MAX_CLAIM_WAIT_SECONDS="0.5",
    ).start()
    yield server
    server.stop()


@pytest.fixture
def tenant(limited_server: ServerProcess) -> Iterator[TenantContext]:
    context = TenantContext.create(limited_server)
    yield context
    context.close()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/flow_runs", {"flow_name": "hello", "parameters": {"name": "x" * MAX_BODY}}),
        ("/api/flow_runs/{run}/logs", {"logs": [{"timestamp": "2030-01-01T00:00:00Z", "message": "x" * MAX_BODY}]}),
        ("/api/agents", {"name": "a", "type": "local", "agent_config_id": "x" * MAX_BODY}),
    ],
)
def test_body_over_the_limit_is_413(tenant: TenantContext, path: str, body: dict[str, object]) -> None:
    staged = tenant.stage("Running")
    http = tenant.raw(tenant.admin_key)

    response = http.post(path.format(run=staged.id), json=body)

    assert response.status_code == 413
    assert response.json() == {"detail": f"request body larger than {MAX_BODY} bytes"}
    assert tenant.admin.get_logs(staged.id).logs == []
    assert len(tenant.admin.list_flow_runs()) == 1


def test_body_over_the_limit_is_refused_before_authentication(limited_server: ServerProcess) -> None:
    response = httpx.post(
        f"{limited_server.url}/api/flow_runs", content=b"{" + b" " * MAX_BODY + b"}", headers={"Connection": "close"}
    )

    assert response.status_code == 413


def test_body_under_the_limit_is_accepted(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")
    message = "y" * (MAX_BODY - 200)

    written = tenant.client(staged.token or "").write_logs(
        staged.id, [{"timestamp": "2030-01-01T00:00:00Z", "message": message}]
    )

    assert written.written == 1
    assert tenant.admin.get_logs(staged.id).logs[0].message == message


def chunked(payload: bytes) -> Iterator[bytes]:
    """A body without Content-Length: sent chunked, so only counting what arrives can catch it."""
    for start in range(0, len(payload), 1024):
        yield payload[start : start + 1024]


def test_chunked_body_over_the_limit_is_refused(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")
    payload = b'{"logs": [{"timestamp": "2030-01-01T00:00:00Z", "message": "' + b"z" * MAX_BODY + b'"}]}'
    http = tenant.raw(tenant.admin_key)

    response = http.post(
        f"/api/flow_runs/{staged.id}/logs", content=chunked(payload), headers={"Content-Type": "application/json"}
    )

    assert 400 <= response.status_code < 500
    assert response.json()["detail"]
    assert tenant.admin.get_logs(staged.id).logs == []


def test_chunked_body_over_the_limit_is_413(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")
    payload = b'{"logs": [{"timestamp": "2030-01-01T00:00:00Z", "message": "' + b"z" * MAX_BODY + b'"}]}'

    response = tenant.raw(tenant.admin_key).post(
        f"/api/flow_runs/{staged.id}/logs", content=chunked(payload), headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 413
    assert response.json() == {"detail": f"request body larger than {MAX_BODY} bytes"}


def test_claim_waits_no_longer_than_the_server_allows(tenant: TenantContext) -> None:
    runner: Client = tenant.client(tenant.key("runner"))
    agent: AgentRead = runner.register_agent("patient", "local", [])

    started = time.monotonic()
    result = runner.claim(agent.id, wait_seconds=30)
    elapsed = time.monotonic() - started

    assert result.runs == []
    assert elapsed < 15, f"the claim waited {elapsed:.1f}s although the server caps waits at 0.5s"
