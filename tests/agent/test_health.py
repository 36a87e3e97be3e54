"""The health server: /api/health tells the truth, /api/poke wakes the poll loop, /metrics is Prometheus text."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from baton.agent.health import AgentStatus, HealthServer, parse_address
from baton.agent.testing import InMemoryAgent
from baton.exceptions import ConfigurationError, ServerUnavailableError
from baton.settings import BatonSettings

from .app_api import AppApi
from .conftest import AgentThread


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # only ever 127.0.0.1
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def status(clock: Clock) -> AgentStatus:
    status = AgentStatus(name="test-agent", deadline_seconds=60, clock=clock)
    status.starting, status.polling = False, True
    status.api_ok()
    return status


@pytest.fixture
def serve(status: AgentStatus) -> Iterator[Callable[..., HealthServer]]:
    servers: list[HealthServer] = []

    def _serve(poke: Callable[[], None] = lambda: None) -> HealthServer:
        server = HealthServer("http://127.0.0.1:0", status, poke=poke)
        server.start()
        servers.append(server)
        return server

    yield _serve
    for server in servers:
        server.stop()


def test_healthy_while_polling_and_talking_to_the_api(status: AgentStatus, serve: Callable[..., HealthServer]) -> None:
    server = serve()
    code, content_type, body = get(f"{server.url}/api/health")
    assert code == 200
    assert content_type == "application/json"
    assert json.loads(body)["status"] == "healthy"
    assert json.loads(body)["agent"] == "test-agent"


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (lambda status, clock: setattr(status, "polling", False), "poll loop is not running"),
        (lambda status, clock: setattr(status, "starting", True), "starting"),
        (
            lambda status, clock: status.api_failed(ServerUnavailableError("HTTP 503"), "poll"),
            "the poll loop's API calls are failing: HTTP 503",
        ),
        (lambda status, clock: setattr(clock, "now", clock.now + 61), "no successful API call for 61s"),
        (lambda status, clock: setattr(status, "stopping", True), "stopping"),
        (lambda status, clock: setattr(status, "platform_check", lambda: "Docker daemon unreachable"), "Docker"),
    ],
)
def test_unhealthy_with_a_reason(
    status: AgentStatus,
    clock: Clock,
    serve: Callable[..., HealthServer],
    breakage: Callable[[AgentStatus, Clock], Any],
    reason: str,
) -> None:
    breakage(status, clock)
    code, _, body = get(f"{serve().url}/api/health")
    assert code == 503
    assert json.loads(body)["status"] == "unhealthy"
    assert reason in json.loads(body)["reason"]


def test_a_success_after_a_failure_makes_it_healthy_again(status: AgentStatus) -> None:
    status.api_failed(ServerUnavailableError("down"), "poll")
    assert status.health()[0] == 503
    status.api_ok("poll")
    assert status.health()[0] == 200


def test_failures_of_other_duties_do_not_make_the_agent_unhealthy(status: AgentStatus, clock: Clock) -> None:
    status.api_failed(ServerUnavailableError("HTTP 503"), "run run-1")
    status.api_failed(ServerUnavailableError("HTTP 503"), "heartbeat")
    assert status.health()[0] == 200
    # Only the deadline counts for them: no successful call at all for too long is unhealthy
    clock.now += 61
    assert "no successful API call" in status.health()[1]["reason"]


def test_a_forgotten_duty_leaves_no_trace(status: AgentStatus) -> None:
    status.api_failed(ServerUnavailableError("HTTP 503"), "run run-1")
    status.forget_duty("run run-1")
    assert status.failing == {}


def test_poke_calls_back(serve: Callable[..., HealthServer]) -> None:
    poked = threading.Event()
    server = serve(poke=poked.set)
    code, _, _ = get(f"{server.url}/api/poke")
    assert code == 200
    assert poked.is_set()


def test_unknown_route_is_404(serve: Callable[..., HealthServer]) -> None:
    assert get(f"{serve().url}/nope")[0] == 404


_SAMPLE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]* -?[0-9]+(\.[0-9]+)?$")


def test_metrics_are_prometheus_text_with_help_and_type(
    status: AgentStatus, serve: Callable[..., HealthServer]
) -> None:
    status.claims, status.deployments, status.deployment_failures, status.active_runs = 5, 4, 1, 2
    code, content_type, body = get(f"{serve().url}/metrics")
    assert code == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert body.endswith("\n")
    samples: dict[str, float] = {}
    described: dict[str, str] = {}
    for line in body.splitlines():
        if line.startswith("# HELP "):
            described.setdefault(line.split()[2], "")
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in {"counter", "gauge"}
            assert name.endswith("_total") == (kind == "counter")
            described[name] = kind
        else:
            assert _SAMPLE.match(line), line
            name, value = line.split()
            samples[name] = float(value)
    assert set(samples) == set(described)
    assert samples["baton_agent_claims_total"] == 5
    assert samples["baton_agent_deployments_total"] == 4
    assert samples["baton_agent_deployment_failures_total"] == 1
    assert samples["baton_agent_active_runs"] == 2
    assert samples["baton_agent_healthy"] == 1


@pytest.mark.parametrize("address", ["127.0.0.1:8080", "http://localhost", "https://127.0.0.1:8080", "http://:80"])
def test_bad_addresses_are_refused(address: str) -> None:
    if address == "127.0.0.1:8080":
        assert parse_address(address) == ("127.0.0.1", 8080)
        return
    with pytest.raises(ConfigurationError):
        parse_address(address)


def test_agent_serves_health_that_follows_its_poll_loop(
    app_api: AppApi, make_app_agent: Callable[..., InMemoryAgent], run_in_thread: Callable[[Any], AgentThread]
) -> None:
    agent = make_app_agent(agent_address="http://127.0.0.1:0")
    running = run_in_thread(agent)
    # Until the poll loop runs (whoami, then register: a few round trips to the real server) it is "starting"
    deadline = time.monotonic() + 10
    while agent.health_server is None or not agent.status.polling:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    url = agent.health_server.url

    assert get(f"{url}/api/health")[0] == 200
    run_id = app_api.add_run()
    app_api.wait_for_state(run_id, "Submitted")
    app_api.wait_for(lambda: agent.status.deployments == 1)
    metrics = get(f"{url}/metrics")[2]
    assert "baton_agent_claims_total 1" in metrics
    assert "baton_agent_deployments_total 1" in metrics
    assert "baton_agent_active_runs 1" in metrics

    agent.stop()  # warm stop: no longer claiming, so no longer healthy
    app_api.wait_for(lambda: get(f"{url}/api/health")[0] == 503, timeout=5)
    assert "stopping" in json.loads(get(f"{url}/api/health")[2])["reason"]
    agent.finish(run_id)
    running.join()


def test_poke_wakes_an_agent_waiting_out_a_backoff(
    app_api: AppApi, make_app_agent: Callable[..., InMemoryAgent], run_in_thread: Callable[[Any], AgentThread]
) -> None:
    app_api.fail_next("claim", ServerUnavailableError("HTTP 503"))
    agent = make_app_agent(agent_address="http://127.0.0.1:0")
    agent.policy.backoff.base_seconds = agent.policy.backoff.max_seconds = 60.0
    run_id = app_api.add_run()
    running = run_in_thread(agent)
    app_api.wait_for(lambda: agent.health_server is not None and agent.status.api_errors == 1)
    assert agent.health_server is not None
    code, _, body = get(f"{agent.health_server.url}/api/health")
    assert code == 503 and "HTTP 503" in json.loads(body)["reason"]

    get(f"{agent.health_server.url}/api/poke")

    app_api.wait_for_state(run_id, "Submitted", timeout=5)
    agent.stop(cold=True)
    running.join()


@pytest.mark.parametrize("address", ["https://127.0.0.1:8080", "http://localhost", "not an address"])
def test_a_bad_agent_address_is_refused_when_the_agent_is_made(
    app_settings: BatonSettings, app_api: AppApi, address: str
) -> None:
    with pytest.raises(ConfigurationError, match=r"--agent-address .*invalid agent address"):
        InMemoryAgent(settings=app_settings, client=app_api, agent_address=address)


def test_health_answers_503_starting_while_the_agent_registers(
    app_api: AppApi, make_app_agent: Callable[..., InMemoryAgent], run_in_thread: Callable[[Any], AgentThread]
) -> None:
    # Given an agent whose first API call (whoami) does not answer yet
    whoami = app_api.hold("whoami")
    agent = make_app_agent(agent_address="http://127.0.0.1:0")
    running = run_in_thread(agent)
    app_api.wait_for(lambda: agent.health_server is not None and any(name == "whoami" for name, _ in app_api.calls))
    assert agent.health_server is not None
    url = agent.health_server.url

    # Then its health check already answers, and says why it is not healthy yet
    code, _, body = get(f"{url}/api/health")
    assert code == 503 and "starting" in json.loads(body)["reason"]

    whoami.set()
    app_api.wait_for(lambda: get(f"{url}/api/health")[0] == 200)
    agent.stop()
    running.join()


def test_health_recovers_at_the_first_poll_after_an_outage_not_a_long_poll_later(
    app_api: AppApi,
    settings: BatonSettings,
    make_app_agent: Callable[..., InMemoryAgent],
    run_in_thread: Callable[[Any], AgentThread],
) -> None:
    # Given an agent whose long polls wait 30 s, and whose claim call fails once (the API was away)
    settings.agent.poll_wait_seconds = 30
    app_api.fail_next("claim", ServerUnavailableError("connection refused"))
    agent = make_app_agent(agent_address="http://127.0.0.1:0")
    running = run_in_thread(agent)
    app_api.wait_for(lambda: agent.health_server is not None and agent.status.api_errors == 1)
    assert agent.health_server is not None
    url = agent.health_server.url

    # Then, with the API back, the next claim does not wait on the server and health is 200 within moments
    app_api.wait_for(lambda: get(f"{url}/api/health")[0] == 200, timeout=5)
    assert app_api.claims[0]["wait_seconds"] == 0  # the failed call was never sent: claims lists those sent
    # And once recovered, polls are long again
    app_api.wait_for(lambda: len(app_api.claims) >= 2, timeout=5)
    assert app_api.claims[1]["wait_seconds"] == 30
    agent.stop(cold=True)
    running.join()
