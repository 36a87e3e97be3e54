"""FastAPI dependencies: database sessions and the notifier. Who the caller is and what it may do: ``access``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session, sessionmaker

from baton.server.database.connection import transaction
from baton.server.models import cursors
from baton.server.notifier import RunNotifier

__all__ = ["transaction"]


# The dependencies below are ``async`` although they never await: FastAPI runs a plain function dependency in a
# worker thread, and each such hop (a thread wake-up there and an event-loop wake-up back) cost more CPU than the
# lookup itself. They must never block.


async def session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


async def read_session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.read_session_factory
    return factory


async def get_notifier(request: Request) -> RunNotifier:
    notifier: RunNotifier = request.app.state.notifier
    return notifier


Db = Annotated[sessionmaker[Session], Depends(session_factory)]
# Sessions for routes that only read: on SQLite they begin deferred and never queue behind a writer.
ReadDb = Annotated[sessionmaker[Session], Depends(read_session_factory)]
NotifierDep = Annotated[RunNotifier, Depends(get_notifier)]
# The ?cursor= of a paged list: what the previous page's X-Next-Cursor header said.
CursorQuery = Annotated[
    str | None, Query(max_length=cursors.MAX_CURSOR_LENGTH, description="from the last answer's X-Next-Cursor")
]
