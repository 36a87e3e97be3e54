"""The agent's private HTTP server: ``/api/health``, ``/api/poke`` and ``/metrics`` (DESIGN.md §6).

Served from a stdlib ``ThreadingHTTPServer`` in a daemon thread, so that a stuck event loop still gets an honest
503 instead of a hanging probe. The agent writes facts into an :class:`AgentStatus`; the server only reads them.

Usage::

    status = AgentStatus(name="local-agent-host", deadline_seconds=60)
    server = HealthServer("http://127.0.0.1:8080", status, poke=agent.poke)
    server.start()
    ...
    server.stop()
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from baton import __version__
from baton.exceptions import ConfigurationError

logger = logging.getLogger("baton.agent")


# The duty whose failures make the agent unhealthy: without claims it does no work. Per-run calls and heartbeats
# have their own streaks (and end the agent when too long), but one run's bad luck is not the agent's health.
POLL_DUTY = "poll"


@dataclass
class AgentStatus:
    """Counters and health facts of one agent. Plain attributes: written by the agent, read by the server."""

    name: str = ""
    deadline_seconds: float = 60.0
    clock: Callable[[], float] = time.monotonic
    # health facts
    starting: bool = True  # whoami and register are not done yet
    polling: bool = False  # the poll loop is running
    stopping: bool = False
    last_contact: float | None = None  # clock() of the last answer of the API to one of the agent's calls
    failing: dict[str, str] = field(default_factory=dict)  # duty -> its last call's error, until the API answers
    platform_check: Callable[[], str | None] | None = None  # a driver's platform problem, or None
    # counters
    polls: int = 0
    claims: int = 0
    deployments: int = 0
    deployment_failures: int = 0
    api_errors: int = 0
    active_runs: int = 0

    def api_ok(self, duty: str = "api") -> None:
        """The API answered a call of ``duty`` (a refusal is an answer too): its failure streak is over."""
        self.last_contact = self.clock()
        self.failing.pop(duty, None)

    def api_failed(self, error: BaseException, duty: str = "api") -> None:
        self.api_errors += 1
        self.failing[duty] = str(error)

    def forget_duty(self, duty: str) -> None:
        """Drop what is known of ``duty`` (a run the agent no longer holds): the dict must not grow forever."""
        self.failing.pop(duty, None)

    def unhealthy_reason(self) -> str | None:
        """Why the agent is unhealthy, or None when it is healthy."""
        if self.stopping:
            return "the agent is stopping: it no longer claims runs"
        if self.starting:
            return "the agent is starting: it has not registered with the API yet"
        if not self.polling:
            return "the poll loop is not running"
        error = self.failing.get(POLL_DUTY)
        if error is not None:
            return f"the poll loop's API calls are failing: {error}"
        silent = None if self.last_contact is None else self.clock() - self.last_contact
        if silent is None or silent > self.deadline_seconds:
            since = "yet" if silent is None else f"for {silent:.0f}s"
            return f"no successful API call {since} (deadline {self.deadline_seconds:.0f}s)"
        return self.platform_check() if self.platform_check is not None else None

    def health(self) -> tuple[int, dict[str, Any]]:
        """The status code and JSON body of ``GET /api/health``."""
        reason = self.unhealthy_reason()
        body: dict[str, Any] = {"agent": self.name, "version": __version__, "active_runs": self.active_runs}
        if self.last_contact is not None:
            body["seconds_since_api_contact"] = round(self.clock() - self.last_contact, 3)
        if reason is None:
            return 200, {"status": "healthy", **body}
        return 503, {"status": "unhealthy", "reason": reason, **body}

    def render_metrics(self) -> str:
        """The Prometheus text exposition of the counters."""
        metrics = [
            ("baton_agent_polls_total", "counter", "Claim calls made to the API.", self.polls),
            ("baton_agent_claims_total", "counter", "Flow runs claimed.", self.claims),
            ("baton_agent_deployments_total", "counter", "Flow runs deployed and Submitted.", self.deployments),
            (
                "baton_agent_deployment_failures_total",
                "counter",
                "Flow runs whose deployment failed (marked Failed).",
                self.deployment_failures,
            ),
            ("baton_agent_api_errors_total", "counter", "Transient API call failures.", self.api_errors),
            ("baton_agent_active_runs", "gauge", "Flow runs holding a slot of this agent.", self.active_runs),
            ("baton_agent_healthy", "gauge", "1 while /api/health answers 200.", int(self.health()[0] == 200)),
        ]
        lines: list[str] = []
        for name, kind, help_text, value in metrics:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"


def parse_address(address: str) -> tuple[str, int]:
    """``http://HOST:PORT`` -> (host, port).

    Raises:
        ConfigurationError: not an http address with a host and a port.
    """
    parts = urlsplit(address if "://" in address else f"http://{address}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"invalid agent address {address!r}: {exc}") from exc
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise ConfigurationError(f"invalid agent address {address!r}: expected http://HOST:PORT")
    return parts.hostname, port


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        status = self.server.status
        if path == "/api/health":
            code, body = status.health()
            self._send(code, json.dumps(body), "application/json")
        elif path == "/api/poke":
            self.server.poke()
            self._send(200, json.dumps({"status": "poked"}), "application/json")
        elif path == "/metrics":
            self._send(200, status.render_metrics(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._send(404, json.dumps({"detail": f"no route {path}"}), "application/json")

    def _send(self, code: int, text: str, content_type: str) -> None:
        payload = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("health server: %s", format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], status: AgentStatus, poke: Callable[[], None]) -> None:
        self.status = status
        self.poke = poke
        super().__init__(address, _Handler)


class HealthServer:
    """Serves an :class:`AgentStatus` at ``address`` until :meth:`stop`.

    Args:
        address: ``http://HOST:PORT``; port 0 picks a free port (see :attr:`port`).
        status: the facts to serve.
        poke: called (from the server's thread) on ``GET /api/poke``; must be thread-safe.
    """

    def __init__(self, address: str, status: AgentStatus, poke: Callable[[], None]) -> None:
        self.host, self.port = parse_address(address)
        self._status = status
        self._poke = poke
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve in a daemon thread.

        Raises:
            ConfigurationError: the address cannot be bound (in use, not a local address).
        """
        try:
            self._server = _Server((self.host, self.port), self._status, self._poke)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve the agent's health check on {self.url}: {exc}") from exc
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="baton-agent-health", daemon=True
        )
        self._thread.start()
        logger.info("health check at %s/api/health", self.url)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
