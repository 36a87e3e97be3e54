"""What every resolver uses: the request's :class:`Context`, the access check, paging, the scalars, and how errors
are told.

Resolvers are plain functions: a whole operation runs in one worker thread (``endpoint``), with the caller's
:class:`Context`. Every resolver names the :class:`baton.server.access.Action` it performs (:func:`require`), so the
access policy of REST (``access.POLICY``) is the policy of GraphQL too.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ariadne import ScalarType
from graphql import GraphQLError, GraphQLResolveInfo
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from baton.server.access import AccessDenied, Action, allows, denial, kind_of
from baton.server.graphql.where import UnsupportedFilter
from baton.server.models.errors import Conflict, InvalidRequest, ObjectNotFound
from baton.server.models.projects import DuplicateProject
from baton.server.models.tenants import Principal

logger = logging.getLogger(__name__)
Info = GraphQLResolveInfo[Any]

# The most rows one query field answers (Hasura's ``limit``): more is refused, not cut short silently.
MAX_LIMIT = 1000


@dataclass(frozen=True)
class Context:
    """What the resolvers of one request see."""

    principal: Principal
    read_sessions: sessionmaker[Session]
    sessions: sessionmaker[Session]


def context_of(info: Info) -> Context:
    context: Context = info.context
    return context


def require(info: Info, action: Action) -> Principal:
    """The caller, if ``access.POLICY`` lets its kind perform ``action`` (else AccessDenied: FORBIDDEN)."""
    principal = context_of(info).principal
    if not allows(principal, action):
        raise AccessDenied(denial(kind_of(principal), action))
    return principal


def page(limit: int | None, offset: int | None) -> tuple[int, int]:
    """Hasura's ``limit`` and ``offset``, bounded."""
    if limit is not None and not 0 <= limit <= MAX_LIMIT:
        raise UnsupportedFilter(f"limit must be between 0 and {MAX_LIMIT}, not {limit}")
    if offset is not None and offset < 0:
        raise UnsupportedFilter(f"offset must not be negative, not {offset}")
    return (MAX_LIMIT if limit is None else limit), (offset or 0)


# --- scalars ---------------------------------------------------------------------------------------------------


def _parse_uuid(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a uuid is a string")
    return str(uuid.UUID(value))  # ValueError for anything else: graphql-core names the argument


def _serialize_uuid(value: Any) -> str:
    return str(value)


# Prefect Server 1 had both: ``uuid`` (its Hasura tables) and ``UUID`` (its own mutations' inputs).
uuid_scalar = ScalarType("uuid", serializer=_serialize_uuid, value_parser=_parse_uuid)
uuid_upper_scalar = ScalarType("UUID", serializer=_serialize_uuid, value_parser=_parse_uuid)


timestamptz = ScalarType("timestamptz")


@timestamptz.value_parser
def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("a timestamptz is an ISO 8601 string")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed  # Hasura reads a bare time as UTC


@timestamptz.serializer
def _serialize_time(value: Any) -> str:
    if not isinstance(value, datetime):
        raise ValueError("not a time")
    return value.astimezone(UTC).isoformat()


# --- errors ----------------------------------------------------------------------------------------------------

# Prefect 1's client reads an error's extensions.code: API_ERROR makes it retry (about a minute), so only a passing
# database failure says so.
_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (AccessDenied, "FORBIDDEN"),
    (ObjectNotFound, "NOT_FOUND"),
    (UnsupportedFilter, "BAD_USER_INPUT"),
    (InvalidRequest, "BAD_USER_INPUT"),
    (Conflict, "CONFLICT"),
    (OperationalError, "API_ERROR"),
)
# Messages Prefect 1's client reads (``Client.create_project`` looks for this one, then finds the project by name).
_MESSAGES: dict[type[BaseException], str] = {DuplicateProject: "Uniqueness violation."}


def format_error(error: GraphQLError, debug: bool = False) -> dict[str, Any]:
    """An error as the answer carries it: GraphQL's own fields and a code, never a traceback."""
    formatted: dict[str, Any] = dict(error.formatted)
    original = error.original_error
    if original is None or isinstance(original, GraphQLError):
        formatted.setdefault("extensions", {}).setdefault("code", "GRAPHQL_VALIDATION_FAILED")
        return formatted
    for kind, code in _CODES:
        if isinstance(original, kind):
            formatted["extensions"] = {"code": code}
            formatted["message"] = _MESSAGES.get(type(original), formatted["message"])
            return formatted
    if isinstance(original, ValueError):  # a scalar's parser: graphql-core has named the argument in the message
        formatted["extensions"] = {"code": "BAD_USER_INPUT"}
        return formatted
    logger.error("GraphQL resolver failed at %s", error.path, exc_info=original)
    formatted["message"] = "internal server error"
    formatted["extensions"] = {"code": "INTERNAL_SERVER_ERROR"}
    return formatted
