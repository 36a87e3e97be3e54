"""Errors the query modules raise; the API turns them into 4xx answers."""

from __future__ import annotations

from baton.exceptions import BatonError


class ObjectNotFound(BatonError):
    """Not found in the caller's tenant (404: another tenant's ids are indistinguishable from unknown ones)."""


class InvalidRequest(BatonError):
    """A well-formed request that cannot be honoured (422), e.g. parameters that do not fit the flow."""


class Conflict(BatonError):
    """The request clashes with what exists (409), e.g. an agent identity bound to another, active key."""


class RevokedToken(BatonError):
    """The run token stopped being its run's while the request was handled (401): the run ended, or went back to the
    queue and is another claim's now."""


class StaleState(BatonError):
    """Another writer changed the run first; the caller may retry with the fresh state (409)."""


class IdempotencyConflict(Conflict):
    """An idempotency key reused for a different request (409): a client bug, never a retry."""


class LogsClosed(Conflict):
    """The run ended longer ago than the server's log grace: it takes no more log lines (409)."""
