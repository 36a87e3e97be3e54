"""``python -m baton.server``: the API server with settings from the environment and config file only.

The CLI's ``baton server start`` is the usual way; this entry point has no dependency on the CLI.
"""

from __future__ import annotations

from baton.exits import exit_now
from baton.server.main import serve
from baton.settings import load_settings

if __name__ == "__main__":
    serve(load_settings())
    exit_now(0)  # stopped cleanly: skip the interpreter's teardown (exits.py)
