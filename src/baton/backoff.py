"""Exponential backoff with "equal jitter", shared by the agent's loops and the flow-run process's retries.

Half of each delay is fixed, half random: the jitter spreads the retries of many clients that lost the API at
the same moment, and the fixed half keeps a retry from following a failure at once. No imports beyond the
standard library: the engine pays for every import at each flow run's start.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    base_seconds: float = 1.0
    max_seconds: float = 30.0

    def delay(self, attempt: int) -> float:
        """The pause before retry number ``attempt`` (1 for the first retry)."""
        ceiling = min(self.max_seconds, self.base_seconds * 2.0 ** max(0, attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not cryptography
