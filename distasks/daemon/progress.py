"""Progress: what /readyz says about whether work gets done, kept up to date by the
reporter (distasks.daemon.reporter) and read by the API."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Progress:
    """What /readyz says about progress, kept up to date by the reporter."""

    stalled: bool = False
    ready: int = 0
    last_outcome_age_s: float | None = None
