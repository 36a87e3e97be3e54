"""Installation configs for agents: ``baton agent local install`` prints a supervisord config.

Supervisord reads its config with a ``RawConfigParser`` that treats ``;`` and ``#`` after whitespace as the start
of a comment, expands ``%(name)s``, then splits ``command=`` with ``shlex``. Every value the user gives is
quoted for all three, so a label, path or ``--env`` value never changes the command line.

Usage::

    print(render_supervisord_config(key="bat_...", labels=["dev"], env={"A": "1"}))
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from baton.exceptions import ConfigurationError

_COMMENT_AFTER_SPACE = re.compile(r"(?<=\s)([;#])")


def _quote(argument: str) -> str:
    """One argument, quoted for shlex, safe from configparser comments and supervisord's ``%`` expansion."""
    if "\n" in argument or "\r" in argument or "\0" in argument:
        raise ConfigurationError(f"a supervisord command argument cannot contain a line break: {argument!r}")
    quoted = shlex.quote(argument)
    # Inside single quotes, `'"#"'` ends the quote, adds a double-quoted `#`, and reopens: the `#` then follows a
    # quote character instead of whitespace, which configparser would take for a comment.
    quoted = _COMMENT_AFTER_SPACE.sub(lambda match: f"'\"{match.group(1)}\"'", quoted)
    return quoted.replace("%", "%%")


def default_executable() -> str:
    """The ``baton`` script next to this Python (supervisord's PATH rarely has the virtualenv), else ``baton``."""
    candidate = Path(sys.executable).parent / "baton"
    if candidate.exists():
        return str(candidate)
    return shutil.which("baton") or "baton"


def local_agent_command(
    *,
    key: str | None = None,
    api: str | None = None,
    tenant_id: str | None = None,
    agent_config_id: str | None = None,
    name: str | None = None,
    labels: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    import_paths: Sequence[str] = (),
    agent_address: str | None = None,
    log_level: str | None = None,
    limit: int | None = None,
    no_cloud_logs: bool = False,
    show_flow_logs: bool = False,
    hostname_label: bool = True,
    executable: str | None = None,
) -> list[str]:
    """The argv of ``baton agent local start`` with these options (unquoted)."""
    argv = [executable or default_executable(), "agent", "local", "start"]
    options = [
        ("--key", key),
        ("--api", api),
        ("--tenant-id", tenant_id),
        ("--agent-config-id", agent_config_id),
        ("--name", name),
        ("--agent-address", agent_address),
        ("--log-level", log_level.upper() if log_level else None),
        ("--limit", str(limit) if limit is not None else None),
    ]
    for flag, value in options:
        if value is not None:
            argv += [flag, value]
    for label in labels:
        argv += ["--label", label]
    for variable, value in (env or {}).items():
        argv += ["--env", f"{variable}={value}"]
    for path in import_paths:
        argv += ["--import-path", str(Path(path).expanduser().resolve())]
    if no_cloud_logs:
        argv.append("--no-cloud-logs")
    if show_flow_logs:
        argv.append("--show-flow-logs")
    if not hostname_label:
        argv.append("--no-hostname-label")
    return argv


def render_supervisord_config(
    *,
    key: str | None = None,
    api: str | None = None,
    tenant_id: str | None = None,
    agent_config_id: str | None = None,
    name: str | None = None,
    labels: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    import_paths: Sequence[str] = (),
    agent_address: str | None = None,
    log_level: str | None = None,
    limit: int | None = None,
    no_cloud_logs: bool = False,
    show_flow_logs: bool = False,
    hostname_label: bool = True,
    executable: str | None = None,
    stop_wait_seconds: int = 600,
) -> str:
    """A complete supervisord.conf running a local agent as ``[program:baton-agent]``.

    Args:
        key: the agent's API key (role runner); None: the agent reads it from its environment or config file.
        api: the API URL. The other options are those of ``baton agent local start``.
        executable: the ``baton`` script to run (default: the one installed next to this Python).
        stop_wait_seconds: how long supervisord lets the agent's warm stop wait for running flow runs before
            it kills the agent (the flow runs themselves live on in their own process groups).

    Raises:
        ConfigurationError: a value contains a line break.
    """
    argv = local_agent_command(
        key=key,
        api=api,
        tenant_id=tenant_id,
        agent_config_id=agent_config_id,
        name=name,
        labels=labels,
        env=env,
        import_paths=import_paths,
        agent_address=agent_address,
        log_level=log_level,
        limit=limit,
        no_cloud_logs=no_cloud_logs,
        show_flow_logs=show_flow_logs,
        hostname_label=hostname_label,
        executable=executable,
    )
    command = " ".join(_quote(argument) for argument in argv)
    health = f"; health check: {agent_address}/api/health\n" if agent_address else ""
    return f"""\
; supervisord config for a Baton local agent (generated by `baton agent local install`).
; Run it with: supervisord -c supervisord.conf      Control it with: supervisorctl -c supervisord.conf status
; It holds the agent's API key: keep it readable by its owner only (chmod 600).
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
autostart=true
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
