"""ASGI middleware bounding requests: each body's size (413 beyond the limit, before reading it), and the requests and
body bytes in flight at once (:class:`Admission`)."""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A claim's body is three numbers: anything near this is not a claim.
LONG_POLL_MAX_BODY_BYTES = 64 * 1024


async def send_error(send: Send, status: int, detail: str) -> None:
    """Answer ``status`` with ``{"detail": detail}``."""
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})


async def serve_unless_cut(
    app: ASGIApp,
    scope: Scope,
    receive: Callable[[], Awaitable[Message | None]],
    send: Send,
    refusal: tuple[int, str],
) -> None:
    """Run ``app`` on a body ``receive`` may cut off (it returns None): the app then sees a disconnect, its own answer
    (or error) is dropped, and ``refusal`` (status, detail) is sent instead, unless the app had answered already.
    Frameworks turn errors raised while reading into their own 400: cutting the body is how the reason survives."""
    cut = False
    response_started = False

    async def guarded_receive() -> Message:
        nonlocal cut
        message = await receive()
        if message is None:
            cut = True
            return {"type": "http.disconnect"}
        return message

    async def guarded_send(message: Message) -> None:
        nonlocal response_started
        if cut:
            return
        response_started = response_started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, guarded_receive, guarded_send)
    except Exception:
        if not cut:
            raise
    if cut and not response_started:
        await send_error(send, *refusal)


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = (413, f"request body larger than {self.max_bytes} bytes")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await send_error(send, *refusal)
            return
        received = 0

        async def limited_receive() -> Message | None:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    return None
            return message

        await serve_unless_cut(self.app, scope, limited_receive, send, refusal)


class ByteBudget:
    """A byte-weighted semaphore, first come first served: at most ``total`` bytes are held at once."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.available = total
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, size: int) -> int:
        """Wait for ``size`` bytes (at most ``total``); returns what was taken, to :meth:`release` later."""
        size = min(size, self.total)
        if not self._waiters and self.available >= size:
            self.available -= size
            return size
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((size, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(size)  # granted just as the request went away: give it back
            else:
                granted.cancel()
                self._wake()
            raise
        return size

    def release(self, size: int) -> None:
        self.available += size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and (self._waiters[0][1].done() or self._waiters[0][0] <= self.available):
            size, granted = self._waiters.popleft()
            if granted.done():
                continue  # its request went away while waiting
            self.available -= size
            granted.set_result(None)


# The scope state's key of a request's way to give back its place among the admitted ones (``leave_admission``).
_LEAVE = "baton.leave_admission"


def leave_admission(scope: Scope) -> None:
    """A request about to wait for something else gives back its place among the requests in flight, so that waiting
    requests cannot keep out the ones they wait for. Its body's bytes stay counted until it ends. Idempotent."""
    leave = scope.get("state", {}).get(_LEAVE)
    if leave is not None:
        leave()


class Admission:
    """ASGI middleware that admits requests within server-wide bounds, so that memory stays bounded however many
    large requests arrive at once: the others wait their turn.

    * At most ``max_requests`` requests are handled at once, from before their body is read until their answer is
      sent (an answer of a large run or flow takes several times its size while it is built and sent). Long polls
      (``long_poll`` paths: agents' claims, which mostly wait; their bodies are limited to 64 KiB instead) and
      ``exempt`` paths (health) are not counted.
    * The requests with a body hold its declared size (the body limit when undeclared) from a budget of
      ``max_bytes_in_flight``: parsing, storing and answering a body takes several times its size.

    It sits behind authentication: only valid credentials can make others wait.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_requests: int,
        max_bytes_in_flight: int,
        max_body_bytes: int,
        long_poll: re.Pattern[str],
        exempt: frozenset[str] = frozenset(),
        body_timeout_seconds: float = 30.0,
    ) -> None:
        self.app = app
        self.body_timeout_seconds = body_timeout_seconds
        self.exempt = exempt
        self.max_body_bytes = max_body_bytes
        self.long_poll = long_poll
        self._small_bodies = BodySizeLimit(app, LONG_POLL_MAX_BODY_BYTES)
        self.slots = ByteBudget(max(max_requests, 1))  # one "byte" per request
        self.budget = ByteBudget(max(max_bytes_in_flight, 1))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.long_poll.match(scope["path"]):
            # Not counted (they mostly wait), so their bodies get a small limit of their own: FastAPI parses a body
            # before the route's access check, and any credential may call the route.
            await self._small_bodies(scope, receive, send)
            return
        size = self._declared(scope)
        await self.slots.acquire(1)
        held = {"slots": 1, "bytes": 0}

        def leave() -> None:
            self.slots.release(held["slots"])
            held["slots"] = 0

        scope.setdefault("state", {})[_LEAVE] = leave
        try:
            held["bytes"] = await self.budget.acquire(size) if size else 0
            await self._within_body_deadline(scope, receive, send)
        finally:
            leave()
            self.budget.release(held["bytes"])

    async def _within_body_deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, given ``body_timeout_seconds`` to receive the whole body: past it, 408 and the slot is free."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_seconds
        body_done = False

        async def timed_receive() -> Message | None:
            nonlocal body_done
            if body_done:
                return await receive()  # past the body: only a disconnect can come, and waiting for it is fine
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                return None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        refusal = (408, f"the request body did not arrive within {self.body_timeout_seconds:g} s")
        await serve_unless_cut(self.app, scope, timed_receive, send, refusal)

    def _declared(self, scope: Scope) -> int:
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            return int(declared) if declared.isdigit() else self.max_body_bytes
        return self.max_body_bytes if b"transfer-encoding" in headers else 0
