"""What every resolver uses: the request's :class:`Context`, the access check, paging, the scalars, and how errors
are told.

Resolvers are plain functions: a whole operation runs in one worker thread (``endpoint``), with the caller's
:class:`Context`. Every resolver names the :class:`baton.server.access.Action` it performs (:func:`require`), so the
access policy of REST (``access.POLICY``) is the policy of GraphQL too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from ariadne import ScalarType
from graphql import GraphQLError, GraphQLResolveInfo
from sqlalchemy import ColumnElement, Select
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from baton.exceptions import IllegalTransitionError
from baton.server.access import AccessDenied, Action, Kind, allows, denial, kind_of
from baton.server.graphql.where import Columns, UnsupportedFilter, order_clauses, where_clause
from baton.server.models.errors import Conflict, InvalidRequest, ObjectNotFound, StaleState
from baton.server.models.prefect1_runs import VersionLocked
from baton.server.models.prefect1_task_runs import TaskVersionLocked
from baton.server.models.projects import DuplicateProject
from baton.server.models.tenants import Principal
from baton.settings import ServerSettings

logger = logging.getLogger(__name__)
_Row = TypeVar("_Row")
_Statement = TypeVar("_Statement", bound="Select[*tuple[Any, ...]]")
_Result = TypeVar("_Result")
Info = GraphQLResolveInfo[Any]

# The most rows one query field answers (Hasura's ``limit``): a larger limit is refused, and a query without one
# that matches more is an error that says to page, never an answer cut short silently.
MAX_LIMIT = 1000


@dataclass(frozen=True)
class Context:
    """What the resolvers of one request see."""

    principal: Principal
    read_sessions: sessionmaker[Session]
    sessions: sessionmaker[Session]
    server: ServerSettings
    # Prefect 1's agents name themselves in this header once registered (X-PREFECT-AGENT-ID): the agent that
    # takes a run from the queue.
    agent_id: str | None = None


def context_of(info: Info) -> Context:
    context: Context = info.context
    return context


def require(info: Info, action: Action) -> Principal:
    """The caller, if ``access.POLICY`` lets its kind perform ``action`` (else AccessDenied: FORBIDDEN)."""
    principal = context_of(info).principal
    if not allows(principal, action):
        raise AccessDenied(denial(kind_of(principal), action))
    return principal


def runner_key(principal: Principal) -> str | None:
    """The key id of a runner key (whose writes reach only the runs its own agents took), else None."""
    return principal.key_id if kind_of(principal) == Kind.RUNNER else None


def page(limit: int | None, offset: int | None) -> tuple[int, int]:
    """Hasura's ``limit`` and ``offset``, bounded: the rows to fetch (one more than :data:`MAX_LIMIT` without a
    limit, to tell a complete answer from one that is not: :func:`paged`) and the rows to skip."""
    if limit is not None and not 0 <= limit <= MAX_LIMIT:
        raise UnsupportedFilter(f"limit must be between 0 and {MAX_LIMIT}, not {limit}")
    if offset is not None and offset < 0:
        raise UnsupportedFilter(f"offset must not be negative, not {offset}")
    return (MAX_LIMIT + 1 if limit is None else limit), (offset or 0)


@dataclass(frozen=True)
class ListArguments:
    """A Hasura list field's ``where``, ``order_by`` (then a tiebreak), ``limit`` and ``offset``, as SQL pieces."""

    condition: ColumnElement[bool]
    ordering: list[Any]
    rows: int
    skip: int

    def applied(self, statement: _Statement) -> _Statement:
        """``statement`` filtered, ordered and paged by these arguments."""
        return statement.where(self.condition).order_by(*self.ordering).limit(self.rows).offset(self.skip)

    @classmethod
    def of(cls, arguments: Mapping[str, Any], columns: Columns, *tiebreak: Any) -> ListArguments:
        rows, skip = page(arguments.get("limit"), arguments.get("offset"))
        ordering = [*order_clauses(arguments.get("order_by"), columns), *tiebreak]
        return cls(where_clause(arguments.get("where"), columns), ordering, rows, skip)


def once_more_on_conflict(write: Callable[[], _Result]) -> _Result:
    """``write()`` (a transaction of its own), again once if a concurrent create of the same key committed first
    (IntegrityError): the second finds what the first made."""
    try:
        return write()
    except IntegrityError:
        return write()


def paged(rows: list[_Row]) -> list[_Row]:
    """``rows`` fetched with :func:`page`'s count: more than :data:`MAX_LIMIT` only when no limit was given."""
    if len(rows) > MAX_LIMIT:
        raise UnsupportedFilter(f"more than {MAX_LIMIT} rows match: ask for them with limit and offset")
    return rows


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
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)  # Hasura reads a bare time as UTC
    try:
        return parsed.astimezone(UTC)  # stored in UTC: a time whose UTC is out of range is refused here
    except OverflowError as exc:
        raise ValueError(f"{value[:40]!r} is out of range in UTC") from exc


@timestamptz.serializer
def _serialize_time(value: Any) -> str:
    if not isinstance(value, datetime):
        raise ValueError("not a time")
    return value.astimezone(UTC).isoformat()


# --- errors ----------------------------------------------------------------------------------------------------

# Prefect 1's client reads an error's extensions.code: API_ERROR makes it retry (about a minute), so only a passing
# database failure says so. A message of None keeps the exception's own; the database's errors never show theirs
# (they quote SQL). "Uniqueness violation." is the text ``Client.create_project`` looks for.
_CODES: tuple[tuple[type[BaseException], str, str | None], ...] = (
    (AccessDenied, "FORBIDDEN", None),
    (VersionLocked, "VERSION_LOCKING_ERROR", None),
    (TaskVersionLocked, "VERSION_LOCKING_ERROR", None),
    (IllegalTransitionError, "CONFLICT", None),
    (ObjectNotFound, "NOT_FOUND", None),
    (UnsupportedFilter, "BAD_USER_INPUT", None),
    (InvalidRequest, "BAD_USER_INPUT", None),
    (DuplicateProject, "CONFLICT", "Uniqueness violation."),
    (Conflict, "CONFLICT", None),
    (StaleState, "CONFLICT", None),
    (IntegrityError, "CONFLICT", "a concurrent change conflicted with this one: retry"),
    (DataError, "BAD_USER_INPUT", "a value is too long or cannot be stored"),
    (OperationalError, "API_ERROR", "the database is busy: retry"),
)


def format_error(error: GraphQLError, debug: bool = False) -> dict[str, Any]:
    """An error as the answer carries it: GraphQL's own fields and a code, never a traceback."""
    formatted: dict[str, Any] = dict(error.formatted)
    original = error.original_error
    if original is None or isinstance(original, GraphQLError):
        formatted.setdefault("extensions", {}).setdefault("code", "GRAPHQL_VALIDATION_FAILED")
        return formatted
    for kind, code, message in _CODES:
        if isinstance(original, kind):
            formatted["extensions"] = {"code": code}
            formatted["message"] = message or formatted["message"]
            return formatted
    if isinstance(original, ValueError) and error.path is None:  # a scalar's parser, before execution
        formatted["extensions"] = {"code": "BAD_USER_INPUT"}  # graphql-core has named the argument in the message
        return formatted
    logger.error("GraphQL resolver failed at %s", error.path, exc_info=original)
    formatted["message"] = "internal server error"
    formatted["extensions"] = {"code": "INTERNAL_SERVER_ERROR"}
    return formatted
