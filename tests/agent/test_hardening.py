"""The agent process's hardening: key files, secrets dropped from its environment, non-dumpable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from baton.agent import LocalAgent
from baton.agent.hardening import drop_secret_variables
from baton.agent.options import read_key_file
from baton.exceptions import ConfigurationError


def _key_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "agent.key"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_key_file_gives_the_agent_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON__API__KEY", "bat_from_env_loses")
    agent = LocalAgent(key_file=str(_key_file(tmp_path, "  bat_from_file_0123456789\n")))
    assert agent.settings.api.key is not None
    assert agent.settings.api.key.get_secret_value() == "bat_from_file_0123456789"


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o602, 0o620])
def test_a_key_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, "bat_k", mode)
    with pytest.raises(ConfigurationError, match=f"mode {mode:04o}.*chmod 600 {path}"):
        read_key_file(str(path))


@pytest.mark.parametrize(("text", "problem"), [("", "the API key alone"), ("bat_a bat_b", "the API key alone")])
def test_a_key_file_must_hold_one_key(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        read_key_file(str(_key_file(tmp_path, text)))


def test_a_missing_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read it"):
        LocalAgent(key_file=str(tmp_path / "missing"))


def test_a_key_and_a_key_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        LocalAgent(key="bat_k", key_file=str(_key_file(tmp_path, "bat_f")))


def test_secret_variables_are_dropped_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON__API__KEY", "bat_k")
    monkeypatch.setenv("baton__agent__env", '{"A": "1"}')
    monkeypatch.setenv("BATON__API__URL", "http://127.0.0.1:9")
    assert sorted(drop_secret_variables()) == ["BATON__API__KEY", "baton__agent__env"]
    assert "BATON__API__KEY" not in os.environ and "baton__agent__env" not in os.environ
    assert os.environ["BATON__API__URL"] == "http://127.0.0.1:9"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_agent_process_makes_itself_non_dumpable() -> None:
    script = (
        "import ctypes, sys\n"
        "from baton.agent.hardening import make_non_dumpable\n"
        "assert make_non_dumpable()\n"
        "print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))\n"  # PR_GET_DUMPABLE
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "0"
