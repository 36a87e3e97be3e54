"""A run's logs as server-sent events, while the run goes on: ``GET /runs/{id}/logs/stream``.

Each event is one stored log line as JSON (the page builds its row with ``textContent``: nothing a flow prints
becomes markup), with the line's position as the event id, so a browser that reconnects (``Last-Event-ID``) goes
on where it stopped, with no line lost or shown twice. The stream ends with an ``end`` event once the run is final
and every line was sent; it also ends after ``MAX_STREAM_SECONDS`` (the browser reconnects) and when the session
ends (sign-out, expiry, a revoked key), which is checked again every ``RECHECK_SECONDS``.

Like agents' long polls, open streams are not counted among the requests in flight (``server.limits``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from baton.schemas.states import FINAL_STATES
from baton.server import shaping
from baton.server.access import Action
from baton.server.database.connection import transaction
from baton.server.models import flow_runs, logs
from baton.server.ui.pages_runs import require
from baton.server.ui.routing import UiRoute
from baton.server.ui.web import SECURITY_HEADERS, NotSignedIn, Viewer, ViewerDep, current_viewer, factory_of

router = APIRouter(route_class=UiRoute)
PATH = "/runs/{run_id}/logs/stream"
POLL_SECONDS = 0.5
RECHECK_SECONDS = 5.0
MAX_STREAM_SECONDS = 300.0
BATCH = 500
LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}


def _start_offset(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("offset") or "0"
    return int(raw) if raw.isdigit() and len(raw) < 12 else 0


def _read(request: Request, viewer: Viewer, run_id: str, offset: int) -> tuple[list[dict[str, Any]], bool]:
    """Lines from ``offset`` (one batch) and whether the run is final."""
    with transaction(factory_of(request)) as session:
        state = flow_runs.get_flow_run(session, viewer.principal.tenant_id, run_id).state
        rows = logs.read_logs(session, viewer.principal.tenant_id, run_id, offset, BATCH)
        lines = [shaping.log(row).model_dump(mode="json") for row in rows]
    for line in lines:
        line["level_name"] = LEVELS.get(line["level"], str(line["level"]))
    return lines, state in FINAL_STATES


def _event(name: str, data: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {data}\n\n"


async def _events(request: Request, viewer: Viewer, run_id: str, offset: int) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_STREAM_SECONDS
    recheck = loop.time() + RECHECK_SECONDS
    yield "retry: 2000\n\n"
    while True:
        if await request.is_disconnected():
            return
        if loop.time() >= recheck:
            try:
                await run_in_threadpool(current_viewer, request)
            except NotSignedIn:
                yield _event("end", json.dumps({"reason": "signed out"}))
                return
            recheck = loop.time() + RECHECK_SECONDS
        lines, final = await run_in_threadpool(_read, request, viewer, run_id, offset)
        for line in lines:
            offset += 1
            yield _event("log", json.dumps(line, separators=(",", ":")), offset)
        if final and len(lines) < BATCH:
            yield _event("end", json.dumps({"reason": "final"}))
            return
        if loop.time() >= deadline:
            return
        if len(lines) < BATCH:
            await asyncio.sleep(POLL_SECONDS)


@router.get(PATH, include_in_schema=False)
def log_stream(request: Request, run_id: str, viewer: ViewerDep) -> StreamingResponse:
    require(viewer, Action.LOGS_READ)
    offset = _start_offset(request)
    _read(request, viewer, run_id, offset)  # 404 for an unknown run, before the stream starts
    headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
    return StreamingResponse(_events(request, viewer, run_id, offset), media_type="text/event-stream", headers=headers)
