"""Ending a long-running Baton process (the server, an agent) once it has shut itself down cleanly.

By the time such a process returns from its main loop it has closed its connections, stopped its threads and
written its last log line. What the interpreter's own teardown would still do is free every object one by one:
~150,000 of them in the API server (FastAPI, SQLAlchemy, pydantic), 0.7-1 s of CPU measured on a 2-core machine,
between the last log line and the exit a supervisor, a deploy script or a restart is waiting for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import NoReturn

_shut_down = False  # set by a long-running command that returned after its own clean shutdown


def shut_down_cleanly() -> None:
    """Record that this process's long-running command (``baton server start``, ``baton agent ... start``) has
    returned after its own clean shutdown: the CLI's entry point then ends it with :func:`exit_now`.

    A flag, not an exit here: tests run these commands in-process (click's CliRunner), where only the real entry
    point may end the process.
    """
    global _shut_down  # noqa: PLW0603 - one process-wide fact, read once by the entry point
    _shut_down = True


def has_shut_down_cleanly() -> bool:
    return _shut_down


def exit_now(code: int = 0) -> NoReturn:
    """Flush the logs and the standard streams, then end the process with ``code`` at once (no teardown).

    Only for a process that has finished its own shutdown: ``atexit`` handlers and ``finally`` blocks still on the
    stack do not run.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing more can go there anyway
            stream.flush()
    os._exit(code)
