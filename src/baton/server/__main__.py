"""``python -m baton.server``: the API server with settings from the environment and config file only.

The CLI's ``baton server start`` is the usual way; this entry point imports nothing of the CLI to serve. It takes
no arguments: ``--help`` says so, and anything else is refused (exit 2) rather than starting a server unasked. Bad
settings and an unusable database are one line on stderr with the CLI's exit codes (2 and 3), never a traceback.
"""

from __future__ import annotations

import argparse

from baton.exceptions import BatonError
from baton.exits import exit_now
from baton.server.main import serve
from baton.settings import load_settings


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m baton.server",
        description="Run the Baton API server until SIGINT/SIGTERM, with settings from BATON__SERVER__* variables "
        "and $BATON_HOME/config.toml only (`baton server start` takes options too).",
    )


def _fail(exc: BatonError) -> None:
    """One line and the exit code ``baton server start`` gives for the same error (the CLI's table, imported only
    here)."""
    from baton.cli.errors import to_cli_error

    error = to_cli_error(exc)
    error.show()
    raise SystemExit(error.exit_code)


if __name__ == "__main__":
    _parser().parse_args()  # --help prints and exits 0; an argument is an error (exit 2)
    try:
        settings = load_settings()
        serve(settings, log_level=settings.logging.level)  # as `baton server start` does
    except BatonError as exc:
        _fail(exc)
    exit_now(0)  # stopped cleanly: skip the interpreter's teardown (exits.py)
