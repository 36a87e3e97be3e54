"""Sends the notification outbox, and finds the events nobody's request causes: late runs and lost agents.

Every ``services_interval_seconds`` :meth:`NotificationService.run_once` (1) writes ``late`` and ``agent-lost``
events (``models.notification_outbox``), (2) takes the lease of due deliveries and POSTs them, a few at once, each
bounded by ``notify_timeout_seconds``, (3) records each attempt, and now and then prunes old deliveries.

The POST (:class:`WebhookSender`): JSON, no redirects followed, no proxy or netrc from the environment, to the
address checked by the SSRF rule at this moment (``webhook_targets``); of the answer only a short excerpt is read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from baton import __version__
from baton.server.database.connection import transaction
from baton.server.database.orm import utcnow
from baton.server.models import notification_outbox as outbox
from baton.server.models.notification_outbox import AttemptResult, Backoff, Outgoing
from baton.server.services.grace import OutageGrace
from baton.server.webhook_targets import AllowList, UnresolvedWebhook, UnsafeWebhook, pinned_request, redact, resolve
from baton.settings import ServerSettings

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("baton.server.services.notifications")

EXCERPT_BYTES = 200
MAX_ERROR_CHARS = 500
# Deliveries leased per tick, all sent at once: one tick lasts at most about one POST's timeout, so a stopping
# server waits for no more than that (the service thread cannot be cancelled mid-POST).
BATCH = 8
SENDERS = 8
PRUNE_EVERY_SECONDS = 60.0
# Answers worth another try: the receiver is busy or down. Other 4xx say the request will never be taken.
_RETRY_STATUSES = frozenset({408, 425, 429})


def _excerpt(response: httpx.Response) -> str:
    taken = b""
    for chunk in response.iter_bytes():
        taken += chunk
        if len(taken) >= EXCERPT_BYTES:
            break
    return taken[:EXCERPT_BYTES].decode("utf-8", errors="replace").replace("\x00", "")[:EXCERPT_BYTES]


class WebhookSender:
    """One POST of one delivery; never raises for anything the receiver or the network does."""

    def __init__(self, allow: AllowList, timeout_seconds: float, now: Callable[[], datetime] = utcnow) -> None:
        self._allow = allow
        self._now = now
        self._timeout_seconds = timeout_seconds
        self._made: httpx.Client | None = None
        self._making = threading.Lock()

    @property
    def _client(self) -> httpx.Client:
        """Made at the first delivery: a server that sends none never imports httpx (~0.1 s of its start)."""
        with self._making:
            if self._made is None:
                import httpx

                # trust_env=False: no HTTP(S)_PROXY (a proxy would make the address check moot) and no ~/.netrc
                # credentials.
                self._made = httpx.Client(timeout=self._timeout_seconds, follow_redirects=False, trust_env=False)
            return self._made

    def close(self) -> None:
        with self._making:
            if self._made is not None:
                self._made.close()

    def send(self, outgoing: Outgoing) -> AttemptResult:
        import httpx  # loaded once by the first delivery's client (``_client``)

        started = self._now()
        clock = time.monotonic()

        def done(
            status_code: int | None = None,
            error: str | None = None,
            excerpt: str | None = None,
            delivered: bool = False,
            retry: bool = True,
        ) -> AttemptResult:
            duration_ms = int((time.monotonic() - clock) * 1000)
            return AttemptResult(started, duration_ms, status_code, error, excerpt, delivered, retry)

        body = json.dumps({**outgoing.payload, "delivery_id": outgoing.id}).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"baton/{__version__}",
            "X-Baton-Delivery": outgoing.id,
        }
        try:
            address = resolve(outgoing.url, self._allow)
            request = pinned_request(self._client, outgoing.url, address, body, headers)
            response = self._client.send(request, stream=True)
            try:
                excerpt = _excerpt(response)
            finally:
                response.close()
        except UnsafeWebhook as exc:
            return done(error=str(exc)[:MAX_ERROR_CHARS], retry=isinstance(exc, UnresolvedWebhook))
        except httpx.HTTPError as exc:
            return done(error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
        status = response.status_code
        if 200 <= status < 300:
            return done(status_code=status, excerpt=excerpt, delivered=True)
        if 300 <= status < 400:
            error = "the receiver answered with a redirect; redirects are not followed (give the final URL)"
            return done(status_code=status, excerpt=excerpt, error=error, retry=False)
        retry = status >= 500 or status in _RETRY_STATUSES
        return done(status_code=status, excerpt=excerpt, error=f"HTTP {status}", retry=retry)


class NotificationService:
    def __init__(
        self,
        factory: sessionmaker[Session],
        settings: ServerSettings,
        now: Callable[[], datetime] = utcnow,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = factory
        self._settings = settings
        self._now = now
        self._clock = clock
        self.backoff = Backoff(
            settings.notify_max_attempts, settings.notify_backoff_seconds, settings.notify_max_backoff_seconds
        )
        self.sender = WebhookSender(AllowList.parse(settings.notify_allow_hosts), settings.notify_timeout_seconds, now)
        # After a start or a database outage, agents' silence is the server's fault: no agent-lost until they
        # have had a stale period (and the margin) to call again.
        self._grace = OutageGrace(settings.agent_stale_seconds + settings.outage_grace_margin_seconds, clock)
        self._next_prune = clock()
        # Longer than every POST of a batch can take, so a lease never runs out under a live sender.
        self.lease_seconds = settings.notify_timeout_seconds * (BATCH / SENDERS + 2) + 30

    def run_once(self) -> None:
        self.find_events()
        self.send_due()

    def find_events(self) -> None:
        now = self._now()
        retention = self._settings.notify_retention_seconds
        with transaction(self._factory) as session:
            outbox.find_late_runs(session, now, retention)
        self._grace.attempt(
            self._factory,
            lambda session: outbox.find_lost_agents(session, now, self._settings.agent_stale_seconds, retention),
        )
        if self._clock() >= self._next_prune:
            self._next_prune = self._clock() + PRUNE_EVERY_SECONDS
            with transaction(self._factory) as session:
                outbox.prune(session, now, retention)

    def send_due(self) -> int:
        """Send what is due; returns how many attempts were recorded."""
        with transaction(self._factory) as session:
            due = outbox.claim_due(session, self._now(), BATCH, self.lease_seconds)
        if not due:
            return 0
        with ThreadPoolExecutor(max_workers=min(SENDERS, len(due)), thread_name_prefix="baton-notify") as pool:
            results = list(pool.map(self.sender.send, due))
        recorded = 0
        for outgoing, result in zip(due, results, strict=True):
            if not result.delivered:
                logger.info(
                    "notification %s to %s: attempt %d failed: %s",
                    outgoing.id,
                    redact(outgoing.url),
                    outgoing.attempts + 1,
                    result.error,
                )
            with transaction(self._factory) as session:
                recorded += outbox.record(session, outgoing, result, self._now(), self.backoff)
        return recorded

    def close(self) -> None:
        self.sender.close()
