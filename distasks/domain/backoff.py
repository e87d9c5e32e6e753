"""How a component loop waits before trying again after PostgreSQL or Redis failed."""

from __future__ import annotations

import random

# First wait after a failure, and the most any wait grows to.
FIRST_S = 0.1
MAX_S = 5.0


def delay_s(failures: int) -> float:
    """Full-jitter exponential backoff for the `failures`-th consecutive failure."""
    return random.uniform(0, min(MAX_S, FIRST_S * 2 ** max(0, failures - 1)))
