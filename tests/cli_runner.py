"""``baton ARGS`` for the tests: in the test's own process where that is the same as a subprocess, else a subprocess.

A ``python -m baton.cli`` subprocess costs ~0.4 s of CPU (the interpreter, click, pydantic and the settings): about
230 of them were a sixth of the CPU of ``make test`` (issue 12). Most commands are a request or two whose behaviour
is the same in-process: the entry point (:func:`baton.cli.main.main`, with its error mapping and exit codes), the
environment (replaced, not merged, for the call), and stdout and stderr captured apart. An exception that escapes
the CLI prints its traceback on the captured stderr with exit code 1, as a real process would, so the tests'
"never a traceback" assertions still bite.

``register`` imports the user's flow files: what they add to ``sys.path``, and the modules the call imported from
outside the environment and Baton's source (the flow files and their sibling modules), are taken out again after
the call, so that the next project's ``helpers`` is its own. A flow file's top-level code runs in the test's process
(the tests' flow files have no side effects there). Error tests whose point is the one line a process prints pass
``subprocess_=True``: a process also shows what it prints as it exits.

Commands that stay in a process of their own:
- ``server`` and ``agent``: they start long-lived servers and agents, install signal handlers, or end the process;
- ``docker``: it builds images, and is slow anyway.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from unittest import mock

from click.testing import CliRunner

from server_zygote import exit_code_of

OWN_PROCESS = frozenset({"server", "agent", "docker"})
_VALUE_OPTIONS = frozenset({"-a", "--api", "-k", "--key"})  # the root group's options that take a value
_BATON_SOURCE = str(Path(__file__).resolve().parent.parent / "src" / "baton")


def command_of(args: Sequence[str]) -> str | None:
    """The command name in ``args`` (after the root group's options), or None for none (``--help``)."""
    position = 0
    while position < len(args):
        arg = args[position]
        if arg in _VALUE_OPTIONS:
            position += 2
        elif arg.startswith("-"):
            position += 1
        else:
            return arg
    return None


def run_cli(
    args: Sequence[str], env: Mapping[str, str], timeout: float = 60, *, subprocess_: bool = False
) -> subprocess.CompletedProcess[str]:
    """``baton ARGS`` with exactly the environment ``env``; in-process unless the command is in ``OWN_PROCESS`` or
    ``subprocess_`` asks for a process (a test of what only a process shows: what it prints as it exits).

    ``timeout`` bounds a subprocess; an in-process call is bounded by pytest's own timeout (``pyproject.toml``).
    """
    if subprocess_ or command_of(args) in OWN_PROCESS or os.environ.get("BATON_TESTS_CLI_SUBPROCESS"):
        return subprocess.run(
            [sys.executable, "-m", "baton.cli", *args],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    return _in_process(list(args), env)


def _in_process(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    from baton.cli.main import main

    # The environment of the call is ``env`` alone: what the test process has beyond it is unset meanwhile.
    overrides: dict[str, str | None] = {name: None for name in os.environ if name not in env}
    overrides.update(env)
    # ``main`` ends a process whose server or agent shut down cleanly at once (baton.exits); an in-process server
    # or agent of an earlier test may have set that flag, and this process is pytest's.
    with (
        _flow_imports_undone(),
        CliRunner().isolation(env=overrides) as (stdout, stderr, _),
        mock.patch("baton.cli.main.has_shut_down_cleanly", return_value=False),
    ):
        code = _exit_code_of_main(main, args)
        sys.stdout.flush()
        sys.stderr.flush()
    return subprocess.CompletedProcess(
        ["baton", *args],
        code,
        stdout.getvalue().decode("utf-8", "replace"),
        stderr.getvalue().decode("utf-8", "replace"),
    )


@contextlib.contextmanager
def _flow_imports_undone() -> Iterator[None]:
    """Restore ``sys.path``, and forget the modules the call imported from outside the environment and Baton (flow
    files loaded by ``register`` and their sibling modules, wherever they are); Baton's own modules and libraries
    imported on first use stay, as their classes are shared."""
    path = list(sys.path)
    before = set(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = path
        kept = (sys.prefix, sys.base_prefix, _BATON_SOURCE)
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None)
            if name.startswith("baton_flow_") or (file and not file.startswith(kept)):
                del sys.modules[name]


def _exit_code_of_main(main: Callable[[Sequence[str] | None], None], args: list[str]) -> int:
    """Run ``main(args)`` and return the exit code a process would have ended with."""
    try:
        main(args)
    except SystemExit as exit_:
        return exit_code_of(exit_)
    except Exception:  # what a process would print before exiting 1
        traceback.print_exc()
        return 1
    return 0
