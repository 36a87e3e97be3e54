"""`baton agent local install`: a supervisord config whose command line survives supervisord's parsing."""

from __future__ import annotations

import configparser
import shlex
from typing import Any

import pytest

from baton.agent.install import local_agent_command, render_supervisord_config
from baton.exceptions import ConfigurationError


def supervisord_argv(config: str, program: str = "program:baton-agent") -> list[str]:
    """Read ``command=`` as supervisord does: RawConfigParser with ; and # inline comments, %-expansion, shlex."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    parser.read_string(config)
    command = parser.get(program, "command")
    return shlex.split(command % {"program_name": "baton-agent", "here": "/etc"})


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


def test_command_is_baton_agent_local_start_with_every_option() -> None:
    argv = local_agent_command(**OPTIONS, no_cloud_logs=True, show_flow_logs=True, hostname_label=False)
    assert argv[:4] == ["/opt/baton/bin/baton", "agent", "local", "start"]
    pairs = list(zip(argv[4::2], argv[5::2], strict=False))
    assert ("--key", OPTIONS["key"]) in pairs
    assert ("--label", "team:data") in pairs
    assert ("--env", "TRICKY=" + OPTIONS["env"]["TRICKY"]) in pairs
    assert ("--import-path", "/srv/with space") in pairs
    assert ("--log-level", "DEBUG") in pairs
    assert ("--limit", "4") in pairs
    assert argv[-3:] == ["--no-cloud-logs", "--show-flow-logs", "--no-hostname-label"]


def test_supervisord_reads_back_exactly_the_command() -> None:
    config = render_supervisord_config(**OPTIONS)
    assert supervisord_argv(config) == local_agent_command(**OPTIONS)


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
    argv = supervisord_argv(render_supervisord_config(executable="baton"))
    assert argv == ["baton", "agent", "local", "start"]


def test_line_breaks_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="line break"):
        render_supervisord_config(env={"A": "one\ntwo"})
