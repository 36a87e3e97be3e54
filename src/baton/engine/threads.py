"""Helpers for the engine's background threads."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def block_stop_signals() -> None:
    """Keep SIGTERM and SIGINT away from the calling background thread.

    A signal sent to the process is then delivered to the main thread, where the flow runs: its handler can
    interrupt a blocking call there (a ``time.sleep`` in a task), which it could not from another thread.
    """
    if hasattr(signal, "pthread_sigmask"):  # POSIX only
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


def call_with_timeout(call: Callable[[], T], timeout: float, name: str = "baton-call") -> T:
    """Return ``call()``, run in a daemon thread, or raise :class:`TimeoutError` after ``timeout`` seconds.

    For one quick API call while the process is being stopped: the agent kills it for good a few seconds after
    SIGTERM, so the answer is not worth waiting the client's full timeout for. A call that times out is
    abandoned (its thread ends with the client's own timeout, or with the process).

    Raises:
        TimeoutError: no answer within ``timeout`` seconds.
        BaseException: what ``call`` raised.
    """
    outcome: dict[str, T] = {}
    errors: list[BaseException] = []

    def target() -> None:
        block_stop_signals()
        try:
            outcome["result"] = call()
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            errors.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g}s")
    if errors:
        raise errors[0]
    return outcome["result"]
