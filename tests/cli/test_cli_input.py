"""Parsing and validation on the command line: bad input is one line on stderr and exit code 2, before any
request is sent; settings follow explicit option > environment > config.toml > default."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_support import FakeClient

from baton.cli.context import CliState
from baton.cli.errors import to_cli_error
from baton.cli.output import (
    EXIT_FAILURE,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    InputError,
    parse_env,
    parse_labels,
    parse_params,
)
from baton.cli.run import scheduled_start
from baton.exceptions import (
    AuthenticationError,
    BatonError,
    ClientError,
    ConfigurationError,
    ConflictError,
    FlowLoadError,
    InvalidLabelError,
    NotFoundError,
    PermissionDeniedError,
    ServerUnavailableError,
)
from baton.settings import DEFAULT_API_URL
from support import free_port


def one_error_line(result: Any) -> str:
    """The single stderr line of a failed command (and nothing on stdout)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    return str(lines[0])


# --- --param ------------------------------------------------------------------------------------


def test_param_values_are_json_when_valid_json_else_strings() -> None:
    params = parse_params(
        ["n=5", "name=world", "flag=true", "items=[1, 2]", 'quoted="5"', "empty=", "eq=a=b", "none=null"]
    )
    assert params == {
        "n": 5,
        "name": "world",
        "flag": True,
        "items": [1, 2],
        "quoted": "5",
        "empty": "",
        "eq": "a=b",
        "none": None,
    }


@pytest.mark.parametrize("bad", ["novalue", "=5", " =x"])
def test_param_without_key_or_equals_is_refused(bad: str) -> None:
    with pytest.raises(InputError, match="--param expects KEY=VALUE"):
        parse_params([bad])


def test_run_with_malformed_param_is_one_line_and_exit_2_before_any_request(invoke: Any) -> None:
    # The API URL points at a closed port: reaching it would be exit 3, so exit 2 proves no request was sent.
    result = invoke("run", "hello", "--param", "name", "-a", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == EXIT_USAGE
    assert one_error_line(result) == "Error: --param expects KEY=VALUE, got 'name'"
    assert result.stdout == ""


# --- --env and labels ---------------------------------------------------------------------------


def test_env_pairs_are_parsed_and_keys_checked() -> None:
    assert parse_env(["A=1", "B_2=x=y", "EMPTY="]) == {"A": "1", "B_2": "x=y", "EMPTY": ""}
    with pytest.raises(InputError, match="--env expects KEY=VALUE"):
        parse_env(["NOEQUALS"])
    with pytest.raises(InputError, match="not a valid environment variable name"):
        parse_env(["BAD NAME=1"])


def test_labels_are_validated_sorted_and_deduplicated() -> None:
    assert parse_labels(["staging", "dev", "dev"]) == ["dev", "staging"]
    assert parse_labels([]) is None
    with pytest.raises(InputError, match="invalid label 'has space'"):
        parse_labels(["has space"])


@pytest.mark.parametrize(
    "args",
    [
        ("run", "hello", "--label", "bad label"),
        ("register", __file__, "--label", "a,b"),
        ("agent", "local", "start", "--label", "bad label"),
    ],
    ids=["run", "register", "agent"],
)
def test_invalid_label_is_one_line_and_exit_2(invoke: Any, args: tuple[str, ...]) -> None:
    result = invoke(*args, "-a", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == EXIT_USAGE
    assert "invalid label" in one_error_line(result)


# --- scheduling ---------------------------------------------------------------------------------


def test_start_in_and_at_set_the_scheduled_time() -> None:
    before = datetime.now(UTC)
    start = scheduled_start(90, None)
    assert start is not None
    assert before + timedelta(seconds=89) < start < datetime.now(UTC) + timedelta(seconds=91)
    assert scheduled_start(None, "2026-01-31T09:00:00Z") == datetime(2026, 1, 31, 9, tzinfo=UTC)
    local = scheduled_start(None, "2026-01-31T09:00:00")
    assert local is not None and local.tzinfo is not None
    assert scheduled_start(None, None) is None


def test_start_in_with_at_is_refused(invoke: Any) -> None:
    result = invoke("run", "hello", "--start-in", "5", "--at", "2026-01-01T00:00:00Z")
    assert result.exit_code == EXIT_USAGE
    assert one_error_line(result) == "Error: give --start-in or --at, not both"


def test_at_must_be_iso_time(invoke: Any) -> None:
    result = invoke("run", "hello", "--at", "tomorrow")
    assert result.exit_code == EXIT_USAGE
    assert "is not an ISO 8601 time" in one_error_line(result)


# --- click's own checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("run", "hello", "--nope"),
        ("runs", "list", "--state", "Sleeping"),
        ("runs", "list", "--limit", "0"),
        ("key", "create"),
        ("key", "create", "--role", "owner"),
        ("register", "/no/such/file.py"),
        ("agent", "local", "start", "--log-level", "LOUD"),
        ("agent", "local", "start", "--limit", "-1"),
        ("server", "start", "--port", "70000"),
        ("nosuchcommand",),
    ],
)
def test_usage_errors_exit_2(invoke: Any, args: tuple[str, ...]) -> None:
    result = invoke(*args)
    assert result.exit_code == EXIT_USAGE
    assert "Error:" in result.stderr


