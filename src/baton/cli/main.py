"""The ``baton`` command: the root group and the console-script entry point.

Usage::

    baton server start
    baton register examples/hello.py
    baton run hello --param name=Ada --watch
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from baton import __version__
from baton.cli.agent import agent
from baton.cli.agents import agents
from baton.cli.context import api_options
from baton.cli.docker import docker_group
from baton.cli.errors import to_cli_error
from baton.cli.flows import flows
from baton.cli.keys import key
from baton.cli.limits import limits
from baton.cli.notify import notify
from baton.cli.register import register
from baton.cli.run import run
from baton.cli.runs import runs
from baton.cli.server import server
from baton.exceptions import BatonError
from baton.exits import exit_now, has_shut_down_cleanly

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

EPILOG = """\b
Exit codes: 0 success; 1 failure (a watched run Failed or was Cancelled, unknown flow or run, conflict);
2 bad input or configuration; 3 the API server cannot be reached; 4 the key was refused;
130 stopped watching with Ctrl-C (the run goes on).
"""


class BatonGroup(click.Group):
    """The root group: every Baton exception below it becomes one line on stderr and an exit code."""

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


for command in (server, key, register, run, runs, flows, agent, agents, docker_group, notify, limits):
    cli.add_command(command)


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
