"""Settings precedence (explicit > BATON__SECTION__KEY env > $BATON_HOME/config.toml > default) and the config file."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from baton.exceptions import ConfigurationError
from baton.settings import DEFAULT_API_URL, config_path, load_settings, write_config_values


def write_config(home: Path, text: str) -> Path:
    path = home / "config.toml"
    path.write_text(text)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- precedence ----------------------------------------------------------------------------------


def test_defaults_apply_when_nothing_is_configured(baton_home: Path) -> None:
    settings = load_settings()

    assert settings.api.url == DEFAULT_API_URL == "http://127.0.0.1:4200"
    assert settings.api.key is None
    assert settings.agent.labels == []
    assert settings.agent.agent_address is None
    assert settings.server.claim_lease_seconds == 30.0
    assert settings.server.max_lease_returns == 3
    assert settings.database_url() == f"sqlite:///{baton_home / 'baton.db'}"


def test_config_file_beats_default(baton_home: Path) -> None:
    write_config(baton_home, '[api]\nurl = "http://file:1"\nkey = "bat_file"\n[agent]\nlabels = ["from-file"]\n')

    settings = load_settings()

    assert settings.api.url == "http://file:1"
    assert settings.api.key is not None
    assert settings.api.key.get_secret_value() == "bat_file"
    assert settings.agent.labels == ["from-file"]


def test_env_beats_config_file(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(baton_home, '[api]\nurl = "http://file:1"\n[agent]\nlabels = ["from-file"]\n')
    monkeypatch.setenv("BATON__API__URL", "http://env:2")
    monkeypatch.setenv("BATON__AGENT__LABELS", '["dev", "staging"]')

    settings = load_settings()

    assert settings.api.url == "http://env:2"
    assert settings.agent.labels == ["dev", "staging"]


def test_explicit_argument_beats_env_and_file(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(baton_home, '[api]\nurl = "http://file:1"\n[agent]\nlabels = ["from-file"]\n')
    monkeypatch.setenv("BATON__API__URL", "http://env:2")
    monkeypatch.setenv("BATON__AGENT__LABELS", '["dev", "staging"]')

    settings = load_settings(api={"url": "http://explicit:3"}, agent={"labels": ["explicit"]})

    assert settings.api.url == "http://explicit:3"
    assert settings.agent.labels == ["explicit"]


def test_explicit_none_does_not_hide_env_or_file(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(baton_home, '[api]\nkey = "bat_file"\n')
    monkeypatch.setenv("BATON__API__URL", "http://env:2")

    settings = load_settings(api={"url": None, "key": None}, agent={"name": None})

    assert settings.api.url == "http://env:2"
    assert settings.api.key is not None
    assert settings.api.key.get_secret_value() == "bat_file"
    assert settings.agent.name is None


def test_sources_merge_key_by_key_within_a_section(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(baton_home, '[api]\ntenant_id = "tenant-from-file"\n')
    monkeypatch.setenv("BATON__API__KEY", "bat_env")

    settings = load_settings(api={"url": "http://explicit:3"})

    assert settings.api.url == "http://explicit:3"
    assert settings.api.key is not None
    assert settings.api.key.get_secret_value() == "bat_env"
    assert settings.api.tenant_id == "tenant-from-file"


def test_agent_address_from_env(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON__AGENT__AGENT_ADDRESS", "http://127.0.0.1:8080")

    assert load_settings().agent.agent_address == "http://127.0.0.1:8080"


def test_env_names_are_case_insensitive(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("baton__server__claim_lease_seconds", "1.5")

    assert load_settings().server.claim_lease_seconds == 1.5


def test_env_values_are_typed(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON__SERVER__PORT", "4321")
    monkeypatch.setenv("BATON__AGENT__HOSTNAME_LABEL", "false")
    monkeypatch.setenv("BATON__AGENT__ENV", '{"A": "1"}')
    monkeypatch.setenv("BATON__LOGGING__SEND_TO_API", "0")

    settings = load_settings()

    assert settings.server.port == 4321
    assert settings.agent.hostname_label is False
    assert settings.agent.env == {"A": "1"}
    assert settings.logging.send_to_api is False


def test_api_url_loses_its_trailing_slash(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON__API__URL", " http://env:2/ ")

    assert load_settings().api.url == "http://env:2"


def test_config_file_follows_baton_home_set_after_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BATON__"):
            monkeypatch.delenv(name)
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    write_config(first, '[api]\nurl = "http://one:1"\n')
    write_config(second, '[api]\nurl = "http://two:2"\n')

    monkeypatch.setenv("BATON_HOME", str(first))
    assert load_settings().api.url == "http://one:1"
    monkeypatch.setenv("BATON_HOME", str(second))
    assert load_settings().api.url == "http://two:2"
    assert config_path() == second / "config.toml"


def test_baton_home_defaults_to_dot_baton_in_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BATON_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    assert config_path() == tmp_path / ".baton" / "config.toml"


def test_explicit_database_url_wins_over_the_default_sqlite_file(baton_home: Path) -> None:
    settings = load_settings(server={"database_url": "postgresql://db/baton"})

    assert settings.database_url() == "postgresql://db/baton"


# --- malformed configuration -----------------------------------------------------------------------


def test_malformed_config_file_is_a_configuration_error_naming_the_file(baton_home: Path) -> None:
    path = write_config(baton_home, "[api\nurl = ")

    with pytest.raises(ConfigurationError, match="is not valid TOML") as excinfo:
        load_settings()

    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[server]\nport = "abc"\n', "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ('[api]\nurl = "ftp://x"\n', "api.url"),
        ("api = 5\n", "api"),
        ('[agent]\nlabels = "dev"\n', "agent.labels"),
        ('[agent]\ntype = "nomad"\n', "agent.type"),
    ],
)
def test_invalid_value_in_config_file_is_a_configuration_error(baton_home: Path, text: str, where: str) -> None:
    write_config(baton_home, text)

    with pytest.raises(ConfigurationError, match="invalid settings") as excinfo:
        load_settings()

    assert f"{where}:" in str(excinfo.value)


@pytest.mark.parametrize(
    ("name", "value", "where"),
    [
        ("BATON__SERVER__PORT", "abc", "server.port"),
        ("BATON__SERVER__CLAIM_LEASE_SECONDS", "0", "server.claim_lease_seconds"),
        ("BATON__API__URL", "localhost:4200", "api.url"),
        ("BATON__AGENT__LABELS", '{"a": 1}', "agent.labels"),
        ("BATON__LOGGING__LEVEL", "CHATTY", "logging.level"),
    ],
)
def test_invalid_env_value_is_a_configuration_error(
    baton_home: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, where: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigurationError, match="invalid settings") as excinfo:
        load_settings()

    assert f"{where}:" in str(excinfo.value)


# "not json" is a comma-separated list of one label since issue 9 (tests/test_settings_env_lists.py).
@pytest.mark.parametrize("value", ['["dev", '])
def test_malformed_json_env_value_is_a_configuration_error(
    baton_home: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("BATON__AGENT__LABELS", value)

    with pytest.raises(ConfigurationError, match="agent"):
        load_settings()


def test_invalid_explicit_argument_is_a_configuration_error(baton_home: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"agent\.limit:"):
        load_settings(agent={"limit": -1})


# --- writing config.toml -------------------------------------------------------------------------


def test_write_config_values_creates_the_file_with_mode_0600(baton_home: Path) -> None:
    path = write_config_values("api", {"key": "bat_secret", "url": "http://x:1"})

    assert path == baton_home / "config.toml"
    assert mode_of(path) == 0o600
    assert tomllib.loads(path.read_text()) == {"api": {"key": "bat_secret", "url": "http://x:1"}}
    settings = load_settings()
    assert settings.api.key is not None
    assert settings.api.key.get_secret_value() == "bat_secret"


def test_write_config_values_merges_into_existing_sections(baton_home: Path) -> None:
    write_config(baton_home, '[api]\nurl = "http://keep:1"\nkey = "old"\n[agent]\nlabels = ["dev"]\n')

    write_config_values("api", {"key": "new"})

    assert tomllib.loads((baton_home / "config.toml").read_text()) == {
        "api": {"url": "http://keep:1", "key": "new"},
        "agent": {"labels": ["dev"]},
    }


def test_write_config_values_tightens_an_existing_readable_file_to_0600(baton_home: Path) -> None:
    path = write_config(baton_home, '[agent]\nname = "a"\n')
    path.chmod(0o644)

    write_config_values("api", {"key": "bat_secret"})

    assert mode_of(path) == 0o600


def test_write_config_values_creates_baton_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "does" / "not" / "exist"
    monkeypatch.setenv("BATON_HOME", str(home))

    path = write_config_values("server", {"port": 4300})

    assert path.parent == home
    assert mode_of(path) == 0o600
    assert tomllib.loads(path.read_text()) == {"server": {"port": 4300}}


# --- the sources as settings.py merges them (pydantic-settings' rules, without its import cost) -------------


def test_a_section_may_be_one_json_variable_under_its_keys(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON__AGENT", '{"labels": ["a"], "limit": 3}')
    monkeypatch.setenv("BATON__AGENT__LIMIT", "5")

    settings = load_settings()

    assert (settings.agent.labels, settings.agent.limit) == (["a"], 5)


def test_a_deeper_name_sets_a_key_of_a_dict_setting(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON__AGENT__ENV__region", "eu-west-1")

    assert load_settings().agent.env == {"region": "eu-west-1"}


def test_unknown_and_empty_names_are_ignored(baton_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BATON__NOPE__X", "BATON__API__NOPE", "BATON__", "BATON__API____URL", "BATONX__API__URL"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")

    assert load_settings().api.url == DEFAULT_API_URL


def test_an_unreadable_config_file_is_a_configuration_error(baton_home: Path) -> None:
    config_path().mkdir()  # a directory where the file should be: reading it fails whoever we are

    with pytest.raises(ConfigurationError, match=r"cannot read .*config\.toml"):
        load_settings()
