"""Errors found in review: each is one clear line and the documented exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path

from cli_support import baton_cli

from support import free_port


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_malformed_api_url_is_a_configuration_error(tmp_path: Path) -> None:
    result = baton_cli(tmp_path, "-a", "http://[::1", "runs", "list", subprocess_=True)
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "invalid API URL" in line and "http://[::1" in line


def test_create_tenant_with_an_unreachable_database_names_it_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://someone:hunter2@127.0.0.1:{free_port()}/baton"
    result = baton_cli(tmp_path, "server", "create-tenant", "acme", "--database-url", url)
    assert result.returncode == 3
    line = _one_error_line(result.stderr)
    assert "cannot use the database" in line and "127.0.0.1" in line
    assert "hunter2" not in line
    assert "baton server start" not in line  # the API-server hint does not apply to a database


def test_unsupported_database_is_a_configuration_error(tmp_path: Path) -> None:
    result = baton_cli(tmp_path, "server", "migrate", "--database-url", "mysql://u@127.0.0.1/x")
    assert result.returncode == 2
    assert "unsupported database 'mysql'" in _one_error_line(result.stderr)


def test_a_rate_limited_address_exits_4_like_a_refused_key_not_3_like_an_unreachable_server() -> None:
    from baton.cli.errors import to_cli_error
    from baton.cli.output import EXIT_REFUSED
    from baton.exceptions import RateLimitedError

    error = to_cli_error(RateLimitedError("the API at http://127.0.0.1:4200 asks to slow down: HTTP 429"))

    assert error.exit_code == EXIT_REFUSED == 4
    assert str(error).endswith("too many failed authentications from this address")
