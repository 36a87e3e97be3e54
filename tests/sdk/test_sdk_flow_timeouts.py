"""``@flow(timeout_seconds=...)`` and ``LocalRun(user=...)``: checked at decoration, sent at registration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from baton import LocalRun, flow
from baton.schemas.core import MAX_TIMEOUT_SECONDS
from baton.sdk.registration import build_flow_payload, load_flows

SOURCE = """
from baton import LocalRun, flow

@flow(timeout_seconds=90, run_config=LocalRun(user="etl"))
def nightly() -> None:
    pass

@flow
def unbounded() -> None:
    pass
"""


def test_the_timeout_and_the_run_as_user_are_registered(tmp_path: Path) -> None:
    path = tmp_path / "flows.py"
    path.write_text(SOURCE)
    nightly, unbounded = load_flows(path)

    payload = build_flow_payload(nightly, path, storage="api")
    assert payload["timeout_seconds"] == 90
    assert payload["run_config"]["user"] == "etl"
    assert build_flow_payload(unbounded, path, storage="api")["timeout_seconds"] is None


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (MAX_TIMEOUT_SECONDS + 1, ValueError), (2.5, TypeError), ("60", TypeError), (True, TypeError)],
)
def test_an_invalid_timeout_fails_at_decoration(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout_seconds"):

        @flow(timeout_seconds=value)
        def bad() -> None:
            pass


def test_an_invalid_run_as_user_fails_at_decoration() -> None:
    with pytest.raises(ValueError, match="user"):

        @flow(run_config=LocalRun(user="no spaces allowed"))
        def bad() -> None:
            pass
