"""What became of one run, as the worker tells the completer."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from distasks.model import ClaimedRun


class OutcomeKind(enum.StrEnum):
    #: the handler returned: run succeeded, task completed
    SUCCEEDED = "succeeded"
    #: the handler failed with retries left: a new run waits in the delayed set
    RETRYING = "retrying"
    #: the handler failed with no retries left: task failed, into the DLQ
    FAILED = "failed"
    #: the daemon stopped before the handler finished: a new run is ready at once
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Outcome:
    run: ClaimedRun
    kind: OutcomeKind
    finished_at: datetime
    #: the handler's return value as JSON (SUCCEEDED)
    result_json: str | None = None
    #: what went wrong (RETRYING, FAILED, INTERRUPTED)
    error: str | None = None
    #: when the next attempt is due, Unix ms (RETRYING)
    next_retry_at_ms: int | None = None
    #: the id of the next attempt's run (RETRYING, INTERRUPTED)
    new_run_id: uuid.UUID | None = None
