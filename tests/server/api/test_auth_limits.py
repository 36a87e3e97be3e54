"""Failed authentications are rate limited per client address: beyond the limit, every credential that fails is
answered 429, while valid credentials still pass (issue 8, item 6: they are never starved).

A server of its own, with a limit of 5 failures per 3 s. Each test speaks from loopback addresses of its own
(127.0.0.0/8 is all loopback on Linux), so the tests' failures do not add up.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from support import ServerProcess

LIMIT = 5
WINDOW = 3.0
Speaker = Callable[[], httpx.Client]
_addresses = (f"127.0.{n // 250}.{n % 250 + 2}" for n in itertools.count())


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("auth-limited-server"),
        BATON__SERVER__FAILED_AUTH_LIMIT=str(LIMIT),
        BATON__SERVER__FAILED_AUTH_WINDOW_SECONDS=str(WINDOW),
    ).start()
    yield server
    server.stop()


@pytest.fixture
def speak_from(limited_server: ServerProcess) -> Iterator[Speaker]:
    """``speak_from()`` → an httpx client whose requests come from a loopback address no other test uses."""
    clients: list[httpx.Client] = []

    def make() -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=next(_addresses))
        client = httpx.Client(base_url=limited_server.url, transport=transport, timeout=30)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


BAD_KEY = bearer("bat_" + "x" * 43)


def fail(http: httpx.Client, times: int = LIMIT) -> None:
    for _ in range(times):
        assert http.get("/api/whoami", headers=BAD_KEY).status_code == 401


def assert_limited(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= WINDOW
    assert response.json() == {
        "detail": f"too many failed authentication attempts from this address; retry in {retry_after} s"
    }
    return retry_after


def new_key(server: ServerProcess) -> dict[str, str]:
    """A valid key that has never been used from any address."""
    return bearer(server.client().create_api_key("user").key)


def test_beyond_the_limit_guesses_are_refused_until_the_window_slides(
    limited_server: ServerProcess, speak_from: Speaker
) -> None:
    http = speak_from()
    fail(http)

    retry_after = assert_limited(http.get("/api/whoami", headers=BAD_KEY))
    assert_limited(http.get("/api/flows", headers={}))
    # The address is free again one window after its last failures (refused guesses count: the limited ones
    # above were made within the same second as the first failures, so the wait is about one window).
    time.sleep(WINDOW + 0.1)
    assert http.get("/api/whoami", headers=BAD_KEY).status_code == 401
    assert retry_after <= WINDOW


def test_valid_credentials_pass_from_a_blocked_address(limited_server: ServerProcess, speak_from: Speaker) -> None:
    # Given an agent's key in use from an address, where a script then loops on a wrong key
    http = speak_from()
    agent = bearer(limited_server.admin_key)
    assert http.get("/api/whoami", headers=agent).status_code == 200
    fail(http)

    # Then the agent carries on, and so does a key new to the address, while guesses are refused
    assert http.get("/api/whoami", headers=agent).status_code == 200
    assert http.get("/api/whoami", headers=new_key(limited_server)).status_code == 200
    assert_limited(http.get("/api/whoami", headers=BAD_KEY))


def test_another_address_is_not_affected(limited_server: ServerProcess, speak_from: Speaker) -> None:
    guessing, other = speak_from(), speak_from()
    fail(guessing)
    assert_limited(guessing.get("/api/whoami", headers=BAD_KEY))

    assert other.get("/api/whoami", headers=bearer(limited_server.admin_key)).status_code == 200
    assert other.get("/api/whoami", headers=BAD_KEY).status_code == 401


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer"}, BAD_KEY],
    ids=["missing", "not-bearer", "empty", "unknown-key"],
)
def test_every_kind_of_401_counts(speak_from: Speaker, headers: dict[str, str]) -> None:
    http = speak_from()
    for _ in range(LIMIT):
        assert http.get("/api/flow_runs", headers=headers).status_code == 401

    assert_limited(http.get("/api/flow_runs", headers=headers))


def test_successes_neither_count_nor_wash_out_failures(limited_server: ServerProcess, speak_from: Speaker) -> None:
    http = speak_from()
    admin = bearer(limited_server.admin_key)
    for _ in range(3 * LIMIT):
        assert http.get("/api/whoami", headers=admin).status_code == 200
    fail(http, LIMIT - 1)
    assert http.get("/api/whoami", headers=admin).status_code == 200

    fail(http, 1)

    assert_limited(http.get("/api/whoami", headers=BAD_KEY))


def test_health_needs_no_key_and_stays_open(speak_from: Speaker) -> None:
    http = speak_from()
    fail(http)

    assert http.get("/api/health").status_code == 200


def test_graphql_counts_its_failures_with_the_rest_api_and_says_so_as_prefect_1_expects(
    limited_server: ServerProcess, speak_from: Speaker
) -> None:
    # Given an address that failed at the REST API and once at GraphQL (a 200 that says UNAUTHENTICATED)
    http = speak_from()
    query = {"query": "{ auth_info { tenant_id } }"}
    fail(http, LIMIT - 1)
    refused = http.post("/graphql", json=query, headers=BAD_KEY)
    assert refused.status_code == 200 and refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"

    # When it guesses again at GraphQL
    limited = http.post("/graphql", json=query, headers=BAD_KEY)

    # Then it waits (429 with Retry-After, which Prefect 1's client honours), and a valid key still passes
    assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= WINDOW
    assert limited.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert_limited(http.get("/api/whoami", headers=BAD_KEY))
    allowed = http.post("/graphql", json=query, headers=bearer(limited_server.admin_key))
    assert allowed.status_code == 200 and allowed.json()["data"]["auth_info"]["tenant_id"]
