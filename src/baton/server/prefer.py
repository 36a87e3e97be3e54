"""The ``Prefer`` request header (RFC 7240): a client's preferences that a server may honour or ignore.

Usage::

    parse_prefer("return=minimal, wait=5")   # {"return": "minimal", "wait": "5"}
"""

from __future__ import annotations

# More than a client of Baton sends: the rest of a longer header is ignored (RFC 7240: preferences a server cannot
# use are ignored, not refused).
MAX_PREFERENCES = 8
MAX_HEADER_CHARS = 1000


def parse_prefer(header: str | None) -> dict[str, str]:
    """The preferences of ``header`` by lowercased name, each with its value ("" for none). Parameters after ``;``
    are dropped, quotes around a value removed; the first of a repeated name wins (RFC 7240, section 2)."""
    preferences: dict[str, str] = {}
    for item in (header or "")[:MAX_HEADER_CHARS].split(",")[:MAX_PREFERENCES]:
        token = item.split(";", 1)[0].strip()
        if not token:
            continue
        name, _, value = token.partition("=")
        preferences.setdefault(name.strip().lower(), value.strip().strip('"'))
    return preferences
