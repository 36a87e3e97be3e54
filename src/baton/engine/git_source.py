"""Fetch a flow's code from Git (storage ``git``): one commit, shallow, into a fresh private directory.

The repository URL and ref come from a flow's registration, so they are treated as hostile: they were checked at
registration (``baton.schemas.storage_rules``), and again here; they reach ``git`` after ``--`` (never as an
option), with ``ext::`` and other command-running transports off, no terminal prompt (a private repository
without credentials fails at once instead of hanging), and a time limit. Credentials are ``git``'s own business
where the flow runs (a credential helper, ``GIT_ASKPASS``, an SSH key of the agent's environment).

Usage::

    root = fetch(repo="https://git.example.org/flows.git", ref="main")   # FlowLoadError on any failure
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from baton.exceptions import FlowLoadError
from baton.schemas.storage_rules import git_ref_problem, git_repo_problem

FETCH_TIMEOUT_SECONDS = 300
_SSH = "ssh -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4"
_ERROR_CHARS = 2000


def fetch(repo: str, ref: str | None, timeout: float = FETCH_TIMEOUT_SECONDS) -> Path:
    """Check out ``ref`` (default: the remote's HEAD) of ``repo`` into a new directory (removed at exit).

    Raises:
        FlowLoadError: git is missing, the repository or ref is refused or cannot be fetched, or time ran out.
    """
    problem = git_repo_problem(repo) or (git_ref_problem(ref) if ref else None)
    if problem is not None:
        raise FlowLoadError(f"storage git: {problem}")
    if shutil.which("git") is None:
        raise FlowLoadError(
            "storage git: git is not installed where this flow runs (the local agent's host, or the run's image)"
        )
    root = Path(tempfile.mkdtemp(prefix="baton-git-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    safe = [
        *("-c", "protocol.ext.allow=never", "-c", "protocol.fd.allow=never", "-c", "core.hooksPath=/dev/null"),
        # A server that stops sending fails the fetch rather than holding it until the time limit
        *("-c", "http.lowSpeedLimit=1", "-c", "http.lowSpeedTime=60"),
    ]
    _git(["git", "init", "-q", str(root)], timeout, repo)
    _git(["git", *safe, "-C", str(root), "fetch", "-q", "--depth", "1", "--", repo, ref or "HEAD"], timeout, repo)
    _git(
        ["git", *safe, "-C", str(root), "-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD"],
        timeout,
        repo,
    )
    return root


def _git(command: list[str], timeout: float, repo: str) -> None:
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",  # never wait for a password nobody will type
        "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", _SSH),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    try:
        # A session of its own: on time out, git and its helpers (git-remote-http, ssh) go with it, not on alone
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
    except OSError as exc:
        raise FlowLoadError(f"storage git: cannot run git: {exc}") from None
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise FlowLoadError(f"storage git: fetching {repo} took over {timeout:.0f} s") from None
    if process.returncode != 0:
        said = (err or out).strip()[-_ERROR_CHARS:]
        raise FlowLoadError(f"storage git: cannot fetch {repo}: {said or f'git exited {process.returncode}'}")
