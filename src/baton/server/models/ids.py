"""Object ids are UUIDs: anything else names nothing, and is answered 404 before it reaches the database.

PostgreSQL refuses strings with NUL bytes outright; checking the form here keeps such input a clean 404.
"""

from __future__ import annotations

import uuid

from baton.server.models.errors import ObjectNotFound


def checked_id(kind: str, value: str) -> str:
    """Return ``value`` when it is a UUID in canonical form; else raise ObjectNotFound for ``kind``."""
    try:
        if str(uuid.UUID(value)) == value.lower():
            return value.lower()
    except ValueError:
        pass
    printable = "".join(char if char.isprintable() else "?" for char in value[:64])
    raise ObjectNotFound(f"{kind} {printable} not found")