def test_choices_accept_any_case_and_pass_the_canonical_value(invoke: Any, fake_client: Any) -> None:
    class ListingClient(FakeClient):
        def list_flow_runs(self, **kwargs: Any) -> list[Any]:
            self.created = kwargs
            return []

    client = fake_client(ListingClient(runs=[]))
    result = invoke("runs", "list", "--state", "failed", "--flow", "etl", "--limit", "3")
    assert result.exit_code == 0, result.output
    assert client.created == {"state": "Failed", "flow_name": "etl", "limit": 3, "late": False}
    assert result.stdout.strip() == "No flow runs."


# --- exception mapping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        (ServerUnavailableError("cannot reach the API at http://x"), EXIT_UNAVAILABLE, "is the server running?"),
        (AuthenticationError(401, "invalid API key"), EXIT_REFUSED, "the API refused the key: invalid API key"),
        (PermissionDeniedError(403, "role read may not"), EXIT_REFUSED, "permission denied: role read may not"),
        (NotFoundError(404, "flow 'nope' not found"), EXIT_FAILURE, "flow 'nope' not found (HTTP 404)"),
        (ConflictError(409, "already Cancelled"), EXIT_FAILURE, "already Cancelled (HTTP 409)"),
        (ClientError(422, "labels: too many"), EXIT_USAGE, "invalid request: labels: too many (HTTP 422)"),
        (ConfigurationError("no API key"), EXIT_USAGE, "configuration: no API key"),
        (InvalidLabelError("invalid label 'a b'"), EXIT_USAGE, "invalid label 'a b'"),
        (FlowLoadError("x.py:3: SyntaxError\n  more"), EXIT_FAILURE, "cannot load flows: x.py:3: SyntaxError more"),
        (BatonError("something else"), EXIT_FAILURE, "something else"),
    ],
)
def test_baton_errors_map_to_one_line_and_an_exit_code(error: BatonError, code: int, text: str) -> None:
    cli_error = to_cli_error(error)
    assert cli_error.exit_code == code
    assert text in cli_error.format_message()
    assert "\n" not in cli_error.format_message()


def test_missing_key_is_a_configuration_error(invoke: Any) -> None:
    result = invoke("runs", "list", "-a", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == EXIT_USAGE
    assert "no API key" in one_error_line(result)


def test_unreachable_server_is_one_line_and_exit_3(invoke: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = invoke("runs", "list", "-a", url, "-k", "bat_x")
    assert result.exit_code == EXIT_UNAVAILABLE
    line = one_error_line(result)
    assert f"cannot reach the API at {url}" in line
    assert "baton server start" in line


def test_malformed_api_url_is_a_configuration_error(invoke: Any) -> None:
    result = invoke("runs", "list", "-a", "localhost:4200", "-k", "bat_x")
    assert result.exit_code == EXIT_USAGE
    assert "API URL must start with http:// or https://" in one_error_line(result)


# --- precedence: explicit > env > config.toml > default ------------------------------------------


def _error_of(invoke: Any, *args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    return str(result.stderr)


def test_api_url_precedence(invoke: Any, baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_file, from_env, from_root, from_command = (f"http://127.0.0.1:{free_port()}" for _ in range(4))
    (baton_home / "config.toml").write_text(f'[api]\nurl = "{from_file}"\nkey = "bat_x"\n')
    assert from_file in _error_of(invoke, "runs", "list")

    monkeypatch.setenv("BATON__API__URL", from_env)
    assert from_env in _error_of(invoke, "runs", "list")

    assert from_root in _error_of(invoke, "-a", from_root, "runs", "list")
    # a command's own -a wins over the root group's
    assert from_command in _error_of(invoke, "-a", from_root, "runs", "list", "-a", from_command)


def test_default_api_url_without_env_or_config() -> None:
    assert CliState().settings().api.url == DEFAULT_API_URL
    assert CliState(api="http://127.0.0.1:9").settings(api={"url": None}).api.url == "http://127.0.0.1:9"


def test_key_precedence(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (baton_home / "config.toml").write_text('[api]\nkey = "bat_file"\n')
    assert CliState().settings().api.key.get_secret_value() == "bat_file"  # type: ignore[union-attr]
    monkeypatch.setenv("BATON__API__KEY", "bat_env")
    assert CliState().settings().api.key.get_secret_value() == "bat_env"  # type: ignore[union-attr]
    assert CliState(key="bat_cli").settings().api.key.get_secret_value() == "bat_cli"  # type: ignore[union-attr]


def test_malformed_config_file_is_one_line(invoke: Any, baton_home: Path) -> None:
    (baton_home / "config.toml").write_text("[api\nurl=")
    result = invoke("runs", "list")
    assert result.exit_code == EXIT_USAGE
    assert "config.toml is not valid TOML" in one_error_line(result)
