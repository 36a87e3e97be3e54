"""FastAPI dependencies: database sessions and the notifier. Who the caller is and what it may do: ``access``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from baton.server.database.connection import transaction
from baton.server.notifier import RunNotifier

__all__ = ["transaction"]


def session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def get_notifier(request: Request) -> RunNotifier:
    notifier: RunNotifier = request.app.state.notifier
    return notifier


Db = Annotated[sessionmaker[Session], Depends(session_factory)]
NotifierDep = Annotated[RunNotifier, Depends(get_notifier)]
