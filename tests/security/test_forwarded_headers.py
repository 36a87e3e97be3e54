"""Issue 8, item 6: proxy headers are believed only from the proxies the operator names.

Before, uvicorn believed ``X-Forwarded-For`` from 127.0.0.1 by default: a local client could pick the address it
was counted as by the failed-authentication limit (unlimited guesses, or another address blocked).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from baton.cli.main import cli
from security.access_support import start_server
from support import ServerProcess

LIMIT = 3
BAD_KEY = {"Authorization": "Bearer bat_" + "x" * 43}
ELSEWHERE = {"X-Forwarded-For": "203.0.113.9"}  # a documentation address: only ever named in a header


def limited(home: Any, **env: str) -> ServerProcess:
    return start_server(
        home, BATON__SERVER__FAILED_AUTH_LIMIT=str(LIMIT), BATON__SERVER__FAILED_AUTH_WINDOW_SECONDS="60", **env
    )


@pytest.fixture
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = limited(tmp_path_factory.mktemp("forwarded-default"))
    yield process
    process.stop()


@pytest.fixture
def proxied_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = limited(tmp_path_factory.mktemp("forwarded-trusted"), BATON__SERVER__FORWARDED_ALLOW_IPS='["127.0.0.1"]')
    yield process
    process.stop()


def guess(http: httpx.Client, headers: dict[str, str]) -> int:
    return http.get("/api/whoami", headers={**BAD_KEY, **headers}).status_code


def test_by_default_forwarded_for_does_not_change_the_limited_address(default_server: ServerProcess) -> None:
    # From 127.0.0.1, the address uvicorn used to trust by default
    with httpx.Client(base_url=default_server.url, timeout=30) as http:
        # When a client guesses while claiming to be elsewhere
        statuses = [guess(http, ELSEWHERE) for _ in range(LIMIT)]

        # Then its own address is the one counted: blocked, whatever the header says
        assert statuses == [401] * LIMIT
        assert guess(http, {}) == 429
        assert guess(http, {"X-Forwarded-For": "198.51.100.7"}) == 429


def test_with_the_proxy_named_forwarded_for_is_the_limited_address(proxied_server: ServerProcess) -> None:
    with httpx.Client(base_url=proxied_server.url, timeout=30) as http:
        statuses = [guess(http, ELSEWHERE) for _ in range(LIMIT)]

        assert statuses == [401] * LIMIT
        assert guess(http, ELSEWHERE) == 429
        assert guess(http, {}) == 401  # the proxy itself is not blocked
        assert guess(http, {"X-Forwarded-For": "198.51.100.7"}) == 401


def test_server_start_takes_the_trusted_proxies(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    seen: list[Any] = []
    monkeypatch.setattr("baton.server.main.serve", lambda settings, log_level: seen.append(settings))
    monkeypatch.setenv("BATON_HOME", str(tmp_path))

    default = CliRunner().invoke(cli, ["server", "start"])
    named = CliRunner().invoke(cli, ["server", "start", "--forwarded-allow-ips", "127.0.0.1, 10.0.0.0/8"])

    assert default.exit_code == 0 and named.exit_code == 0, default.output + named.output
    assert [s.server.forwarded_allow_ips for s in seen] == [[], ["127.0.0.1", "10.0.0.0/8"]]
