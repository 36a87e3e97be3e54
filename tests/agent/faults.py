"""Recording and fault injection around an agent's API calls, shared by ``fake_api.FakeApi`` and
``app_api.AppApi``: each call is recorded, may be held, and may fail before (nothing happened) or after (it happened
but the answer was lost, like a read timeout) its work."""

from __future__ import annotations

import threading
from typing import Any


class Faults:
    """Mixed into a test API; ``_faults_lock`` guards the queues (a Condition works too)."""

    def _init_faults(self, lock: threading.Lock | threading.Condition) -> None:
        self._faults_lock = lock
        self.calls: list[tuple[str, Any]] = []
        self._failures: dict[str, list[BaseException | None]] = {}
        self._failures_after: dict[str, list[BaseException]] = {}
        self._holds: dict[str, threading.Event] = {}

    def fail_next(self, method: str, *errors: BaseException | None) -> None:
        """Make the next calls of ``method`` raise ``errors``, one each (None: that call succeeds)."""
        with self._faults_lock:
            self._failures.setdefault(method, []).extend(errors)

    def fail_after(self, method: str, *errors: BaseException) -> None:
        """Make the next calls of ``method`` do their work, then raise ``errors`` (the answer was lost)."""
        with self._faults_lock:
            self._failures_after.setdefault(method, []).extend(errors)

    def hold(self, method: str) -> threading.Event:
        """Make calls of ``method`` wait until the returned event is set."""
        gate = threading.Event()
        with self._faults_lock:
            self._holds[method] = gate
        return gate

    def _enter(self, method: str, args: Any) -> None:
        with self._faults_lock:
            self.calls.append((method, args))
            queue = self._failures.get(method)
            error = queue.pop(0) if queue else None
            gate = self._holds.get(method)
        if gate is not None:
            gate.wait(10)
        if error is not None:
            raise error

    def _leave(self, method: str) -> None:
        with self._faults_lock:
            queue = self._failures_after.get(method)
            error = queue.pop(0) if queue else None
        if error is not None:
            raise error
