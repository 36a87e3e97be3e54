"""A run's logs as server-sent events, while the run goes on: ``GET /runs/{id}/logs/stream``.

Each event is one stored log line as JSON (the page builds its row with ``textContent``: nothing a flow prints
becomes markup), with the line's id as the event id: the stream starts after ``?after=`` (the last line the page
holds) or ``Last-Event-ID`` (a browser reconnecting), so no line is lost or shown twice. It ends with an ``end``
event once the run is final and every line was sent; it also ends after ``MAX_STREAM_SECONDS`` (the browser
reconnects) and when the session ends (sign-out, expiry, a revoked key), checked every ``RECHECK_SECONDS``.

Open streams are not counted among the requests in flight (``server.limits``, like agents' long polls), so they
are bounded here instead: at most ``PER_SESSION`` per session and ``TOTAL`` per server process (429 beyond).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from baton.schemas.states import FINAL_STATES
from baton.server.access import Action
from baton.server.database.connection import transaction
from baton.server.models import flow_runs
from baton.server.ui.pages_runs import read_log_lines
from baton.server.ui.routing import UiRoute, error_page
from baton.server.ui.web import (
    SECURITY_HEADERS,
    NotSignedIn,
    Viewer,
    ViewerDep,
    current_viewer,
    level_name,
    reader_of,
    require,
)
from baton.server.worker_threads import run_in_worker

router = APIRouter(route_class=UiRoute)
PATH = "/runs/{run_id}/logs/stream"
POLL_SECONDS = 1.0
RECHECK_SECONDS = 5.0
MAX_STREAM_SECONDS = 300.0
BATCH = 500
PER_SESSION = 4
TOTAL = 64


class StreamSlots:
    """The open streams of this process, by session (all on the event loop: no lock needed)."""

    def __init__(self) -> None:
        self.by_session: Counter[str] = Counter()

    @contextmanager
    def take(self, session_key: str) -> Iterator[bool]:
        """Yields whether a slot was free (and holds it until the block ends)."""
        if self.by_session[session_key] >= PER_SESSION or sum(self.by_session.values()) >= TOTAL:
            yield False
            return
        self.by_session[session_key] += 1
        try:
            yield True
        finally:
            self.by_session[session_key] -= 1
            if not self.by_session[session_key]:
                del self.by_session[session_key]


SLOTS = StreamSlots()


def _start_after(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    return int(raw) if raw.isascii() and raw.isdecimal() and len(raw) < 19 else 0


def _read(request: Request, viewer: Viewer, run_id: str, after: int) -> tuple[list[dict[str, object]], bool]:
    """Lines after ``after`` (one batch) and whether the run is final."""
    with transaction(reader_of(request)) as session:
        state = flow_runs.get_flow_run(session, viewer.principal.tenant_id, run_id).state
        lines = read_log_lines(session, request, viewer, run_id, after, BATCH)
    return [{**line.model_dump(mode="json"), "level_name": level_name(line.level)} for line in lines], (
        state in FINAL_STATES
    )


def _event(name: str, data: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {data}\n\n"


async def _events(request: Request, viewer: Viewer, run_id: str, after: int) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_STREAM_SECONDS
    recheck = loop.time() + RECHECK_SECONDS
    with SLOTS.take(viewer.cookie) as free:
        if not free:
            yield _event("end", json.dumps({"reason": "too many open log streams"}))
            return
        yield "retry: 2000\n\n"
        while True:
            if await request.is_disconnected():
                return
            if loop.time() >= recheck:
                try:
                    await run_in_worker(current_viewer, request)
                except NotSignedIn:
                    yield _event("end", json.dumps({"reason": "signed out"}))
                    return
                recheck = loop.time() + RECHECK_SECONDS
            lines, final = await run_in_worker(_read, request, viewer, run_id, after)
            for line in lines:
                after = int(str(line["id"]))
                yield _event("log", json.dumps(line, separators=(",", ":")), after)
            if final and not lines:
                yield _event("end", json.dumps({"reason": "final"}))
                return
            if loop.time() >= deadline:
                return
            if len(lines) < BATCH:
                await asyncio.sleep(POLL_SECONDS)


@router.get(PATH, include_in_schema=False)
def log_stream(request: Request, run_id: str, viewer: ViewerDep) -> Response:
    require(viewer, Action.LOGS_READ)
    if SLOTS.by_session[viewer.cookie] >= PER_SESSION or sum(SLOTS.by_session.values()) >= TOTAL:
        return error_page(request, 429, "too many open log streams: close other run pages and reload this one")
    after = _start_after(request)
    with transaction(reader_of(request)) as session:  # 404 for another tenant's run, before the stream starts
        flow_runs.get_flow_run(session, viewer.principal.tenant_id, run_id)
    headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
    return StreamingResponse(_events(request, viewer, run_id, after), media_type="text/event-stream", headers=headers)
