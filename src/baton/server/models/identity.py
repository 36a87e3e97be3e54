"""Objects a session has loaded already, found without SQL.

A claim holds each run's flow and its agent while it shapes its answer, which needs the flows' names and the
agent's: looking in the session's identity map first saves those queries. (The map holds an object only while
something references it: what a function loaded and dropped is read again.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

T = TypeVar("T")


def already_loaded(session: Session, model: type[T], ids: Iterable[str]) -> dict[str, T]:
    """Those of ``ids`` whose ``model`` object this session holds (the caller queries the rest)."""
    found: dict[str, T] = {}
    for object_id in ids:
        held = session.identity_map.get(identity_key(model, object_id))
        if held is not None:
            found[object_id] = held
    return found
