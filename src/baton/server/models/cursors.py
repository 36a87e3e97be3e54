"""Opaque page cursors: a JSON list of the last item's sort key, base64url-encoded.

A cursor comes back from the client, so it is input like any other: :func:`decode` checks each value's JSON type,
and callers check their ranges, so a forged cursor is a 422, never a 500. Cursors carry no secret and need no
signature: every query they feed is scoped to the caller's tenant anyway.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from baton.server.models.errors import InvalidRequest

MAX_CURSOR_LENGTH = 500
MAX_OFFSET = 2**31 - 1  # what every database's OFFSET takes


def encode(*values: str | int) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def decode(cursor: str, *types: type) -> list[Any]:
    """The values of ``cursor``, each of the JSON type named in ``types`` (``int`` excludes booleans).

    Raises:
        InvalidRequest: anything :func:`encode` did not make with values of these types (422).
    """
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), parse_constant=_refuse)
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise invalid(cursor) from exc
    if not isinstance(values, list) or len(values) != len(types):
        raise invalid(cursor)
    for value, kind in zip(values, types, strict=True):
        if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, str) and "\x00" in value):
            raise invalid(cursor)
    return values


def offset(cursor: str) -> int:
    """The row offset an offset cursor (``encode(n)``) carries, else :func:`invalid`."""
    (value,) = decode(cursor, int)
    if not 0 <= value <= MAX_OFFSET:
        raise invalid(cursor)
    return int(value)


def aware_timestamp(cursor: str, text: str) -> datetime:
    """``text`` as a timestamp with a timezone (what :func:`encode` was given), else :func:`invalid`."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise invalid(cursor) from exc
    if value.tzinfo is None:
        raise invalid(cursor)
    return value


def invalid(cursor: str) -> InvalidRequest:
    shown = "".join(char if char.isprintable() else "?" for char in cursor[:64])
    return InvalidRequest(f"invalid cursor {shown!r}: pass back the one an answer gave")


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")
