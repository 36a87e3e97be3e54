"""Issue 8, item 6: valid credentials are never starved by someone else's bad guesses.

Before, an address blocked by the failed-authentication limit refused new, valid run tokens too, so runs an agent
had just deployed from that host failed. Now a blocked address still gets its credential checked, and only failures
are refused (429).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from security.access_support import next_loopback_address, start_server
from server.harness import TenantContext, unique
from support import ServerProcess

LIMIT = 3
BAD_KEY = {"Authorization": "Bearer bat_" + "x" * 43}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(
        tmp_path_factory.mktemp("auth-starvation"),
        BATON__SERVER__FAILED_AUTH_LIMIT=str(LIMIT),
        BATON__SERVER__FAILED_AUTH_WINDOW_SECONDS="60",
    )
    yield process
    process.stop()


@pytest.fixture
def tenant(server: ServerProcess) -> Iterator[TenantContext]:
    context = TenantContext.create(server)
    yield context
    context.close()


@pytest.fixture
def blocked(server: ServerProcess) -> Iterator[httpx.Client]:
    """Plain HTTP from a loopback address of its own, already over the failed-authentication limit."""
    transport = httpx.HTTPTransport(local_address=next_loopback_address())
    with httpx.Client(base_url=server.url, transport=transport, timeout=30) as http:
        for _ in range(LIMIT):
            assert http.get("/api/whoami", headers=BAD_KEY).status_code == 401
        assert http.get("/api/whoami", headers=BAD_KEY).status_code == 429
        yield http


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_a_brand_new_run_token_is_accepted_from_a_blocked_address(tenant: TenantContext, blocked: httpx.Client) -> None:
    # Given a run claimed after its host's address was blocked: its token was never seen anywhere
    staged = tenant.stage("Submitted")
    assert staged.token is not None

    # When the flow-run process reports from that address
    running = blocked.post(f"/api/flow_runs/{staged.id}/state", json={"name": "Running"}, headers=bearer(staged.token))

    # Then it is let through, and the run goes on
    assert running.status_code == 200, running.text
    assert tenant.run(staged.id).state == "Running"


def test_a_valid_key_new_to_a_blocked_address_is_accepted(tenant: TenantContext, blocked: httpx.Client) -> None:
    key = tenant.new_key("runner")

    registered = blocked.post("/api/agents", json={"name": unique("a"), "type": "local"}, headers=bearer(key))

    assert registered.status_code == 201, registered.text


@pytest.mark.parametrize(
    "headers",
    [BAD_KEY, {}, {"Authorization": "Bearer not-even-a-key"}, bearer("batr_" + "y" * 43)],
    ids=["unknown-key", "missing", "malformed", "unknown-token"],
)
def test_failures_from_a_blocked_address_are_still_refused(blocked: httpx.Client, headers: dict[str, str]) -> None:
    response = blocked.get("/api/whoami", headers=headers)

    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
