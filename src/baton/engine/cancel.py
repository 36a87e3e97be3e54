"""Turn a stop request into :class:`FlowRunCancelled` raised in the main thread, where the flow runs.

Two things stop a run: the heartbeat learning that the run is ``Cancelling`` (a cancellation), and SIGTERM
from outside. SIGTERM is not always a cancellation: the agent sends it when it kills the deployment of a
cancelled run, but also on a cold stop, and an operator may send it too. :attr:`CancelSignal.terminated` tells
the runner it came from outside, so that the runner asks the API whether the run is Cancelling before it
decides between Cancelled and Failed.

Python runs signal handlers in the main thread between bytecodes and interrupts its blocking calls
(``time.sleep``, waiting on a thread), so a handler that raises stops even a sleeping task. The heartbeat thread
therefore sends SIGTERM to the main thread rather than setting a flag nobody would read.

A raise in the middle of an API call would cut it in half: the request may have reached the server while the
process goes on as if it had not (a task run's Running landing after its Cancelled). The engine's own calls made
from the main thread run inside :meth:`CancelSignal.deferred`: a stop that arrives then is raised as soon as the
call is over.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from baton.sdk.context import FlowRunCancelled

logger = logging.getLogger("baton.engine")

TERMINATED = "the flow-run process was terminated (SIGTERM)"


class CancelSignal:
    """While armed (inside ``with``), SIGTERM raises ``FlowRunCancelled`` once in the main thread.

    Outside the block the handler stays installed but only notes the signal: before the flow starts, entering
    the block then raises at once; after the flow, the final state must still be reported (the agent kills the
    process for good if that takes too long).

    Attributes:
        reason: why the run is being stopped (None: it is not).
        terminated: the stop is a SIGTERM from outside, not a :meth:`request` (a cancellation seen by the
            heartbeat): whether the run was cancelled is for the runner to find out.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.terminated = False
        self._armed = False
        self._raised = False
        self._previous: Any = None
        self._installed = False
        self._deferring = 0  # depth of deferred() blocks in the main thread
        self._deferred_raise = False  # a stop arrived inside one: raise it on leaving the outermost

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Not in the main thread: cancellation cannot interrupt the flow")
            return
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def __enter__(self) -> CancelSignal:
        if self.reason is not None:  # asked to stop before the flow started: do not start it
            self._raised = True
            raise FlowRunCancelled(self.reason)
        self._armed = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._armed = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside, a stop is not raised at once but on leaving the block (main thread only; elsewhere a no-op).

        Raises:
            FlowRunCancelled: a stop arrived inside the block while the flow runs.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
            if self._deferring == 0 and self._deferred_raise:
                self._deferred_raise = False
                if self._armed and not self._raised:
                    self._raised = True
                    raise FlowRunCancelled(self.reason or TERMINATED)

    def request(self, reason: str) -> None:
        """Ask the main thread to stop the flow (called from another thread)."""
        if self.reason is None:
            self.reason = reason
        if not (self._armed and self._installed):
            return
        main = threading.main_thread().ident
        if hasattr(signal, "pthread_kill") and main is not None:
            signal.pthread_kill(main, signal.SIGTERM)
        else:  # no pthread_kill (Windows): simulate the signal in the main thread
            _thread.interrupt_main(signal.SIGTERM)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.reason is None:  # not sent by request(): it came from outside the process
            self.reason = TERMINATED
            self.terminated = True
        if not self._armed or self._raised:
            logger.warning("Stop requested (%s) while the flow is not running: acting on it next", self.reason)
            return
        if self._deferring:  # an API call is under way: let it finish (see deferred)
            self._deferred_raise = True
            return
        self._raised = True
        raise FlowRunCancelled(self.reason)
