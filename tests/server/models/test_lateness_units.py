"""How lateness is written in messages (``skipped: 3h 02m late``, ``late by 7m 01s``)."""

from __future__ import annotations

import pytest

from baton.server.models.lateness import format_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "0s"),
        (0, "0s"),
        (0.9, "0s"),
        (45, "45s"),
        (60, "1m"),
        (61, "1m 01s"),
        (3599, "59m 59s"),
        (3600, "1h"),
        (3 * 3600 + 2 * 60 + 5, "3h 02m"),
        (86400, "1d"),
        (2 * 86400 + 4 * 3600 + 59, "2d 04h"),
        (400 * 86400, "400d"),
    ],
)
def test_durations_keep_the_two_largest_units(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
