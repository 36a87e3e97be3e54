"""``python -m baton.server``: the API server with settings from the environment and config file only.

The CLI's ``baton server start`` is the usual way; this entry point has no dependency on the CLI. It takes no
arguments: ``--help`` says so, and anything else is refused (exit 2) rather than starting a server unasked.
"""

from __future__ import annotations

import argparse

from baton.exits import exit_now
from baton.server.main import serve
from baton.settings import load_settings


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m baton.server",
        description="Run the Baton API server until SIGINT/SIGTERM, with settings from BATON__SERVER__* variables "
        "and $BATON_HOME/config.toml only (`baton server start` takes options too).",
    )


if __name__ == "__main__":
    _parser().parse_args()  # --help prints and exits 0; an argument is an error (exit 2)
    serve(load_settings())
    exit_now(0)  # stopped cleanly: skip the interpreter's teardown (exits.py)
