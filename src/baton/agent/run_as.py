"""Running flows as another OS user (``baton agent local start --run-as USER``, ``--allow-run-as USER``).

A flow run as the agent's own user can do what that user can: read the agent's config and key files, signal it.
Run as a user of its own, it cannot: the agent's files are the agent user's (mode 0600), the agent's ``/proc``
files other than ``cmdline`` are its owner's, and the flow gets a fresh working directory that only it owns.

Switching users needs root (or ``CAP_SETUID`` and ``CAP_SETGID``): :func:`check_can_switch` says so at start.

Usage::

    user = lookup_user("baton-flows")
    check_can_switch([user])
    problem = probe_user(user, sys.executable, [config_path()])   # None, or why it cannot be used
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from baton.exceptions import ConfigurationError

_CAP_SETGID, _CAP_SETUID = 6, 7
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Run as the flow's user: can it run the agent's Python with Baton, and which of the agent's secret files can it
# open? Prints one readable path per line.
_PROBE = """
import sys
import baton.engine
for path in sys.argv[1:]:
    try:
        open(path, "rb").close()
    except OSError:
        continue
    print(path)
"""


@dataclass(frozen=True)
class OsUser:
    """An OS user flows run as: its ids, its groups and its home."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def lookup_user(name: str, flag: str = "--run-as") -> OsUser:
    """The user called ``name`` on this host.

    Raises:
        ConfigurationError: there is no such user.
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigurationError(f"{flag} {name}: no such user on this host") from None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def current_user() -> OsUser:
    """The user this process runs as (HOME from the environment when set, as a shell would)."""
    entry = pwd.getpwuid(os.geteuid())
    home = os.environ.get("HOME") or entry.pw_dir
    return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid, tuple(os.getgroups()), home)


def can_switch_users() -> bool:
    """Root, or both ``CAP_SETUID`` and ``CAP_SETGID`` in this process's effective set (Linux)."""
    if os.geteuid() == 0:
        return True
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
            return bool(effective >> _CAP_SETUID & 1 and effective >> _CAP_SETGID & 1)
    return False


def check_can_switch(users: list[OsUser]) -> None:
    """Refuse to start when flows should run as another user and this process cannot switch to it.

    Raises:
        ConfigurationError: naming the user and what the agent would need.
    """
    others = [user.name for user in users if user.uid != os.geteuid()]
    if others and not can_switch_users():
        raise ConfigurationError(
            f"running flows as {', '.join(others)} needs an agent run by root (or with CAP_SETUID and CAP_SETGID); "
            f"this agent runs as uid {os.geteuid()}"
        )


def probe_user(user: OsUser, python: str, secret_paths: list[Path]) -> str | None:
    """Why flows cannot safely run as ``user``, or None: it must run ``python`` with Baton, and open none of
    ``secret_paths`` (the agent's key file and config)."""
    existing = [str(path) for path in secret_paths if path.exists()]
    try:
        result = subprocess.run(
            [python, "-c", _PROBE, *existing],
            user=user.uid,
            group=user.gid,
            extra_groups=list(user.groups),
            env={"PATH": os.environ.get("PATH", _DEFAULT_PATH), "HOME": user.home},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot start {python} as that user: {exc}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"that user cannot run {python} with Baton ({last}): install Baton where it can read it"
    readable = result.stdout.split()
    if readable:
        return f"that user can read the agent's {', '.join(readable)}: make it readable by the agent's user only"
    return None


def make_workdir(user: OsUser) -> str:
    """A fresh directory for one run, owned by ``user`` and closed to everyone else."""
    path = tempfile.mkdtemp(prefix="baton-run-")
    os.chown(path, user.uid, user.gid)
    return path


def remove_workdir(path: str) -> None:
    """Remove a run's directory and what the run left in it (best effort: it is under the system's temp dir)."""
    shutil.rmtree(path, ignore_errors=True)
