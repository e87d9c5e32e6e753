"""When the next attempt of a failed run is due: exponential backoff with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float
    cap_s: float
    #: fraction of the delay added or removed at random, so retries of a burst spread out
    jitter: float

    def delay_s(self, failures: int, rng: random.Random | None = None) -> float:
        """Delay before the attempt that follows the `failures`-th failure (1-based)."""
        # The exponent is bounded so that a huge failure count cannot overflow a float.
        raw = min(self.cap_s, self.base_s * 2 ** min(max(0, failures - 1), 62))
        if self.jitter:
            raw *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return float(raw)

    def next_retry_at_ms(self, failures: int, now_ms: int, rng: random.Random | None = None) -> int:
        return now_ms + round(self.delay_s(failures, rng) * 1000)
