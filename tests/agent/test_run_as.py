"""Running flows as another OS user: which user a run gets, and the checks made when the agent starts."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from typing import Any

import pytest

from baton.agent import run_as
from baton.agent.local import LocalAgent
from baton.agent.run_as import OsUser, check_can_switch, lookup_user
from baton.exceptions import ConfigurationError, DeploymentError
from baton.schemas.core import RunConfig
from baton.settings import BatonSettings

from .fake_api import FakeApi

# A user every Linux host has, which is not the one running the tests (unless they run as nobody).
OTHER = pwd.getpwuid(65534).pw_name


@pytest.fixture
def make_local(settings: BatonSettings, api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> Callable[..., LocalAgent]:
    monkeypatch.setattr(run_as, "can_switch_users", lambda: True)

    def _make(**options: Any) -> LocalAgent:
        return LocalAgent(settings=settings, client=api, **options)

    return _make


def test_without_run_as_runs_are_the_agents_own(make_local: Callable[..., LocalAgent]) -> None:
    assert make_local().driver.user_for(RunConfig(type="local")) is None


def test_run_as_applies_to_every_run(make_local: Callable[..., LocalAgent]) -> None:
    agent = make_local(run_as=OTHER)
    user = agent.driver.user_for(RunConfig(type="local"))
    assert user is not None and user.name == OTHER and user.uid == 65534
    assert agent.driver.user_for(RunConfig(type="local", user=OTHER)) == user


def test_a_run_config_user_needs_the_agents_allow_run_as(make_local: Callable[..., LocalAgent]) -> None:
    with pytest.raises(DeploymentError, match=f"start the agent with --allow-run-as {OTHER}"):
        make_local().driver.user_for(RunConfig(type="local", user=OTHER))
    allowed = make_local(allow_run_as=[OTHER]).driver.user_for(RunConfig(type="local", user=OTHER))
    assert allowed is not None and allowed.uid == 65534


def test_a_run_config_user_other_than_run_as_is_refused(make_local: Callable[..., LocalAgent]) -> None:
    me = pwd.getpwuid(os.geteuid()).pw_name
    with pytest.raises(DeploymentError, match=f"--allow-run-as {me}"):
        make_local(run_as=OTHER).driver.user_for(RunConfig(type="local", user=me))


def test_an_unknown_user_is_refused_at_start(make_local: Callable[..., LocalAgent]) -> None:
    with pytest.raises(ConfigurationError, match="--run-as no-such-user-xyz: no such user"):
        make_local(run_as="no-such-user-xyz")
    with pytest.raises(ConfigurationError, match="--allow-run-as no-such-user-xyz: no such user"):
        make_local(allow_run_as=["no-such-user-xyz"])


def test_an_agent_that_cannot_switch_users_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_as, "can_switch_users", lambda: False)
    other = lookup_user(OTHER)
    if other.uid == os.geteuid():
        pytest.skip("the tests run as nobody")
    with pytest.raises(ConfigurationError, match=r"needs an agent run by root \(or with CAP_SETUID and CAP_SETGID\)"):
        check_can_switch([other])
    myself = OsUser("me", os.geteuid(), os.getegid(), (), "/")
    check_can_switch([myself])  # no switch needed
