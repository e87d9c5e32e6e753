"""What became of one run, as the worker tells the completer."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from distasks.domain import times
from distasks.domain.ids import new_run_id
from distasks.domain.model import ClaimedRun
from distasks.domain.retry import RetryPolicy


class OutcomeKind(enum.StrEnum):
    #: the handler returned: run succeeded, task completed
    SUCCEEDED = "succeeded"
    #: the handler failed with retries left: a new run waits in the delayed set
    RETRYING = "retrying"
    #: the handler failed with no retries left: task failed, into the DLQ
    FAILED = "failed"
    #: the daemon stopped before the handler finished: a new run is ready at once
    INTERRUPTED = "interrupted"
    #: the task was cancelled and the handler stopped: nothing follows
    CANCELLED = "cancelled"


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
    #: set by the reaper: write only if the lease is still expired at this instant
    expired_before: datetime | None = None


def failure(run: ClaimedRun, error: str, *, now_s: float, policy: RetryPolicy,
            retry_now: bool = False, expired_before: datetime | None = None) -> Outcome:
    """The outcome of a failed attempt: a retry while the task has retries left (after
    the policy's backoff, or at once with `retry_now`), else the final failure."""
    at = times.utc(now_s)
    failures = run.task.failures + 1
    if failures <= run.task.max_retries:
        now_ms = times.ms(now_s)
        due_ms = now_ms if retry_now else policy.next_retry_at_ms(failures, now_ms)
        return Outcome(run, OutcomeKind.RETRYING, at, error=error, next_retry_at_ms=due_ms,
                       new_run_id=new_run_id(run.task.id), expired_before=expired_before)
    return Outcome(run, OutcomeKind.FAILED, at, error=error, expired_before=expired_before)
