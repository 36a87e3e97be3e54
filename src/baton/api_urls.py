"""What an API URL may be, for the settings (``api.url``) and the client's transport alike: the server's root,
``http(s)://host[:port][/prefix]``.

Cheap to import (``urllib.parse`` only): the settings are read by every process at start.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit


def split_api_url(value: str) -> SplitResult:
    """``value``'s parts, once it is known to be an API URL.

    Raises:
        ValueError: it does not start with http:// or https://; it holds a space or a control character (urlsplit
            drops tabs and newlines: ``http://h:42\\n00`` would reach port 4200); it does not parse, has no host or
            no valid port; or it carries a user, password, query or fragment (a password would be ignored, the
            key goes in its own header, yet shown in every error).
    """
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"invalid API URL {value!r}: an API URL must start with http:// or https://")
    if any(char.isspace() or not char.isprintable() for char in value):
        raise ValueError(f"invalid API URL {value!r}: it holds a space or a control character")
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a port that is not one
    except ValueError as exc:  # a bracket not closed, a port that is not a number
        raise ValueError(f"invalid API URL {value!r}: {exc}") from exc
    if not parts.hostname:
        raise ValueError(f"invalid API URL {value!r}: it has no host")
    if "@" in parts.netloc or parts.query or parts.fragment:
        shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}..."
        raise ValueError(f"invalid API URL {shown}: the server's root, with no user, password, query or fragment")
    return parts
