"""Every command has --help (and -h), and the root has --version."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click
import pytest

from baton import __version__
from baton.cli.main import cli


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    context = click.Context(group)
    for name in group.list_commands(context):  # the root imports its commands as they are asked for
        command = group.get_command(context, name)
        assert command is not None, name
        path = (*prefix, name)
        yield path
        if isinstance(command, click.Group):
            yield from _command_paths(command, path)


ALL_COMMANDS = list(_command_paths(cli))


def test_the_command_tree_has_the_commands_of_the_contract() -> None:
    names = {" ".join(path) for path in ALL_COMMANDS}
    assert {
        "server start",
        "server create-tenant",
        "server migrate",
        "key create",
        "key list",
        "register",
        "run",
        "runs list",
        "runs get",
        "runs logs",
        "runs cancel",
        "runs explain",
        "agent start",
        "agent local start",
        "agent local install",
    } <= names


@pytest.mark.parametrize("path", [(), *ALL_COMMANDS], ids=lambda p: " ".join(p) or "baton")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_help(invoke: Any, path: tuple[str, ...], flag: str) -> None:
    result = invoke(*path, flag)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: baton {' '.join(path)}".rstrip())
    assert "Show this message and exit." in result.output


def test_version(invoke: Any) -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"baton, version {__version__}"


def test_local_agent_help_lists_every_common_option_like_prefect(invoke: Any) -> None:
    result = invoke("agent", "local", "start", "--help", terminal_width=200)
    for option in (
        "-k, --key",
        "--tenant-id",
        "-a, --api",
        "--agent-config-id",
        "-n, --name",
        "-l, --label",
        "-e, --env",
        "--max-polls",
        "--agent-address",
        "--no-cloud-logs",
        "--log-level [DEBUG|INFO|WARNING|ERROR]",
        "-t, --token",
        "--limit",
        "-p, --import-path",
        "-f, --show-flow-logs",
        "--hostname-label / --no-hostname-label",
    ):
        assert option in result.output, option


@pytest.mark.parametrize(
    "path",
    [("runs", "list"), ("runs", "get"), ("runs", "explain"), ("key", "create"), ("register",), ("run",)],
)
def test_data_commands_offer_json(invoke: Any, path: tuple[str, ...]) -> None:
    assert "--json" in invoke(*path, "--help").output
