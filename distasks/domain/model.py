"""The domain: tasks, their runs (attempts), and the states they move through (architecture §3).

Frozen values, no I/O. Enum values are the strings stored in PostgreSQL and shown in JSON.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Json = Any
"""A JSON-able value: dict, list, str, int, float, bool or None."""


class JsonText(str):
    """A JSON value as its text, not decoded: a payload read for a response, which passes
    it through as PostgreSQL returned it (decoding and encoding again a payload of the
    size limit holds the event loop for a tenth of a second; docs/architecture.md §7)."""


class TaskType(enum.StrEnum):
    #: ready at once: started in the create statement by an idle executor of this daemon, or
    #: pushed to its queue's ready list
    IMMEDIATE = "immediate"
    #: waits in the delayed set until `run_at`; the mover makes it ready
    DELAYED = "delayed"


class TaskStatus(enum.StrEnum):
    #: a workflow node whose parents are not all final: it has no run and is not in Redis.
    #: The transaction that records its last parent's final state moves it to queued
    #: (with its first run), skipped or cancelled (distasks.domain.graph)
    PENDING = "pending"
    #: accepted and not finished; its runs say whether it waits, runs or awaits a retry.
    #: The completer moves it out when a run succeeds or the last retry fails.
    QUEUED = "queued"
    #: a run succeeded
    COMPLETED = "completed"
    #: out of retries; its id sits in the queue's DLQ until replayed (back to queued)
    FAILED = "failed"
    #: cancelled through the API; a running handler is cancelled on its daemon
    CANCELLED = "cancelled"
    #: a workflow node not run because of its parents (on_parent_failure = skip, or a
    #: skipped parent); final
    SKIPPED = "skipped"


class RunStatus(enum.StrEnum):
    #: waiting in the ready list or the delayed set; a worker's claim moves it to running
    QUEUED = "queued"
    #: a worker holds its lease and runs the handler; the completer records the outcome
    RUNNING = "running"
    #: the handler returned
    SUCCEEDED = "succeeded"
    #: the handler failed with retries left; the next attempt is a new queued run
    RETRYING = "retrying"
    #: the handler failed with no retries left; the task is failed and dead-lettered
    FAILED = "failed"
    #: the daemon stopped while it ran; handed back as a new attempt, not counted as a failure
    INTERRUPTED = "interrupted"
    #: its task was cancelled before or while it ran (the API; the worker stops the handler)
    CANCELLED = "cancelled"


TERMINAL_TASK_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED,
                                    TaskStatus.SKIPPED})


@dataclass(frozen=True, slots=True)
class NewTask:
    """A validated create request, before it is stored."""

    id: uuid.UUID
    run_id: uuid.UUID
    name: str
    handler: str
    type: TaskType
    queue_name: str
    priority: int
    payload: Json
    payload_json: str
    dedup_key: str | None
    max_retries: int
    timeout_s: float | None
    run_at: datetime | None
    #: whose task it is (architecture §8); queue_name is already qualified with it
    tenant: str = "default"
    #: top-level payload keys whose values the API shows redacted
    secret_fields: tuple[str, ...] = ()
    #: runs sharing it count against the queue's max_running_per_key; None: no key
    concurrency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Task:
    id: uuid.UUID
    name: str
    handler: str
    type: TaskType
    queue_name: str
    priority: int
    payload: Json
    dedup_key: str | None
    max_retries: int
    timeout_s: float | None
    status: TaskStatus
    failures: int
    run_at: datetime | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None
    cancel_reason: str | None = None
    tenant: str = "default"
    #: top-level payload keys whose values the API shows redacted (the handler gets them)
    secret_fields: tuple[str, ...] = ()
    #: runs sharing it count against the queue's max_running_per_key; None: no key
    concurrency_key: str | None = None
    #: the workflow it is a node of, and its key there; None for a task on its own
    workflow_id: uuid.UUID | None = None
    workflow_key: str | None = None


@dataclass(frozen=True, slots=True)
class TaskRun:
    id: uuid.UUID
    task_id: uuid.UUID
    attempt: int
    status: RunStatus
    worker_id: str | None
    lease_expires_at: datetime | None
    available_at: datetime
    next_retry_at: datetime | None
    error: str | None
    result: Json
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class CreateResult:
    """What a create did: `created` is False when the dedup_key named an existing task;
    `started` is True when its first run began at once on the creating daemon."""

    task_id: uuid.UUID
    status: TaskStatus
    created: bool
    started: bool = False
    #: the dedup_key named an existing task that was created from a different request
    conflict: bool = False


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A run this daemon holds the lease of, with what its handler needs."""

    run_id: uuid.UUID
    task: Task
    attempt: int
    queue_name: str
    message: str
    enqueued_at: datetime
    #: the daemon holding its lease
    worker_id: str
    #: a workflow node's parents by key: {"status", "result", "error"} each (results
    #: beyond limits.max_parent_output_bytes left out, with "truncated": true)
    parents: dict[str, Json] | None = None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something, for the audit log: the principal's id (a key, anonymous@address,
    cli:user@host, system), its tenant, and from where in which request."""

    id: str
    tenant: str = "default"
    address: str | None = None
    request_id: str | None = None


#: Changes the daemon makes by itself.
SYSTEM = Actor("system")
