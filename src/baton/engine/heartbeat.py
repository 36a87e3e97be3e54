"""The flow run's heartbeat: a background thread that tells the API the run is alive and learns of cancels.

When the API answers that the run is ``Cancelling`` (or already final, or the run token was revoked because the
run ended elsewhere), the heartbeat calls ``on_stop`` once and ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from baton.client.http import Client
from baton.engine.threads import block_stop_signals
from baton.exceptions import AuthenticationError, ClientError, NotFoundError, ServerUnavailableError
from baton.schemas.states import FINAL_STATES, StateName

logger = logging.getLogger("baton.engine")

STOP_STATES = frozenset({StateName.CANCELLING, *FINAL_STATES})


class Heartbeat:
    """Calls ``Client.flow_run_heartbeat`` every ``interval`` seconds from its own thread.

    Args:
        client: the API client (thread-safe).
        flow_run_id: the run.
        interval: seconds between heartbeats.
        on_stop: called (from the heartbeat thread) with the reason when the run must stop.
    """

    def __init__(self, client: Client, flow_run_id: str, interval: float, on_stop: Callable[[str], None]) -> None:
        self._client = client
        self._flow_run_id = flow_run_id
        self._interval = interval
        self._on_stop = on_stop
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="baton-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._interval + 5)

    def _run(self) -> None:
        block_stop_signals()
        while not self._stopped.wait(self._interval):
            reason = self.beat()
            if reason is not None:
                if not self._stopped.is_set():
                    self._on_stop(reason)
                return

    def beat(self) -> str | None:
        """Send one heartbeat; return why the run must stop, or None to go on."""
        try:
            answer = self._client.flow_run_heartbeat(self._flow_run_id)
        except ServerUnavailableError as exc:  # the next beat may get through; the lease allows a few misses
            logger.debug("Heartbeat failed: %s", exc)
            return None
        except (AuthenticationError, NotFoundError) as exc:
            return f"the API no longer accepts this run's token ({exc}): the run ended elsewhere"
        except ClientError as exc:
            logger.warning("Heartbeat refused: %s", exc)
            return None
        if answer.state in STOP_STATES:
            return f"the run is {answer.state}"
        return None
