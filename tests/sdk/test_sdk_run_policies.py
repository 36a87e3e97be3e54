"""``@flow(retries=, retry_delay_seconds=, max_lateness_seconds=)``: checked at decoration, sent at registration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from baton import flow
from baton.schemas.core import MAX_FLOW_RETRIES, MAX_TIMEOUT_SECONDS
from baton.sdk.registration import build_flow_payload, load_flows

SOURCE = """
from baton import flow

@flow(retries=3, retry_delay_seconds=120, max_lateness_seconds=3600)
def nightly() -> None:
    pass

@flow
def plain() -> None:
    pass
"""


def test_run_policies_are_registered(tmp_path: Path) -> None:
    path = tmp_path / "flows.py"
    path.write_text(SOURCE)
    nightly, plain = load_flows(path)

    payload = build_flow_payload(nightly, path, storage="api")
    assert (payload["retries"], payload["retry_delay_seconds"], payload["max_lateness_seconds"]) == (3, 120, 3600)
    default = build_flow_payload(plain, path, storage="api")
    assert (default["retries"], default["retry_delay_seconds"], default["max_lateness_seconds"]) == (0, 0, None)


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("retries", -1, ValueError),
        ("retries", MAX_FLOW_RETRIES + 1, ValueError),
        ("retries", True, TypeError),
        ("retries", 2.0, TypeError),
        ("retries", "3", TypeError),
        ("retry_delay_seconds", -1, ValueError),
        ("retry_delay_seconds", MAX_TIMEOUT_SECONDS + 1, ValueError),
        ("retry_delay_seconds", False, TypeError),
        ("max_lateness_seconds", 0, ValueError),
        ("max_lateness_seconds", 1.5, TypeError),
        ("max_lateness_seconds", True, TypeError),
    ],
)
def test_bad_run_policies_are_refused_at_decoration(option: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=option):

        @flow(**{option: value})
        def broken() -> None:
            pass


def test_the_edges_are_accepted() -> None:
    @flow(retries=MAX_FLOW_RETRIES, retry_delay_seconds=0, max_lateness_seconds=1)
    def edgy() -> None:
        pass

    assert (edgy.retries, edgy.retry_delay_seconds, edgy.max_lateness_seconds) == (MAX_FLOW_RETRIES, 0, 1)
