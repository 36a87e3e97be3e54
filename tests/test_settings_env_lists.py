"""Issue 9: list settings from the environment may be comma-separated, and every settings error names where the bad
value came from (the variable, the config file, or the argument)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import cli
from baton.exceptions import ConfigurationError
from baton.settings import config_path, load_settings


@pytest.mark.parametrize(
    ("value", "labels"),
    [
        ("dev", ["dev"]),
        ("dev,gpu", ["dev", "gpu"]),
        (" dev , gpu ,", ["dev", "gpu"]),
        ('["dev", "gpu"]', ["dev", "gpu"]),
        ("", []),  # set to nothing: no labels (it was "Input should be a valid list")
        ("  ", []),
    ],
)
def test_labels_from_the_environment_may_be_comma_separated(
    baton_home: Path, monkeypatch: pytest.MonkeyPatch, value: str, labels: list[str]
) -> None:
    monkeypatch.setenv("BATON__AGENT__LABELS", value)

    assert load_settings().agent.labels == labels


def test_other_list_settings_take_commas_too(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON__SERVER__FORWARDED_ALLOW_IPS", "10.0.0.1,10.0.0.0/8")
    monkeypatch.setenv("BATON__AGENT__ALLOW_RUN_AS", "alice,bob")

    settings = load_settings()

    assert settings.server.forwarded_allow_ips == ["10.0.0.1", "10.0.0.0/8"]
    assert settings.agent.allow_run_as == ["alice", "bob"]


def test_a_broken_json_list_is_refused_naming_the_variable(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON__AGENT__LABELS", '["dev", ')

    with pytest.raises(ConfigurationError) as excinfo:
        load_settings()

    assert "BATON__AGENT__LABELS: agent.labels: not a JSON list or a comma-separated list" in str(excinfo.value)


def test_a_dict_setting_is_json_only_and_its_error_names_the_variable(
    baton_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # env is a dict: "A=1,B=2" would be ambiguous (values may hold commas), so only JSON is accepted
    monkeypatch.setenv("BATON__AGENT__ENV", "A=1")

    with pytest.raises(ConfigurationError) as excinfo:
        load_settings()

    assert "BATON__AGENT__ENV: agent.env: not valid JSON" in str(excinfo.value)


def test_an_invalid_value_names_its_variable(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("baton__server__port", "abc")

    with pytest.raises(ConfigurationError) as excinfo:
        load_settings()

    assert "BATON__SERVER__PORT: server.port:" in str(excinfo.value)


def test_an_invalid_value_from_the_config_file_names_the_file(baton_home: Path) -> None:
    config_path().write_text("[server]\nport = 70000\n")

    with pytest.raises(ConfigurationError) as excinfo:
        load_settings()

    assert f"{config_path()}: server.port:" in str(excinfo.value)


def test_an_invalid_explicit_argument_names_the_setting_only(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON__AGENT__LIMIT", "3")  # valid, and overridden by the argument

    with pytest.raises(ConfigurationError) as excinfo:
        load_settings(agent={"limit": -1})

    assert "invalid settings: agent.limit:" in str(excinfo.value)


def test_the_cli_exits_2_naming_the_variable(baton_home: Path) -> None:
    result = CliRunner().invoke(cli, ["runs", "list"], env={"BATON__AGENT__LABELS": '["dev"'})

    assert result.exit_code == 2
    assert "BATON__AGENT__LABELS: agent.labels:" in result.output
    assert "Traceback" not in result.output
