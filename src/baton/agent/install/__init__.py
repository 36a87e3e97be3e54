"""Installation configs for agents: ``baton agent local install`` prints a supervisord config.

Supervisord reads its config with a ``RawConfigParser`` that treats ``;`` and ``#`` after whitespace as the start
of a comment, expands ``%(name)s``, then splits ``command=`` with ``shlex``. Every value the user gives is
quoted for all three, so a label or path never changes the command line.

Secrets stay off the command line, which any user of the host can read (``ps``, ``/proc/PID/cmdline``): the API
key and the ``--env`` values (flow runs' credentials, often) go to the program's ``environment=`` as
``BATON__API__KEY`` and ``BATON__AGENT__ENV``, which the agent reads like any setting; a process's environment is
readable by its owner only. Supervisord splits ``environment=`` with a non-POSIX ``shlex`` (no escapes) and strips
the quotes off each value, which :func:`_environment_value` allows for.

Usage::

    print(render_supervisord_config(key="bat_...", labels=["dev"], env={"A": "1"}))
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from baton.agent.option_specs import COMMON_OPTIONS, LOCAL_OPTIONS, check_installable, command_line
from baton.exceptions import ConfigurationError

_COMMENT_AFTER_SPACE = re.compile(r"(?<=\s)([;#])")
# In a JSON text these stand only inside strings, where JSON's own escapes can replace them.
_JSON_UNSAFE = {"'": "\\u0027", "%": "\\u0025", ";": "\\u003b", "#": "\\u0023"}


def _quote(argument: str) -> str:
    """One argument, quoted for shlex, safe from configparser comments and supervisord's ``%`` expansion."""
    if "\n" in argument or "\r" in argument or "\0" in argument:
        raise ConfigurationError(f"a supervisord command argument cannot contain a line break: {argument!r}")
    quoted = shlex.quote(argument)
    # Inside single quotes, `'"#"'` ends the quote, adds a double-quoted `#`, and reopens: the `#` then follows a
    # quote character instead of whitespace, which configparser would take for a comment.
    quoted = _COMMENT_AFTER_SPACE.sub(lambda match: f"'\"{match.group(1)}\"'", quoted)
    return quoted.replace("%", "%%")


def _environment_value(value: str, what: str) -> str:
    """One value for ``environment=KEY=value``, quoted for configparser, ``%`` expansion and supervisord's lexer."""
    quote = '"' if '"' not in value else "'"
    unquotable = (
        quote in value
        or value.startswith(("'", '"'))  # supervisord strips quote characters off both ends of the value
        or value.endswith(("'", '"'))
        or any(char in value for char in "\n\r\0")
        or _COMMENT_AFTER_SPACE.search(value)
    )
    if unquotable:
        raise ConfigurationError(f"{what} cannot be written to a supervisord config: it has characters it cannot quote")
    return quote + value.replace("%", "%%") + quote


def supervisord_environment(*, key: str | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The secret settings of an installed agent, as environment variables (unquoted).

    Raises:
        ConfigurationError: an ``--env`` value contains a line break.
    """
    variables: dict[str, str] = {}
    if key is not None:
        variables["BATON__API__KEY"] = key
    if env:
        for name, value in env.items():
            if "\n" in value or "\r" in value or "\0" in value:
                raise ConfigurationError(f"--env {name}: a value cannot contain a line break")
        text = json.dumps(dict(env), ensure_ascii=True)
        for char, escape in _JSON_UNSAFE.items():
            text = text.replace(char, escape)
        variables["BATON__AGENT__ENV"] = text
    return variables


def default_executable() -> str:
    """The ``baton`` script next to this Python (supervisord's PATH rarely has the virtualenv), else ``baton``."""
    candidate = Path(sys.executable).parent / "baton"
    if candidate.exists():
        return str(candidate)
    return shutil.which("baton") or "baton"


LOCAL_AGENT_SPECS = (*COMMON_OPTIONS, *LOCAL_OPTIONS)


def local_agent_command(executable: str | None = None, **values: Any) -> list[str]:
    """The argv of ``baton agent local start`` with these option ``values`` (unquoted), derived from the option
    specs: secrets (the key, ``--env``) are left to its environment, ``--max-polls`` is refused.

    Raises:
        TypeError: a value names no option of ``baton agent local start``.
        ConfigurationError: ``--max-polls``, which a service manager would defeat by restarting the agent.
    """
    check_installable(LOCAL_AGENT_SPECS, values, "baton agent local start", "supervisord")
    return [executable or default_executable(), "agent", "local", "start", *command_line(LOCAL_AGENT_SPECS, values)]


def render_supervisord_config(
    *,
    key: str | None = None,
    env: Mapping[str, str] | None = None,
    stop_wait_seconds: int = 600,
    executable: str | None = None,
    **command_options: Any,
) -> str:
    """A complete supervisord.conf running a local agent as ``[program:baton-agent]``.

    Args:
        key: the agent's API key (role runner); None: the agent reads it from its environment or config file.
            Written to the program's ``environment=``, never to its command line.
        env: the agent's ``--env`` values, written to ``environment=`` too.
        api: the API URL. The other options are those of ``baton agent local start``.
        executable: the ``baton`` script to run (default: the one installed next to this Python).
        stop_wait_seconds: how long supervisord lets the agent's warm stop wait for running flow runs before
            it kills the agent (the flow runs themselves live on in their own process groups).

    Raises:
        ConfigurationError: a value contains a line break, or the key characters supervisord cannot quote.
    """
    argv = local_agent_command(executable, **command_options)
    command = " ".join(_quote(argument) for argument in argv)
    variables = supervisord_environment(key=key, env=env)
    pairs = ",".join(f"{name}={_environment_value(value, name)}" for name, value in variables.items())
    environment = f"environment={pairs}\n" if pairs else ""
    agent_address = command_options.get("agent_address")
    health = f"; health check: {agent_address}/api/health\n" if agent_address else ""
    return f"""\
; supervisord config for a Baton local agent (generated by `baton agent local install`).
; Run it with: supervisord -c supervisord.conf      Control it with: supervisorctl -c supervisord.conf status
; It holds the agent's API key (in environment=, off the command line that any user can read): keep it
; readable by its owner only (chmod 600).
{health}
[unix_http_server]
file=/tmp/baton-supervisor.sock

[supervisord]
loglevel=info
logfile=/tmp/baton-supervisord.log
pidfile=/tmp/baton-supervisord.pid

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix:///tmp/baton-supervisor.sock

[program:baton-agent]
command={command}
{environment}autostart=true
autorestart=true
startsecs=5
; SIGTERM asks for a warm stop: no new runs, running ones finish.
stopsignal=TERM
stopwaitsecs={stop_wait_seconds}
; Flow runs have their own process groups: stopping the agent must not kill them.
stopasgroup=false
killasgroup=false
redirect_stderr=true
stdout_logfile=/tmp/baton-agent.log
stdout_logfile_maxbytes=10MB
stdout_logfile_backups=5
"""
