"""Helpers for the engine's background threads."""

from __future__ import annotations

import signal


def block_stop_signals() -> None:
    """Keep SIGTERM and SIGINT away from the calling background thread.

    A signal sent to the process is then delivered to the main thread, where the flow runs: its handler can
    interrupt a blocking call there (a ``time.sleep`` in a task), which it could not from another thread.
    """
    if hasattr(signal, "pthread_sigmask"):  # POSIX only
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
