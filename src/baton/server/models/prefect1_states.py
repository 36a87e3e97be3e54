"""Prefect 1's states, as its runners serialize them, against Baton's (issue 13, docs/design.md §11).

Prefect 1 has ~20 state classes, each serialized as an object whose ``type`` names the class. Baton keeps that object
as the run's Prefect 1 state and moves the Baton run (or task run) to the Baton state it means: each Prefect 1 type
maps to exactly one Baton state, or to none where Baton has nothing to change (a flow run Queued for a concurrency
slot stays where it is). A state Baton set itself (recovery, a cancel through REST or the UI) is served back to
Prefect 1 as the state of the Prefect 1 type that means it (:func:`from_baton`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from baton.schemas.core import json_value_problem
from baton.schemas.states import StateName, TaskRunState
from baton.server.models.errors import InvalidRequest

_S = StateName
_T = TaskRunState

# What each type means for a flow run; None: nothing Baton tracks changes.
FLOW_RUN_STATES: dict[str, StateName | None] = {
    "Pending": None,
    "Scheduled": _S.SCHEDULED,
    "Paused": _S.SCHEDULED,
    "Resume": _S.SCHEDULED,
    "Retrying": _S.RETRYING,
    "Submitted": _S.SUBMITTED,
    "Queued": None,
    "ClientFailed": None,  # the client could not set a state: nothing happened server-side
    "Running": _S.RUNNING,
    "Cancelling": _S.CANCELLING,
    "Looped": _S.RUNNING,
    "Success": _S.SUCCESS,
    "Cached": _S.SUCCESS,
    "Mapped": _S.SUCCESS,
    "Skipped": _S.SUCCESS,
    "Failed": _S.FAILED,
    "TimedOut": _S.FAILED,
    "TriggerFailed": _S.FAILED,
    "ValidationFailed": _S.FAILED,
    "Cancelled": _S.CANCELLED,
}

TASK_RUN_STATES: dict[str, TaskRunState | None] = {
    "Pending": _T.PENDING,
    "Scheduled": _T.PENDING,
    "Paused": _T.PENDING,
    "Resume": _T.PENDING,
    "Submitted": _T.PENDING,
    "Queued": None,
    "ClientFailed": None,
    "Retrying": _T.RETRYING,
    "Running": _T.RUNNING,
    "Looped": _T.RUNNING,  # one iteration of a looping task ended; the task goes on
    "Cancelling": _T.RUNNING,
    "Success": _T.SUCCESS,
    "Cached": _T.SUCCESS,
    "Mapped": _T.SUCCESS,
    "Skipped": _T.SUCCESS,
    "Failed": _T.FAILED,
    "TimedOut": _T.FAILED,
    "TriggerFailed": _T.FAILED,
    "ValidationFailed": _T.FAILED,
    "Cancelled": _T.CANCELLED,
}

# The Prefect 1 type that serves each Baton flow-run state set by Baton itself.
FROM_BATON: dict[StateName, str] = {
    _S.SCHEDULED: "Scheduled",
    _S.PENDING: "Scheduled",  # never held by a Prefect 1 run; Scheduled is what its agents would look for
    _S.SUBMITTED: "Submitted",
    _S.RUNNING: "Running",
    _S.SUCCESS: "Success",
    _S.FAILED: "Failed",
    _S.CANCELLED: "Cancelled",
    _S.RETRYING: "Retrying",
    _S.CANCELLING: "Cancelling",
}
_SCHEDULED_TYPES = frozenset({"Scheduled", "Paused", "Resume", "Retrying"})
_VERSION = "1.4.1"
# A serialized state holds a message, a result's location and cached inputs' locations: never this much.
MAX_STATE_BYTES = 256 * 1024


def checked(value: Any, types: dict[str, Any]) -> dict[str, Any]:
    """A serialized state as sent, refused unless it is one (an object of a known type, storable, bounded)."""
    if not isinstance(value, dict):
        raise InvalidRequest("a state must be a serialized Prefect 1 state (an object)")
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in types:
        shown = str(kind)[:60] if isinstance(kind, str) else type(kind).__name__
        raise InvalidRequest(f"unknown state type {shown!r}: one of {', '.join(sorted(types))}")
    problem = json_value_problem(value)
    if problem is not None:
        raise InvalidRequest(f"state: {problem}")
    if len(json.dumps(value)) > MAX_STATE_BYTES:
        raise InvalidRequest(f"a serialized state is at most {MAX_STATE_BYTES} bytes")
    for text in ("message",):
        if value.get(text) is not None and not isinstance(value[text], str):
            raise InvalidRequest(f"state.{text} must be a string")
    start_time(value)  # refused here, not when served
    return value


def start_time(state: dict[str, Any]) -> datetime | None:
    """When a state of a scheduled type starts (None for the others, and for one without a time)."""
    if state.get("type") not in _SCHEDULED_TYPES or state.get("start_time") is None:
        return None
    raw = state["start_time"]
    try:
        parsed = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequest(f"state.start_time {str(raw)[:40]!r} is not an ISO 8601 time in UTC's range") from exc


def message_of(state: dict[str, Any]) -> str | None:
    message = state.get("message")
    return message if isinstance(message, str) else None


def make(kind: str, message: str | None, start: datetime | None = None) -> dict[str, Any]:
    """A serialized Prefect 1 state of ``kind``, as its ``StateSchema`` writes and reads one."""
    state: dict[str, Any] = {
        "type": kind,
        "message": message,
        "context": {},
        "cached_inputs": {},
        "_result": {"type": "NoResultType", "__version__": _VERSION},
        "__version__": _VERSION,
    }
    if kind in _SCHEDULED_TYPES:
        state["start_time"] = (start or datetime.now(UTC)).isoformat()
    return state


def from_baton(name: str, message: str | None, scheduled_start_time: datetime) -> dict[str, Any]:
    """The Prefect 1 state that serves a Baton state set by Baton (recovery, lateness, a cancel through REST)."""
    return make(FROM_BATON[StateName(name)], message, scheduled_start_time)


def type_of(state: dict[str, Any]) -> str:
    return str(state.get("type"))


def is_finished(state: dict[str, Any]) -> bool:
    return FLOW_RUN_STATES.get(type_of(state)) in {_S.SUCCESS, _S.FAILED, _S.CANCELLED} and type_of(state) != "Looped"


def is_running(state: dict[str, Any]) -> bool:
    return type_of(state) in {"Running", "Cancelling"}
