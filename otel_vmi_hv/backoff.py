"""Exponential backoff with jitter, the one formula every retry loop of the agent uses.

Jitter matters at fleet scale: a DaemonSet's agents all lose the same API server or collector at
the same moment, and retries in lockstep would hit it again together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number ``failures`` (1 for the first retry): doubling, capped, jittered."""

    initial: float
    maximum: float
    jitter: float = 0.2  # each delay is spread uniformly over ±jitter of its nominal value

    def delay(self, failures: int) -> float:
        nominal: float = min(self.maximum, self.initial * 2.0 ** max(0, min(failures, 64) - 1))
        if not self.jitter:
            return nominal
        spread: float = random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 - spreading, not security
        return nominal * spread
