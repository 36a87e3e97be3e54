"""Prefect 1's real CLI and client (``prefect==1.4.1``, from scripts/prefect1/venv.sh) against a Baton server.

The environment is made by ``.ci/run`` (or by hand: ``scripts/prefect1/venv.sh``); without it these tests skip with
the reason, and fail under ``CI=true``. Each test's Prefect gets a home of its own (``~/.prefect`` holds the key
that ``prefect auth login`` saves) and only the settings a user moving to Baton sets: the backend, the API URL, and
a Baton key.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support import REPO_ROOT, ServerProcess

VENV = Path(os.environ.get("BATON_PREFECT1_VENV", REPO_ROOT / ".cache" / "prefect1-venv"))


@dataclass
class Prefect1:
    """Runs Prefect 1's CLI and Python against ``server``, as a user of Prefect Cloud 1 would."""

    server: ServerProcess
    home: Path
    env_extra: dict[str, str] = field(default_factory=dict)  # Prefect 1 settings a test adds

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{VENV / 'bin'}:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "PREFECT__BACKEND": "cloud",
            "PREFECT__CLOUD__API": f"{self.server.url}/graphql",
            **self.env_extra,
        }

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self._run(["prefect", *args], timeout)

    def python(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``script`` run by Prefect 1's Python, in this home and environment."""
        return self._run(["python", "-c", script], timeout)

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        command = [str(VENV / "bin" / argv[0]), *argv[1:]]
        return subprocess.run(
            command, env=self.env, cwd=self.home, capture_output=True, text=True, timeout=timeout, check=False
        )


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the Prefect 1 tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def prefect1(server: ServerProcess, tmp_path: Path) -> Prefect1:
    if not (VENV / "bin" / "prefect").exists():
        skip_or_fail(f"no Prefect 1 environment at {VENV}: make it with scripts/prefect1/venv.sh")
    home = tmp_path / "prefect-home"
    home.mkdir()
    return Prefect1(server, home)


def log_lines(server: ServerProcess, run_id: str, wanted: str, timeout: float = 30) -> list[str]:
    """The run's log lines once one holds ``wanted`` (or after ``timeout``): Prefect 1's flow runner sends its last
    batch of lines as its process exits, after the run's final state."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line.message for line in server.client().get_logs(run_id).logs]
        if any(wanted in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)
