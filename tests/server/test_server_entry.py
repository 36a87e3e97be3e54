"""``python -m baton.server`` takes no arguments: ``--help`` explains, anything else is refused, and neither starts a
server (one started by a mistyped option wrote a home and a tenant of its own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import clean_env


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [(["--help"], 0, "takes options too"), (["--port", "5"], 2, "unrecognized arguments: --port 5")],
)
def test_the_module_entry_point_explains_or_refuses_its_arguments_without_starting(
    tmp_path: Path, args: list[str], code: int, said: str
) -> None:
    home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, "-m", "baton.server", *args],
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == code, done.stderr
    assert said in done.stdout + done.stderr
    assert not home.exists()  # no server started: no home, no database, no key written
