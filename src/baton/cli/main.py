"""The ``baton`` command: the root group and the console-script entry point.

Usage::

    baton server start
    baton register examples/hello.py
    baton run hello --param name=Ada --watch
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import click

from baton import __version__
from baton.cli.context import api_options
from baton.cli.errors import to_cli_error
from baton.exceptions import BatonError
from baton.exits import exit_now, has_shut_down_cleanly

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

EPILOG = """\b
Exit codes: 0 success; 1 failure (a watched run Failed or was Cancelled, unknown flow or run, conflict);
2 bad input or configuration; 3 the API server cannot be reached; 4 the key was refused;
130 stopped watching with Ctrl-C (the run goes on).
"""


# The commands, each imported when it is used: `baton runs list` need not import the agents' code (their Docker
# and Kubernetes options, the Docker policy), which made every CLI call ~0.7 s of CPU instead of ~0.5.
COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("baton.cli.agent", "agent"),
    "agents": ("baton.cli.agents", "agents"),
    "docker": ("baton.cli.docker", "docker_group"),
    "flows": ("baton.cli.flows", "flows"),
    "key": ("baton.cli.keys", "key"),
    "limits": ("baton.cli.limits", "limits"),
    "notify": ("baton.cli.notify", "notify"),
    "register": ("baton.cli.register", "register"),
    "run": ("baton.cli.run", "run"),
    "runs": ("baton.cli.runs", "runs"),
    "server": ("baton.cli.server", "server"),
}


class BatonGroup(click.Group):
    """The root group: every Baton exception below it becomes one line on stderr and an exit code; its commands
    are imported when used (``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module, attribute = COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatonError as exc:
            raise to_cli_error(exc) from exc


@click.group("baton", cls=BatonGroup, context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@click.version_option(__version__, "-V", "--version", prog_name="baton")
@api_options
def cli() -> None:
    """Baton: an agent-based workflow orchestrator with hybrid execution.

    The API server stores metadata only; agents in your infrastructure claim flow runs and start them there.
    """


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``baton``): run the CLI and exit with its code.

    Baton errors raised inside a command are mapped by :class:`BatonGroup`; this catch covers any raised while
    click prepares the command (option callbacks), so that the user never sees a traceback for them either.
    """
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="baton")
    except BatonError as exc:
        error = to_cli_error(exc)
        error.show()
        sys.exit(error.exit_code)
    except SystemExit as exc:
        if exc.code in (0, None) and has_shut_down_cleanly():
            exit_now(0)  # a server or agent that stopped cleanly: skip the interpreter's teardown (exits.py)
        raise
