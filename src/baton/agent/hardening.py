"""What an agent process does to itself before it starts deploying flow code (docs/design.md, Security model).

- It drops its secrets from its environment once its settings are read (``BATON__API__KEY``, and
  ``BATON__AGENT__ENV``, the flows' credentials): no child it ever starts inherits them by accident.
- On Linux it makes itself non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``): its ``/proc/PID/environ``, ``mem``,
  ``maps`` and ``fd`` then belong to root, so another process of the same user (a flow run without ``--run-as``)
  cannot read them, nor attach a debugger. It matters because unsetting a variable does not wipe
  ``/proc/PID/environ``: that file shows the environment the process was started with.

``/proc/PID/cmdline`` stays readable by every user whatever the agent does: hence the warning on ``-k/--key``.

Usage::

    harden_agent_process()   # once, where the agent process starts
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger("baton.agent")

# The variables that carry secrets into the agent (names as the settings read them, case-insensitively).
SECRET_VARIABLES = frozenset({"BATON__API__KEY", "BATON__AGENT__ENV"})
_PR_SET_DUMPABLE = 4


def drop_secret_variables() -> list[str]:
    """Remove the secret variables (any case) from this process's environment; return the names removed."""
    names = [name for name in os.environ if name.upper() in SECRET_VARIABLES]
    for name in names:
        del os.environ[name]
    return names


def make_non_dumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)`` on Linux; False elsewhere or when it failed (logged)."""
    return set_dumpable(False)


def set_dumpable(dumpable: bool) -> bool:
    """``prctl(PR_SET_DUMPABLE, dumpable)`` on Linux; False elsewhere or when it failed (logged).

    The warm engine process (``engine/forkserver.py``) makes itself non-dumpable too, so that a flow cannot attach
    to it and so reach the runs forked after it; each child makes itself dumpable again, as ``exec`` would have.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        result = libc.prctl(_PR_SET_DUMPABLE, int(dumpable), 0, 0, 0)
    except (OSError, AttributeError) as exc:
        logger.warning("could not set the process's dumpable flag to %s: %s", dumpable, exc)
        return False
    if result != 0:
        logger.warning("could not set the process's dumpable flag to %s: %s", dumpable, os.strerror(ctypes.get_errno()))
        return False
    return True


def harden_agent_process() -> None:
    """Both of the above, once the settings (and so the key) have been read."""
    drop_secret_variables()
    make_non_dumpable()
