"""``@flow(max_concurrent_runs=...)``: checked at decoration like ``timeout_seconds``, sent at registration."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton import flow
from baton.schemas.core import MAX_CONCURRENT_RUNS
from baton.sdk.registration import build_flow_payload, load_flows

SOURCE = """
from baton import flow

@flow(max_concurrent_runs=2)
def etl() -> None:
    pass

@flow
def free() -> None:
    pass
"""


def test_the_limit_is_registered(tmp_path: Path) -> None:
    path = tmp_path / "flows.py"
    path.write_text(SOURCE)
    etl, free = load_flows(path)

    assert etl.max_concurrent_runs == 2
    assert build_flow_payload(etl, path, storage="api")["max_concurrent_runs"] == 2
    assert build_flow_payload(free, path, storage="api")["max_concurrent_runs"] is None


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (MAX_CONCURRENT_RUNS + 1, ValueError),
        (2.0, TypeError),
        ("2", TypeError),
        (True, TypeError),
    ],
)
def test_a_bad_limit_fails_at_decoration(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_concurrent_runs"):

        @flow(max_concurrent_runs=value)  # type: ignore[arg-type]
        def etl() -> None:
            pass
