"""`baton agent local install`: a supervisord config whose command line and environment survive its parsing."""

from __future__ import annotations

import configparser
import json
import shlex
from typing import Any

import pytest

from baton.agent.install import local_agent_command, render_supervisord_config
from baton.cli.agent import start_local
from baton.exceptions import ConfigurationError
from baton.settings import load_settings

EXPANSIONS = {"program_name": "baton-agent", "here": "/etc", "ENV_HOME": "/root"}


def _program(config: str) -> configparser.SectionProxy:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    parser.read_string(config)
    return parser["program:baton-agent"]


def supervisord_argv(config: str) -> list[str]:
    """Read ``command=`` as supervisord does: RawConfigParser with ; and # inline comments, %-expansion, shlex."""
    return shlex.split(_program(config)["command"] % EXPANSIONS)


def supervisord_env(config: str) -> dict[str, str]:
    """Read ``environment=`` as supervisord does: %-expansion, then a non-POSIX shlex of KEY=value pairs whose
    values lose the quote characters at both ends (supervisor.datatypes.dict_of_key_value_pairs)."""
    text = _program(config).get("environment", "") % EXPANSIONS
    lexer = shlex.shlex(text)
    lexer.wordchars += "/.+-():"
    tokens = list(lexer)
    variables: dict[str, str] = {}
    for index in range(0, len(tokens), 4):
        name, equals, value = tokens[index : index + 3]
        assert equals == "="
        variables[name] = value.strip("'\"")
    return variables


OPTIONS: dict[str, Any] = {
    "key": "bat_abcdefghijklmnopqrstuvwxyz012345",
    "api": "http://127.0.0.1:4200",
    "name": "agent with spaces",
    "labels": ["dev", "team:data"],
    "env": {
        "PLAIN": "1",
        "TRICKY": "a #not-a-comment ;nor-this %(ENV_HOME)s 'quoted' \"double\" $HOME `x`",
        "EMPTY": "",
    },
    "import_paths": ["/srv/flows", "/srv/with space"],
    "agent_address": "http://127.0.0.1:8080",
    "log_level": "debug",
    "limit": 4,
    "executable": "/opt/baton/bin/baton",
}


COMMAND_OPTIONS = {name: value for name, value in OPTIONS.items() if name not in ("key", "env")}


def test_command_is_baton_agent_local_start_with_every_option() -> None:
    argv = local_agent_command(**COMMAND_OPTIONS, no_cloud_logs=True, show_flow_logs=True, hostname_label=False)
    assert argv[:4] == ["/opt/baton/bin/baton", "agent", "local", "start"]

    # What `baton agent local start` reads back from it is every option given, and nothing else
    params = start_local.make_context("start", argv[4:]).params
    given = {name: value for name, value in params.items() if value not in (None, ())}
    assert given == {
        "api": "http://127.0.0.1:4200",
        "name": "agent with spaces",
        "labels": ("dev", "team:data"),
        "agent_address": "http://127.0.0.1:8080",
        "no_cloud_logs": True,
        "log_level": "DEBUG",
        "limit": 4,
        "import_paths": ("/srv/flows", "/srv/with space"),
        "show_flow_logs": True,
        "hostname_label": False,
    }


def test_an_option_that_is_not_local_starts_or_does_not_fit_a_service_is_refused() -> None:
    with pytest.raises(TypeError, match="no_pull"):
        local_agent_command(no_pull=True)
    with pytest.raises(ConfigurationError, match="--max-polls does not fit an installed agent"):
        local_agent_command(max_polls=0)


def test_supervisord_reads_back_exactly_the_command_and_it_holds_no_secret() -> None:
    config = render_supervisord_config(**OPTIONS)
    argv = supervisord_argv(config)
    assert argv == local_agent_command(**COMMAND_OPTIONS)
    assert not {"--key", "--env", "--token"} & set(argv)
    assert not any(OPTIONS["key"] in argument for argument in argv)


def test_the_key_and_env_reach_the_agent_through_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the environment supervisord gives the agent from the config
    variables = supervisord_env(render_supervisord_config(**OPTIONS))
    assert set(variables) == {"BATON__API__KEY", "BATON__AGENT__ENV"}

    # Then the agent's settings read exactly the key and the --env values given
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.api.key is not None and settings.api.key.get_secret_value() == OPTIONS["key"]
    assert settings.agent.env == OPTIONS["env"]
    assert json.loads(variables["BATON__AGENT__ENV"]) == OPTIONS["env"]


def test_a_key_supervisord_cannot_quote_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="BATON__API__KEY"):
        render_supervisord_config(key="bat_\"quoted'both")


def test_config_has_the_sections_supervisord_needs_and_a_warm_stop() -> None:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    parser.read_string(render_supervisord_config(key="bat_x", agent_address="http://127.0.0.1:8080"))
    assert {
        "supervisord",
        "supervisorctl",
        "unix_http_server",
        "rpcinterface:supervisor",
        "program:baton-agent",
    } <= set(parser.sections())
    program = parser["program:baton-agent"]
    assert program["stopsignal"] == "TERM"
    assert int(program["stopwaitsecs"]) >= 60
    assert program["autorestart"] == "true"
    assert program["killasgroup"] == "false"


def test_minimal_config_runs_the_agent_without_options() -> None:
    config = render_supervisord_config(executable="baton")
    assert supervisord_argv(config) == ["baton", "agent", "local", "start"]
    assert supervisord_env(config) == {}


def test_line_breaks_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="line break"):
        render_supervisord_config(env={"A": "one\ntwo"})


def test_the_security_options_reach_the_installed_agents_command_line(tmp_path: Any) -> None:
    key_file = tmp_path / "agent.key"
    config = render_supervisord_config(
        key_file=str(key_file),
        run_timeout_seconds=3600,
        run_as="baton-flows",
        allow_run_as=["etl", "ml"],
        executable="/opt/baton/bin/baton",
    )
    argv = supervisord_argv(config)
    assert argv[argv.index("--key-file") + 1] == str(key_file)
    assert argv[argv.index("--run-timeout") + 1] == "3600"
    assert argv[argv.index("--run-as") + 1] == "baton-flows"
    assert [argv[i + 1] for i, arg in enumerate(argv) if arg == "--allow-run-as"] == ["etl", "ml"]
    assert "\nenvironment=" not in config  # no key given: nothing secret to write
