"""The one place where the API parses JSON request bodies: no NaN or Infinity, and no nesting past a limit.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``1e400`` (a float infinity), which are not JSON and came back as
``null``; and it raises RecursionError on input nested some thousand levels deep, which FastAPI turned into a
400 with no reason. Every route of the API is a :class:`JsonRoute`, whose requests parse their bodies with
:func:`parse_json_body`: such bodies are a 422 that says why, before any model sees them. The limit on each JSON
field (``MAX_JSON_DEPTH``) is checked again by the input models, with the field's name in the answer.

Usage::

    router = APIRouter(prefix="/things", route_class=JsonRoute)
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from baton.schemas.core import MAX_JSON_DEPTH
from baton.server.worker_threads import run_in_worker

# A body is an envelope around its JSON fields (e.g. a flow's body > run_config > job_template > the value): the
# fields' own limit is checked by the models, with the field named; this bounds the whole body before they run.
MAX_BODY_DEPTH = MAX_JSON_DEPTH + 8


class NonFiniteNumber(ValueError):
    """A body holds NaN, Infinity or a number too large for a float."""


def _refuse_constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a JSON number: numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"{text[:40]} is too large for a JSON number (it would be Infinity)")
    return value


def body_depth_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` nests deeper than ``limit`` levels (walked with a stack: no recursion)."""
    pending: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        # Only containers are pushed: a body is mostly scalars (a batch of 1000 log lines, say).
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_json_body(body: bytes) -> Any:
    """Parse a request body as strict JSON.

    Raises:
        HTTPException: 400 for a body that is not UTF-8 text; 422 for NaN/Infinity, a number Python cannot
            convert, or nesting deeper than :data:`MAX_BODY_DEPTH`.
        json.JSONDecodeError: malformed JSON (FastAPI answers it with its own 422).
    """
    too_deep = f"the request body is nested deeper than {MAX_BODY_DEPTH} levels (JSON values: {MAX_JSON_DEPTH})"
    try:
        value = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except NonFiniteNumber as exc:
        raise HTTPException(422, str(exc)) from exc
    except json.JSONDecodeError:
        raise
    except UnicodeDecodeError as exc:  # a ValueError too, but the body's fault as text, not as a number
        raise HTTPException(400, "the request body is not UTF-8 JSON text") from exc
    except ValueError as exc:  # e.g. an integer of more than 4300 digits: Python refuses to convert it
        raise HTTPException(422, f"a number in the body cannot be read: {str(exc)[:200]}") from exc
    except RecursionError as exc:  # the C parser's guard, some thousand levels down: long past the limit
        raise HTTPException(422, too_deep) from exc
    if body_depth_exceeds(value, MAX_BODY_DEPTH):
        raise HTTPException(422, too_deep)
    return value


class JsonRequest(Request):
    """A request whose ``json()`` is :func:`parse_json_body`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json_body(await self.body())
        return self._json


def in_one_worker_thread(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """``endpoint`` as a coroutine that runs the plain function in one worker thread.

    FastAPI runs a plain endpoint in a worker thread and then checks its answer against the response model in a
    second one: two thread hops (a wake-up of a worker and one of the event loop each), which cost more CPU than
    checking a model the endpoint built itself. Wrapped, the endpoint takes one hop and the check runs on the
    loop. ``functools.wraps`` keeps the signature, names and docstring FastAPI reads (it unwraps to resolve the
    annotations in the endpoint's own module).
    """
    if (
        not inspect.isfunction(endpoint)
        or inspect.iscoroutinefunction(endpoint)
        or inspect.isgeneratorfunction(endpoint)
    ):
        return endpoint  # a coroutine already, a stream, or a callable object: FastAPI's own handling

    @functools.wraps(endpoint)
    async def run(*args: Any, **kwargs: Any) -> Any:
        return await run_in_worker(endpoint, *args, **kwargs)

    return run


class JsonRoute(APIRoute):
    """A route whose handler sees :class:`JsonRequest` (FastAPI's documented way to change body parsing), and whose
    plain-function endpoint runs in one worker thread (:func:`in_one_worker_thread`)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, in_one_worker_thread(endpoint), **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_json_handler(request: Request) -> Response:
            return await handler(JsonRequest(request.scope, request.receive))

        return strict_json_handler
